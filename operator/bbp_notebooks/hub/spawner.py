"""NotebookSessionSpawner: JupyterHub servers as NotebookSession resources.

The spawner never talks to a Slurm site. It offers what the cluster says exists (profiles the user
may use, sites with their live availability), creates a NotebookSession plus a Secret holding the
notebook's environment, and follows the session's status as the operator writes it.

    c.JupyterHub.spawner_class = "notebooksession"
    c.NotebookSessionSpawner.namespace = "bbp-notebooks"
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from jupyterhub.spawner import Spawner
from pydantic import ValidationError
from tornado import web
from traitlets import Bool, Float, Integer, List, Unicode, default
from traitlets import Callable as CallableTrait

from bbp_notebooks.api.constants import (
    API_VERSION,
    CREATED_BY_ANNOTATION,
    GROUPS_ANNOTATION,
    POSIX_USER_PATTERN,
    SESSION_KIND,
)
from bbp_notebooks.api.models import (
    NotebookSession,
    NotebookSessionSpec,
    NotebookSessionStatus,
    SecretReference,
    SessionPhase,
    dump,
)
from bbp_notebooks.hub import naming, options, progress
from bbp_notebooks.hub.kube import HubKube, api_client, own_namespace

_SERVER_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


# JUPYTERHUB_API_TOKEN's scopes; "!server" is this server (JupyterHub expands it).
SERVER_TOKEN_SCOPES = ("users:activity!user", "access:servers!server", "read:servers!server")


class SessionFailed(RuntimeError):
    """The session ended (or was refused) before its notebook was ready."""


@dataclass(frozen=True)
class SessionRef:
    """The session a spawner owns: what get_state saves so a restarted hub finds it again."""

    namespace: str
    name: str
    uid: str

    def as_state(self) -> dict[str, str]:
        return {"namespace": self.namespace, "name": self.name, "uid": self.uid}

    @classmethod
    def from_state(cls, state: Mapping[str, Any]) -> SessionRef | None:
        raw = state.get("session")
        if not isinstance(raw, Mapping):
            return None
        fields = [raw.get(key) for key in ("namespace", "name", "uid")]
        if not all(isinstance(value, str) and value for value in fields):
            return None
        namespace, name, uid = fields
        return cls(namespace=str(namespace), name=str(name), uid=str(uid))


def _default_posix_user(spawner: Any) -> str:
    return str(spawner.user.name)


async def _options_form(spawner: NotebookSessionSpawner) -> str:
    return await spawner.render_options_form()


async def _options_from_form(
    form_data: Mapping[str, Sequence[str]], spawner: NotebookSessionSpawner
) -> dict[str, str]:
    # A ValueError here is shown above the form, which is rendered again.
    return await spawner.options_from_form_data(form_data)


async def _apply_user_options(spawner: NotebookSessionSpawner, user_options: Any) -> None:
    # Runs for the form and for REST API spawns (JupyterHub >= 5.3) before start(); start()
    # checks again for older hubs.
    try:
        await spawner.validated_options(user_options)
    except options.InvalidOptions as error:
        raise web.HTTPError(400, str(error)) from error


class NotebookSessionSpawner(Spawner):  # type: ignore[misc]
    """Starts single-user servers as Slurm jobs through the bbp-notebooks operator."""

    namespace = Unicode(
        help="Namespace of the NotebookSessions and environment Secrets. Default: the hub pod's "
        "namespace in a cluster, else 'default'.",
    ).tag(config=True)

    kubeconfig = Unicode(
        None,
        allow_none=True,
        help="kubeconfig file; None: in-cluster credentials, else $KUBECONFIG or ~/.kube/config.",
    ).tag(config=True)

    posix_user_for = CallableTrait(
        default_value=_default_posix_user,
        help="Maps the spawner to the POSIX user the job runs as (default: the hub user name). "
        "May return a coroutine.",
    ).tag(config=True)

    default_profile = Unicode(
        None,
        allow_none=True,
        help="Profile used when a spawn request names none (e.g. a REST API spawn without "
        "options); with one available profile, that one.",
    ).tag(config=True)

    offer_auto_site = Bool(
        True, help="Offer 'any reachable cluster' (site: auto) in the form."
    ).tag(config=True)

    status_poll_interval = Float(
        1.0, help="Seconds between reads of the session while waiting for it."
    ).tag(config=True)

    stop_timeout = Integer(
        120,
        help="Seconds stop() waits for the session to disappear (the operator removes it once "
        "Slurm confirms the job ended).",
    ).tag(config=True)

    site_stale_seconds = Integer(
        120,
        help="A site whose last successful poll is older (and older than three of its poll "
        "intervals) shows 'availability unknown'.",
    ).tag(config=True)

    form_template_paths = List(
        Unicode(),
        help="Folders searched for the spawn form's Jinja2 template before the package's own "
        "(bbp_notebooks/hub/templates/form.html). A deployer's form.html there replaces ours; it "
        'may {% extends "bbp_notebooks/form.html" %} and override a block. Autoescaped.',
    ).tag(config=True)

    form_template = Unicode(
        options.FORM_TEMPLATE, help="Name of the spawn form's template in form_template_paths."
    ).tag(config=True)

    @default("namespace")
    def _default_namespace(self) -> str:
        return own_namespace()

    @default("start_timeout")
    def _default_start_timeout(self) -> int:
        # Waiting in a Slurm queue is normal: the JupyterHub default of 60 s would give up on
        # nearly every busy cluster. An hour, and the progress page says why it waits.
        return 3600

    @default("server_token_scopes")
    def _default_server_token_scopes(self) -> list[str]:
        # JupyterHub's "server" role, plus reading this one server: code in the notebook can ask
        # GET /hub/api/bbp/sessions for its own time left and the operator's warning (README:
        # "In the notebook"), and nothing about the user's other servers or other users.
        return [*SERVER_TOKEN_SCOPES]

    @default("env_keep")
    def _default_env_keep(self) -> list[str]:
        # The notebook runs on a compute node of another machine: the hub's PATH, virtualenv or
        # conda variables mean nothing there (modules and the profile's setup script set them).
        return []

    @default("options_form")
    def _default_options_form(self) -> Callable[[NotebookSessionSpawner], Any]:
        return _options_form

    @default("options_from_form")
    def _default_options_from_form(self) -> Callable[..., Any]:
        return _options_from_form

    @default("apply_user_options")
    def _default_apply_user_options(self) -> Callable[..., Any]:
        return _apply_user_options

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.session: SessionRef | None = None
        self._status: NotebookSessionStatus | None = None
        self._site_labels: dict[str, str] = {}

    # The cluster ------------------------------------------------------------------------------

    async def kube(self) -> HubKube:
        return HubKube(await api_client(self.kubeconfig))

    def group_names(self) -> list[str]:
        names = [getattr(g, "name", g) for g in (getattr(self.user, "groups", None) or [])]
        usable, refused = naming.safe_groups([str(n) for n in names])
        if refused:
            self.log.warning(
                "%s: hub groups %s are not valid group names and are ignored",
                self._log_name,
                refused,
            )
        return usable

    async def posix_user(self) -> str:
        user = self.posix_user_for(self)
        if asyncio.iscoroutine(user):
            user = await user
        if not isinstance(user, str):
            raise options.InvalidOptions("posix_user_for must return a string")
        return user

    async def choices(self, kube: HubKube | None = None) -> options.Choices:
        """What this user may choose from, read from the cluster now."""
        kube = kube or await self.kube()
        profiles, sites = await asyncio.gather(kube.profiles(), kube.sites())
        user = await self.posix_user()
        now = dt.datetime.now(dt.UTC)
        stale = dt.timedelta(seconds=self.site_stale_seconds)
        site_choices = []
        for raw in sites:
            try:
                site_choices.append(options.site_choice(raw, user, now=now, stale_after=stale))
            except ValueError as error:
                self.log.warning(
                    "SlurmSite %s is not valid and is not offered: %s",
                    raw.get("metadata", {}).get("name"),
                    error,
                )
        site_choices.sort(key=lambda s: (s.display_name, s.name))
        self._site_labels.update({s.name: s.display_name for s in site_choices})
        return options.Choices(
            profiles=options.allowed_profiles(profiles, self.group_names()),
            sites=tuple(site_choices),
            offer_auto_site=self.offer_auto_site,
        )

    async def render_options_form(self) -> str:
        choices = await self.choices()
        previous = None
        try:
            previous = options.validate(self.user_options or {}, choices)
        except options.InvalidOptions:
            pass  # remembered options that no longer apply: show the defaults
        return options.render_form(
            choices, previous, search_path=self.form_template_paths, template=self.form_template
        )

    async def options_from_form_data(
        self, form_data: Mapping[str, Sequence[str]]
    ) -> dict[str, str]:
        user_options = options.options_from_form(form_data)
        chosen = options.validate(
            user_options, await self.choices(), default_profile=self.default_profile
        )
        return chosen.as_user_options()

    async def validated_options(
        self, user_options: Any, kube: HubKube | None = None
    ) -> options.SessionOptions:
        if not isinstance(user_options, Mapping):
            raise options.InvalidOptions("user options must be an object")
        return options.validate(
            user_options, await self.choices(kube), default_profile=self.default_profile
        )

    # The session ------------------------------------------------------------------------------

    def session_body(
        self, name: str, chosen: options.SessionOptions, user: str, created_by: str
    ) -> dict[str, Any]:
        """The NotebookSession for this server. Holds no secret: the token is in the Secret.
        ``created_by`` is the hub's own Kubernetes user name, which the admission policy
        requires in the created-by annotation."""
        if len(self.name) > 63 or not set(self.name) <= _SERVER_NAME_CHARS:
            raise options.InvalidOptions(
                f"server name {self.name!r} cannot be used: letters, digits, '.', '_' and '-' "
                "only, at most 63"
            )
        try:
            spec = NotebookSessionSpec(
                user=user,
                profile=chosen.profile,
                site=chosen.site,
                account=chosen.account,
                server_name=self.name,
                environment_secret_ref=SecretReference(name=naming.secret_name(name)),
            )
        except ValidationError as error:
            raise options.InvalidOptions(
                f"cannot run as POSIX user {user!r} (must match {POSIX_USER_PATTERN})"
                if any(e["loc"] == ("user",) for e in error.errors())
                else f"invalid session: {error}"
            ) from error
        hub_user = str(self.user.name)
        return {
            "apiVersion": API_VERSION,
            "kind": SESSION_KIND,
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": naming.labels(hub_user, self.name),
                "annotations": {
                    CREATED_BY_ANNOTATION: created_by,
                    GROUPS_ANNOTATION: ",".join(self.group_names()),
                    naming.HUB_USER_ANNOTATION: hub_user,
                    naming.SERVER_NAME_ANNOTATION: self.name,
                },
            },
            "spec": dump(spec),
        }

    def notebook_environment(self) -> dict[str, str]:
        """All of the hub's environment for the single-user server (API token included)."""
        return {key: str(value) for key, value in self.get_env().items()}

    async def start(self) -> str:
        kube = await self.kube()
        chosen = await self.validated_options(self.user_options or {}, kube)
        user = await self.posix_user()
        name = naming.session_name(str(self.user.name), self.name)
        body = self.session_body(name, chosen, user, await kube.username())
        secret = naming.secret_name(name)

        # A session by this name is a leftover (a stop that timed out, a failed start kept for
        # inspection, a hub that lost its state): its token is dead, so it goes first.
        await self._delete_and_wait(kube, self.namespace, name, None)

        self._status = None
        await kube.create_secret(
            self.namespace,
            secret,
            self.notebook_environment(),
            naming.labels(str(self.user.name), self.name),
        )
        # The Secret exists before the session so that the operator finds it on its first visit;
        # the session becomes its owner right after, and nothing is left behind on failure.
        try:
            created = await kube.create_session(self.namespace, body)
            self.session = SessionRef(self.namespace, name, created["metadata"]["uid"])
            await kube.own_secret(self.namespace, secret, created)
        except BaseException:
            await self._cleanup_failed_start(kube, name, secret)
            raise
        self.log.info("%s: created NotebookSession %s/%s", self._log_name, self.namespace, name)
        return await self._wait_until_ready(kube, self.session)

    async def _cleanup_failed_start(self, kube: HubKube, name: str, secret: str) -> None:
        try:
            if self.session is not None:
                await kube.delete_session(self.namespace, name, self.session.uid)
            await kube.delete_secret(self.namespace, secret)
        except Exception:
            self.log.exception("%s: cleanup after a failed start", self._log_name)
        self.session = None

    async def _wait_until_ready(self, kube: HubKube, ref: SessionRef) -> str:
        deadline = time.monotonic() + self.start_timeout
        while True:
            session = await self._read(kube, ref)
            if session is None:
                raise SessionFailed(f"NotebookSession {ref.namespace}/{ref.name} was deleted")
            status = self._status = session.status
            if status.phase == SessionPhase.READY and status.endpoint is not None:
                self.log.info("%s: ready at %s", self._log_name, status.endpoint.url)
                return status.endpoint.url
            if status.phase is not None and status.phase.is_terminal:
                why = status.message or "the session ended before it was ready"
                raise SessionFailed(f"{status.phase.value}: {why}")
            if time.monotonic() >= deadline:
                last = progress.describe(status, self._site_label).message
                raise TimeoutError(
                    f"the notebook was not ready within {self.start_timeout} s; last: {last}"
                )
            await asyncio.sleep(self.status_poll_interval)

    async def _read(self, kube: HubKube, ref: SessionRef) -> NotebookSession | None:
        raw = await kube.read_session(ref.namespace, ref.name)
        if raw is None or raw["metadata"]["uid"] != ref.uid:
            return None
        return NotebookSession.model_validate(raw)

    def _site_label(self, name: str) -> str:
        return self._site_labels.get(name, name)

    async def progress(self) -> AsyncIterator[dict[str, object]]:
        """Messages from the session's status as start() reads it: queued (reason, estimated
        start), starting on a node, ready."""
        deadline = time.monotonic() + self.start_timeout
        last: str | None = None
        while time.monotonic() < deadline:
            status = self._status
            if status is not None:
                event = progress.describe(status, self._site_label)
                if event.message != last:
                    last = event.message
                    yield event.as_event()
                if event.ready or (status.phase is not None and status.phase.is_terminal):
                    return
            elif last is None:
                last = "Creating the notebook session"
                yield {"progress": 5, "message": last}
            await asyncio.sleep(min(self.status_poll_interval, 0.5))

    async def poll(self) -> int | None:
        ref = self.session
        if ref is None:
            return 0
        try:
            session = await self._read(await self.kube(), ref)
        except Exception as error:
            # Could not ask is not gone (batchspawner #315): keep the server.
            self.log.warning("%s: cannot read session %s: %s", self._log_name, ref.name, error)
            return None
        if session is None:
            return 1
        self._status = session.status
        return progress.exit_status(session.status)

    async def stop(self, now: bool = False) -> None:
        ref = self.session
        if ref is None:
            return
        kube = await self.kube()
        try:
            await self._delete_and_wait(kube, ref.namespace, ref.name, ref.uid)
        finally:
            # The garbage collector would delete it once the session is gone; control planes
            # without a controller manager have none, and the token should not outlive the server.
            await kube.delete_secret(ref.namespace, naming.secret_name(ref.name), owner_uid=ref.uid)
        self.log.info("%s: NotebookSession %s/%s is gone", self._log_name, ref.namespace, ref.name)

    async def _delete_and_wait(
        self, kube: HubKube, namespace: str, name: str, uid: str | None
    ) -> None:
        """Delete the session (uid-guarded when known); wait, with a deadline, until it is gone."""
        existing = await kube.read_session(namespace, name)
        if existing is None or (uid is not None and existing["metadata"]["uid"] != uid):
            return
        uid = existing["metadata"]["uid"]
        await kube.delete_session(namespace, name, uid)
        deadline = time.monotonic() + self.stop_timeout
        while True:
            current = await kube.read_session(namespace, name)
            if current is None or current["metadata"]["uid"] != uid:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"NotebookSession {namespace}/{name} still exists {self.stop_timeout} s after "
                    "its deletion: the operator has not confirmed that its Slurm job ended"
                )
            await asyncio.sleep(self.status_poll_interval)

    # State ------------------------------------------------------------------------------------

    def get_state(self) -> dict[str, Any]:
        state: dict[str, Any] = super().get_state()
        if self.session is not None:
            state["session"] = self.session.as_state()
        return state

    def load_state(self, state: Mapping[str, Any]) -> None:
        super().load_state(state)
        self.session = SessionRef.from_state(state or {})

    def clear_state(self) -> None:
        super().clear_state()
        self.session = None
        self._status = None


__all__ = ["NotebookSessionSpawner", "SessionFailed", "SessionRef"]
