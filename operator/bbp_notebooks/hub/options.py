"""The spawn form: what a user may choose (profiles, sites, accounts), its HTML (the Jinja2
template templates/form.html, which deployers may override), and the server-side check of whatever
comes back. Pure: the spawner fetches the objects and calls in here.

Accounts. The operator does not publish per-user Slurm accounts yet. A SlurmSite may list them, in
this order of precedence, as ``status.userAccounts`` (once the API has that field) or in the
annotation ``notebooks.bbp.epfl.ch/user-accounts``; both hold the same JSON shape, a list of named
objects: ``[{"user": "alice", "accounts": ["proj1", "proj2"]}]``. When the user's accounts are known
the form offers a select and only those values are accepted; when they are not, a free-text field
is offered and the value must match the CRD's account pattern (the site itself refuses an account
the user may not charge, and the session then fails with Slurm's message).
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
from pydantic import TypeAdapter, ValidationError

from bbp_notebooks.api.constants import ANNOTATION_PREFIX
from bbp_notebooks.api.models import (
    AccountPolicy,
    ConditionStatus,
    NotebookProfileSpec,
    SlurmAccount,
    SlurmSite,
)

log = logging.getLogger(__name__)

AUTO_SITE = "auto"
USER_ACCOUNTS_ANNOTATION = f"{ANNOTATION_PREFIX}/user-accounts"
REACHABLE = "Reachable"
_ACCOUNT = TypeAdapter(SlurmAccount)


class InvalidOptions(ValueError):
    """The submitted options name something this user may not have; the message says what."""


@dataclass(frozen=True)
class ProfileChoice:
    name: str
    display_name: str
    description: str
    allowed_sites: tuple[str, ...]

    def runs_at(self, site: str) -> bool:
        return not self.allowed_sites or site in self.allowed_sites


@dataclass(frozen=True)
class SiteChoice:
    name: str
    display_name: str
    account_required: bool
    reachable: bool | None  # None: not polled yet, or the last report is too old to trust
    idle_nodes: int | None
    accounts: tuple[str, ...] | None  # None: the site has not said which accounts the user has

    @property
    def availability(self) -> str:
        if self.reachable is False:
            return "unreachable"
        if self.reachable is None or self.idle_nodes is None:
            return "availability unknown"
        return f"{self.idle_nodes} node{'' if self.idle_nodes == 1 else 's'} available"

    @property
    def label(self) -> str:
        return f"{self.display_name} — {self.availability}"


@dataclass(frozen=True)
class Choices:
    """What one user may choose from, right now."""

    profiles: tuple[ProfileChoice, ...]
    sites: tuple[SiteChoice, ...]
    offer_auto_site: bool = True

    def profile(self, name: str) -> ProfileChoice | None:
        return next((p for p in self.profiles if p.name == name), None)

    def site(self, name: str) -> SiteChoice | None:
        return next((s for s in self.sites if s.name == name), None)


@dataclass(frozen=True)
class SessionOptions:
    """Validated options: every value names something that exists and that the user may use."""

    profile: str
    site: str
    account: str | None = None

    def as_user_options(self) -> dict[str, str]:
        options = {"profile": self.profile, "site": self.site}
        if self.account is not None:
            options["account"] = self.account
        return options


# Building the choices ---------------------------------------------------------------------------


def allowed_profiles(
    profiles: Mapping[str, NotebookProfileSpec], groups: Iterable[str]
) -> tuple[ProfileChoice, ...]:
    """The profiles whose allowedGroups include one of ``groups`` (or that allow everyone)."""
    member_of = set(groups)
    return tuple(
        ProfileChoice(
            name=name,
            display_name=spec.display_name,
            description=spec.description,
            allowed_sites=tuple(spec.allowed_sites),
        )
        for name, spec in sorted(profiles.items(), key=lambda item: item[1].display_name)
        if not spec.allowed_groups or member_of & set(spec.allowed_groups)
    )


def user_accounts(site: Mapping[str, Any], user: str) -> tuple[str, ...] | None:
    """The accounts ``site`` (a raw SlurmSite object) says ``user`` may charge, or None."""
    entries = (site.get("status") or {}).get("userAccounts")
    if entries is None:
        raw = ((site.get("metadata") or {}).get("annotations") or {}).get(USER_ACCOUNTS_ANNOTATION)
        if raw is None:
            return None
        try:
            entries = json.loads(raw)
        except ValueError:
            log.warning("SlurmSite %s: %s is not JSON", _name(site), USER_ACCOUNTS_ANNOTATION)
            return None
    if not isinstance(entries, list):
        log.warning("SlurmSite %s: user accounts are not a list", _name(site))
        return None
    for entry in entries:
        if isinstance(entry, dict) and entry.get("user") == user:
            accounts = entry.get("accounts")
            if not isinstance(accounts, list):
                return None
            return tuple(sorted({a for a in accounts if isinstance(a, str) and _valid_account(a)}))
    return None


def site_choice(
    site: Mapping[str, Any], user: str, *, now: dt.datetime, stale_after: dt.timedelta
) -> SiteChoice:
    """A raw SlurmSite object as the form shows it. Raises ValueError when it does not parse."""
    parsed = SlurmSite.model_validate(site)
    status = parsed.status
    # A report is stale after ``stale_after`` or three poll intervals, whichever is longer.
    stale_after = max(stale_after, dt.timedelta(seconds=3 * parsed.spec.poll_interval_seconds))
    reachable: bool | None = None
    condition = next((c for c in status.conditions if c.type == REACHABLE), None)
    if condition is not None and condition.status == ConditionStatus.FALSE:
        reachable = False
    elif condition is not None and condition.status == ConditionStatus.TRUE:
        fresh = status.last_poll_time is not None and now - status.last_poll_time <= stale_after
        reachable = True if fresh else None
    return SiteChoice(
        name=_name(site),
        display_name=parsed.spec.display_name,
        account_required=parsed.spec.account_policy == AccountPolicy.REQUIRED,
        reachable=reachable,
        idle_nodes=status.idle_nodes,
        accounts=user_accounts(site, user),
    )


def _name(obj: Mapping[str, Any]) -> str:
    return str((obj.get("metadata") or {}).get("name", ""))


def _valid_account(value: str) -> bool:
    try:
        _ACCOUNT.validate_python(value)
    except ValidationError:
        return False
    return True


# The form ---------------------------------------------------------------------------------------

TEMPLATE_DIR = Path(__file__).with_name("templates")
FORM_TEMPLATE = "form.html"


@functools.lru_cache(maxsize=8)
def _environment(search_path: tuple[str, ...]) -> jinja2.Environment:
    """Deployers' folders first, then ours; ours is also reachable as "bbp_notebooks/<name>" so
    an override can extend the template it replaces."""
    ours = jinja2.FileSystemLoader(TEMPLATE_DIR)
    return jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader(list(search_path)),
                jinja2.PrefixLoader({"bbp_notebooks": ours}),
                ours,
            ]
        ),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
        undefined=jinja2.StrictUndefined,
    )


def render_form(
    choices: Choices,
    previous: SessionOptions | None = None,
    *,
    search_path: Sequence[str] = (),
    template: str = FORM_TEMPLATE,
) -> str:
    """The options form from the Jinja2 template ``template`` (autoescaped), looked up in
    ``search_path`` before the package's own templates."""
    html = (
        _environment(tuple(search_path))
        .get_template(template)
        .render(
            profiles=choices.profiles,
            sites=choices.sites,
            offer_auto_site=choices.offer_auto_site,
            auto_site=AUTO_SITE,
            previous=previous,
        )
    )
    # ASCII with character references: right whatever charset the page is served with.
    return html.strip().encode("ascii", "xmlcharrefreplace").decode("ascii")


# What comes back --------------------------------------------------------------------------------


def _single(form_data: Mapping[str, Sequence[str]], key: str) -> str | None:
    values = form_data.get(key)
    if not values:
        return None
    if isinstance(values, str) or len(values) != 1:
        raise InvalidOptions(f"the form field {key!r} must have exactly one value")
    value = values[0]
    if not isinstance(value, str):
        raise InvalidOptions(f"the form field {key!r} must be text")
    return value.strip()


def options_from_form(form_data: Mapping[str, Sequence[str]]) -> dict[str, str]:
    """Form fields (each a list of strings) to user_options; the account of the chosen site only.

    Shape only: ``validate`` decides whether the values may be used.
    """
    profile = _single(form_data, "profile")
    site = _single(form_data, "site") or AUTO_SITE
    options: dict[str, str] = {"site": site}
    if profile is not None:
        options["profile"] = profile
    if site != AUTO_SITE:
        account = _single(form_data, f"account-{site}")
        if account:
            options["account"] = account
    return options


def validate(
    user_options: Mapping[str, Any], choices: Choices, *, default_profile: str | None = None
) -> SessionOptions:
    """Options from the form or the REST API, checked against what this user may choose now."""
    unknown = set(user_options) - {"profile", "site", "account"}
    if unknown:
        raise InvalidOptions(f"unknown option(s): {', '.join(sorted(map(str, unknown)))}")
    for key, value in user_options.items():
        if value is not None and not isinstance(value, str):
            raise InvalidOptions(f"option {key!r} must be a string")

    profile_name = user_options.get("profile") or default_profile
    if not profile_name and len(choices.profiles) == 1:
        profile_name = choices.profiles[0].name
    if not profile_name:
        raise InvalidOptions("choose a profile")
    profile = choices.profile(profile_name)
    if profile is None:
        raise InvalidOptions(f"profile {profile_name!r} does not exist or is not available to you")

    site_name = user_options.get("site") or AUTO_SITE
    account = user_options.get("account") or None
    if site_name == AUTO_SITE:
        if not choices.offer_auto_site:
            raise InvalidOptions("choose a cluster")
        if not any(profile.runs_at(s.name) for s in choices.sites):
            raise InvalidOptions(f"profile {profile.display_name!r} may run at no cluster")
        if account is not None and not _valid_account(account):
            raise InvalidOptions(f"{account!r} is not a valid Slurm account name")
        return SessionOptions(profile=profile.name, site=AUTO_SITE, account=account)

    site = choices.site(site_name)
    if site is None:
        raise InvalidOptions(f"cluster {site_name!r} does not exist")
    if not profile.runs_at(site.name):
        allowed = (
            ", ".join(s.display_name for s in choices.sites if profile.runs_at(s.name))
            or "no cluster"
        )
        raise InvalidOptions(
            f"profile {profile.display_name!r} cannot run at {site.display_name}; "
            f"it may run at: {allowed}"
        )
    if account is None:
        if site.account_required:
            raise InvalidOptions(f"{site.display_name} requires a project (Slurm account)")
    elif site.accounts is not None:
        if account not in site.accounts:
            raise InvalidOptions(f"{account!r} is not one of your projects at {site.display_name}")
    elif not _valid_account(account):
        raise InvalidOptions(
            f"{account!r} is not a valid Slurm account name (letters, digits, '_', '.', '-')"
        )
    return SessionOptions(profile=profile.name, site=site.name, account=account)
