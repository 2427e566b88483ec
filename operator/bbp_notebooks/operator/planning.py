"""Validate a session against its profile and site, and choose where and how it runs. Pure."""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass

from bbp_notebooks.api.constants import JOB_NAME_PREFIX
from bbp_notebooks.api.models import (
    AccountPolicy,
    NotebookProfileSpec,
    NotebookSessionSpec,
    SlurmSiteSpec,
    SlurmSiteStatus,
)
from bbp_notebooks.api.vocabulary import ConditionType, Reason
from bbp_notebooks.operator.conditions import is_true


class InvalidSpec(Exception):
    """The session can never run as written; retrying will not help."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


class NoSiteAvailable(Exception):
    """No allowed site is reachable right now; this may heal."""


@dataclass(frozen=True)
class SiteView:
    """What the operator knows of a SlurmSite: its spec and last observed status."""

    name: str
    spec: SlurmSiteSpec
    status: SlurmSiteStatus

    @property
    def reachable(self) -> bool:
        return is_true(self.status.conditions, ConditionType.REACHABLE)

    @property
    def idle_cores(self) -> int:
        """Idle cores where sessions run (the default partition): partitions often share nodes,
        so a sum over partitions would count the same cores twice."""
        default = self.default_partition
        return next((p.idle_cores for p in self.status.partitions if p.name == default), 0)

    @property
    def default_partition(self) -> str:
        return next(
            (p.name for p in self.spec.partitions if p.default), self.spec.partitions[0].name
        )


@dataclass(frozen=True)
class Plan:
    """A validated session: everything sbatch needs."""

    site: str
    partition: str
    account: str | None
    cores: int
    memory_mib: int
    time_limit_minutes: int
    profile: NotebookProfileSpec

    @property
    def spark_time_limit_minutes(self) -> int | None:
        """The companion's limit: the notebook's plus the profile's margin, never shorter."""
        spark = self.profile.spark
        return None if spark is None else self.time_limit_minutes + spark.extra_minutes


def job_name(installation: str, uid: str) -> str:
    """The tag that ties a Slurm job to its session and to this installation (visible to all
    users, so nothing secret): ``bbpnb-<installation id>-<session uid>``."""
    return f"{JOB_NAME_PREFIX}{installation}-{uid}"


# The companion job of a PySpark session (its Spark cluster) carries the session's tag and this
# suffix: derivable from the session, distinct from its notebook job.
COMPANION_SUFFIX = "-spark"


def companion_job_name(installation: str, uid: str) -> str:
    """The tag of the session's Spark cluster job: ``bbpnb-<installation id>-<uid>-spark``."""
    return job_name(installation, uid) + COMPANION_SUFFIX


_UID = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def session_uid(job_name_: str, installation: str) -> str | None:
    """The session uid a job of this installation belongs to; None for any other name.

    Only the exact pattern counts: another installation's jobs, a user's own job that happens to
    start with the prefix, or a name with anything after the uid are never ours.
    """
    prefix = f"{JOB_NAME_PREFIX}{installation}-"
    if not job_name_.startswith(prefix):
        return None
    uid = job_name_[len(prefix) :]
    return uid if _UID.match(uid) else None


def tagged_session(job_name_: str, installation: str) -> tuple[str, bool] | None:
    """(session uid, is the companion) for a job of either of a session's tags; None for any
    other name. The pair is one session's: adoption, the orphan sweep, duplicates and cancel
    look at both."""
    uid = session_uid(job_name_, installation)
    if uid is not None:
        return uid, False
    if job_name_.endswith(COMPANION_SUFFIX):
        uid = session_uid(job_name_[: -len(COMPANION_SUFFIX)], installation)
        if uid is not None:
            return uid, True
    return None


def profile_allows(profile: NotebookProfileSpec, groups: Iterable[str] | None) -> bool:
    if not profile.allowed_groups:
        return True
    return groups is not None and bool(set(profile.allowed_groups) & set(groups))


def user_refusal(
    site: SiteView, user: str, protected: Collection[str]
) -> InvalidSpec | NoSiteAvailable | None:
    """Why ``user`` may not run at ``site`` (None: may). ``protected`` holds the operator's
    protected users and every site's monitor user: no session ever runs as one of them."""
    policy = site.spec.user_policy

    def refused(why: str) -> InvalidSpec:
        return InvalidSpec(
            Reason.USER_NOT_ALLOWED, f"user {user!r} may not run at {site.name!r}: {why}"
        )

    if user in protected:
        return refused("a protected account (system or monitor user)")
    if user in policy.denied_users:
        return refused("denied by the site's user policy")
    try:
        if re.fullmatch(policy.allowed_pattern, user) is None:
            return refused(f"the name does not match the site's pattern {policy.allowed_pattern}")
    except re.error as error:
        return refused(f"the site's allowedPattern is not a valid expression ({error})")
    if policy.require_association:
        if site.status.last_poll_time is None:
            return NoSiteAvailable(f"site {site.name!r} has not reported its associations yet")
        if not any(entry.user == user for entry in site.status.user_accounts):
            return refused("no Slurm association at the site (sacctmgr)")
    return None


def protected_users(configured: Iterable[str], sites: Iterable[SiteView]) -> frozenset[str]:
    """The operator's protected users plus every site's monitor and admin users."""
    sites = list(sites)
    return (
        frozenset(configured)
        | {site.spec.monitor_user for site in sites}
        | {site.spec.admin_user for site in sites if site.spec.admin_user}
    )


def choose_site(profile: NotebookProfileSpec, sites: Iterable[SiteView]) -> SiteView:
    """For ``site: auto``: the reachable allowed site with the most idle cores."""
    candidates = [
        s
        for s in sites
        if s.reachable and (not profile.allowed_sites or s.name in profile.allowed_sites)
    ]
    if not candidates:
        raise NoSiteAvailable("no site that this profile may use is reachable")
    return max(candidates, key=lambda s: (s.idle_cores, s.name))


def plan(
    spec: NotebookSessionSpec,
    profiles: Mapping[str, NotebookProfileSpec],
    sites: Mapping[str, SiteView],
    groups: Iterable[str] | None = None,
    protected: Collection[str] = frozenset(),
    placed: str | None = None,
) -> Plan:
    """Check everything before anything runs (and before any credential is minted for the
    user); raise InvalidSpec with a clear message. ``protected``: see :func:`user_refusal`.
    ``placed``: where an ``auto`` session was placed (status.site); placement is once, so a
    placed session is planned as if its spec named that site."""
    profile = profiles.get(spec.profile)
    if profile is None:
        raise InvalidSpec(
            Reason.UNKNOWN_PROFILE, f"NotebookProfile {spec.profile!r} does not exist"
        )
    if not profile_allows(profile, groups):
        raise InvalidSpec(
            Reason.PROFILE_NOT_ALLOWED,
            f"user {spec.user!r} is in none of the groups allowed to use profile {spec.profile!r}",
        )
    site_name = placed if spec.site == "auto" and placed else spec.site
    if site_name == "auto":
        refusals = {name: user_refusal(v, spec.user, protected) for name, v in sites.items()}
        permitted = [v for name, v in sites.items() if refusals[name] is None]
        if not permitted:
            # One that may heal wins over a final refusal: another site may still take the user.
            found_refusals = sorted(
                (r for r in refusals.values() if r is not None),
                key=lambda r: not isinstance(r, NoSiteAvailable),
            )
            raise (found_refusals or [NoSiteAvailable("no SlurmSite exists")])[0]
        site = choose_site(profile, permitted)
    else:
        found = sites.get(site_name)
        if found is None:
            raise InvalidSpec(Reason.UNKNOWN_SITE, f"SlurmSite {site_name!r} does not exist")
        if profile.allowed_sites and site_name not in profile.allowed_sites:
            raise InvalidSpec(
                Reason.SITE_NOT_ALLOWED,
                f"profile {spec.profile!r} may run only at {', '.join(profile.allowed_sites)}",
            )
        site = found
        refusal = user_refusal(site, spec.user, protected)
        if refusal is not None:
            raise refusal
    if site.spec.account_policy == AccountPolicy.REQUIRED and not spec.account:
        raise InvalidSpec(
            Reason.ACCOUNT_REQUIRED,
            f"site {site.name!r} requires an account (project) for every job",
        )
    overrides = spec.resources
    cores = (overrides.cores if overrides and overrides.cores else None) or profile.cores
    memory = (
        overrides.memory_mib if overrides and overrides.memory_mib else None
    ) or profile.memory_mib
    minutes = (
        overrides.time_limit_minutes if overrides and overrides.time_limit_minutes else None
    ) or profile.default_time_limit_minutes
    max_cores = profile.max_cores or profile.cores
    max_memory = profile.max_memory_mib or profile.memory_mib
    if cores > max_cores:
        raise InvalidSpec(
            Reason.RESOURCES_EXCEED_PROFILE, f"{cores} cores asked, profile allows {max_cores}"
        )
    if memory > max_memory:
        raise InvalidSpec(
            Reason.RESOURCES_EXCEED_PROFILE, f"{memory} MiB asked, profile allows {max_memory} MiB"
        )
    if minutes > profile.max_time_limit_minutes:
        raise InvalidSpec(
            Reason.RESOURCES_EXCEED_PROFILE,
            f"{minutes} minutes asked, profile allows {profile.max_time_limit_minutes}",
        )
    return Plan(
        site=site.name,
        partition=site.default_partition,
        account=spec.account,
        cores=cores,
        memory_mib=memory,
        time_limit_minutes=minutes,
        profile=profile,
    )
