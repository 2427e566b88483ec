"""Submitting a session's job exactly once, and cancelling it when the session goes."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass

from kubernetes_asyncio.client.exceptions import ApiException

from bbp_notebooks.api.models import (
    NotebookProfileSpec,
    NotebookSessionSpec,
    NotebookSessionStatus,
    SessionPhase,
    SparkStatus,
)
from bbp_notebooks.api.vocabulary import Reason
from bbp_notebooks.operator import failpoints, kerberos, observe
from bbp_notebooks.operator.metrics import SUBMISSION_FAILURES, SUBMISSIONS, USER_REFUSALS
from bbp_notebooks.operator.planning import (
    InvalidSpec,
    Plan,
    SiteView,
    companion_job_name,
    job_name,
    plan,
    protected_users,
    user_refusal,
)
from bbp_notebooks.operator.runtime import Runtime
from bbp_notebooks.operator.tokens import digest, new_token
from bbp_notebooks.slurm.commands import JobSpec
from bbp_notebooks.slurm.jobscript import Callback, JobScript, SparkInstall, render_job_script
from bbp_notebooks.slurm.sparkscript import DAEMON_MEMORY_MIB, SparkJob, render_spark_script
from bbp_notebooks.slurm.values import JobState
from bbp_notebooks.ssh import (
    CommandFailed,
    Identity,
    IdentityKind,
    SlurmClient,
    SshError,
    SubmissionRejected,
    may_have_run,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SessionRef:
    """A session as the operator's indexes hold it."""

    uid: str
    namespace: str
    name: str
    generation: int | None
    created: dt.datetime
    spec: NotebookSessionSpec
    status: NotebookSessionStatus
    groups: tuple[str, ...] | None = None

    @property
    def involved(self) -> dict[str, str]:
        from bbp_notebooks.api.constants import API_VERSION, SESSION_KIND

        return {
            "api_version": API_VERSION,
            "kind": SESSION_KIND,
            "name": self.name,
            "namespace": self.namespace,
            "uid": self.uid,
        }


class SessionIndex:
    """Every watched NotebookSession, by uid, as the poll, the ticket checks and the callbacks
    read them (never fetched per event).

    Not a kopf index, on purpose: until every kopf index is filled, kopf gives each listed
    object a readiness toggle and each object's worker waits on them all, and every new toggle
    wakes every waiting worker; a restart over 10,000 sessions did not finish in 7 minutes
    (README, *Performance*). This one is filled by a paged LIST in the startup handler, which
    kopf runs before its watch starts, so every watch event after it is at least as new; the
    watch's events then keep it (``put``, ``discard``).

    An entry only that LIST has given is *provisional* until an event confirms it: a session
    deleted between that LIST and kopf's own leaves no event at all, so provisional entries are
    checked once against a later list of the cluster (``forget_absent``)."""

    def __init__(self) -> None:
        self._by_uid: dict[str, SessionRef] = {}
        self._provisional: set[str] = set()
        self.checked_at = float("-inf")  # monotonic time of the last forget_absent

    def put(self, ref: SessionRef) -> None:
        self._by_uid[ref.uid] = ref
        self._provisional.discard(ref.uid)

    def put_listed(self, ref: SessionRef) -> None:
        """An entry from the startup LIST; a watch event already seen is never replaced."""
        if ref.uid not in self._by_uid:
            self._by_uid[ref.uid] = ref
            self._provisional.add(ref.uid)

    def discard(self, uid: str) -> None:
        self._by_uid.pop(uid, None)
        self._provisional.discard(uid)

    def get(self, uid: str) -> SessionRef | None:
        return self._by_uid.get(uid)

    def values(self) -> list[SessionRef]:
        return list(self._by_uid.values())

    def __len__(self) -> int:
        return len(self._by_uid)

    @property
    def provisional(self) -> int:
        return len(self._provisional)

    def forget_absent(self, existing: Collection[str]) -> list[str]:
        """Drop the provisional entries a list read after the startup LIST does not have (their
        session went before kopf's watch began); the uids dropped."""
        gone = [uid for uid in self._provisional if uid not in existing]
        for uid in gone:
            self.discard(uid)
        return gone


class EnvironmentNotReady(Exception):
    """The session's environment Secret is missing or not yet owned by the session; the hub
    makes the session its owner right after creating it, so this heals within moments."""


# How long after a session's creation a missing or unowned environment Secret is waited for.
ENVIRONMENT_GRACE = dt.timedelta(seconds=60)


async def environment_for(
    rt: Runtime, session: SessionRef, now: dt.datetime
) -> dict[str, str] | InvalidSpec:
    """The notebook's environment from the session's Secret (values never leave the script body).

    Only a Secret the session owns (an ownerReference with its uid) is used: otherwise anyone
    who may create a session could have another user's Secret (their hub token) put into a job
    of their own. One without owners is waited for (the hub sets the owner right after creating
    the session); one owned by anything else is refused at once.
    """
    ref = session.spec.environment_secret_ref
    if ref is None:
        return {}
    waited = now - session.created
    try:
        data, owners, _ = await rt.kube.read_secret_with_owners(session.namespace, ref.name)
    except ApiException as error:
        if error.status != 404:
            raise EnvironmentNotReady(f"Secret {ref.name!r} not readable: {error.reason}") from None
        if waited < ENVIRONMENT_GRACE:
            raise EnvironmentNotReady(f"Secret {ref.name!r} does not exist yet") from None
        return InvalidSpec(
            Reason.ENVIRONMENT_SECRET_NOT_FOUND,
            f"Secret {ref.name!r} does not exist in {session.namespace}",
        )
    if session.uid not in owners:
        if waited < ENVIRONMENT_GRACE and not owners:
            raise EnvironmentNotReady(f"Secret {ref.name!r} is not owned by the session yet")
        return InvalidSpec(
            Reason.ENVIRONMENT_SECRET_NOT_OWNED,
            f"Secret {ref.name!r} does not belong to this session (no ownerReference to it)"
            + (" but to another object" if owners else ""),
        )
    return {key: value.decode() for key, value in data.items()}


def job_spec(name: str, chosen: Plan) -> JobSpec:
    return JobSpec(
        name=name,
        partition=chosen.partition,
        account=chosen.account,
        cpus_per_task=chosen.cores,
        memory_mb=chosen.memory_mib,
        time_limit_minutes=chosen.time_limit_minutes,
    )


def job_script(
    rt: Runtime,
    session: SessionRef,
    site: SiteView,
    chosen: Plan,
    env: Mapping[str, str],
    token: str,
) -> JobScript:
    return JobScript(
        session_uid=session.uid,
        session_name=f"{session.namespace}/{session.name}",
        bind_host=site.spec.notebook_host or "0.0.0.0",
        # The address the operator accepts from this job (callbacks.allowed_hosts).
        advertise_host=None if site.spec.notebook_host else site.spec.node_address_template,
        modules=tuple(chosen.profile.modules),
        kernel_setup=chosen.profile.kernel_setup,
        environment=dict(env),
        notebook_argv=tuple(rt.settings.notebook_command),
        callback=Callback(url=callback_url(rt, session, "endpoint"), token=token),
        spark=spark_install(chosen.profile),
    )


def callback_url(rt: Runtime, session: SessionRef, what: str) -> str:
    return (
        f"{rt.settings.callback_url.rstrip('/')}/v1/namespaces/{session.namespace}"
        f"/sessions/{session.name}/{session.uid}/{what}"
    )


def spark_install(profile: NotebookProfileSpec) -> SparkInstall | None:
    if profile.spark is None:
        return None
    where = profile.spark.installation
    if where.module is not None:
        return SparkInstall("module", where.module)
    if where.path is not None:
        return SparkInstall("path", where.path)
    assert where.virtualenv is not None  # noqa: S101 - the model allows exactly one
    return SparkInstall("virtualenv", where.virtualenv)


def spark_job(
    rt: Runtime, session: SessionRef, site: SiteView, profile: NotebookProfileSpec, token: str
) -> SparkJob:
    """The companion's script: the daemons bind where the site's notebooks do."""
    spark = profile.spark
    install = spark_install(profile)
    assert spark is not None and install is not None  # noqa: S101 - callers check
    return SparkJob(
        session_uid=session.uid,
        session_name=f"{session.namespace}/{session.name}",
        install=install,
        workers=spark.workers,
        cores_per_worker=spark.cores_per_worker,
        memory_mib_per_worker=spark.memory_mib_per_worker,
        host_template=site.spec.notebook_host or site.spec.node_address_template,
        settings=tuple((s.name, s.value) for s in spark.settings),
        callback=Callback(url=callback_url(rt, session, "spark"), token=token),
    )


def spark_job_spec(
    name: str, site: SiteView, session: SessionRef, profile: NotebookProfileSpec, minutes: int
) -> JobSpec:
    """One task per worker; memory per CPU so that each worker's share (and the master's
    small heap on the first node) fits wherever Slurm places the tasks."""
    spark = profile.spark
    assert spark is not None  # noqa: S101 - callers check
    per_cpu = -(-(spark.memory_mib_per_worker + DAEMON_MEMORY_MIB) // spark.cores_per_worker)
    return JobSpec(
        name=name,
        partition=site.default_partition,
        account=session.spec.account,
        cpus_per_task=spark.cores_per_worker,
        memory_mb=per_cpu,
        time_limit_minutes=minutes,
        ntasks=spark.workers,
        nodes=None,
        memory_per_cpu=True,
    )


class SubmissionUnconfirmed(Exception):
    """sbatch's answer was lost and the job is not (yet) in the queue: retry soon; the next
    attempt waits the settle time again, looks again, and only then submits."""


async def ensure_submitted(
    rt: Runtime,
    session: SessionRef,
    profiles: Mapping[str, NotebookProfileSpec],
    sites: Mapping[str, SiteView],
) -> NotebookSessionStatus:
    """The session's status once its job exists: validated, found by tag, or submitted now.

    Raises the ssh layer's errors when the site cannot be asked, SubmissionUnconfirmed when an
    sbatch answer was lost; the caller retries later. Never submits when a job carrying the
    session's tag exists (crash between sbatch and the status write, a retry, a lost answer),
    and after a lost answer never before the settle time has passed and the tag was looked for.
    """
    now = dt.datetime.now(dt.UTC)
    status = observe.initial(session.status, now=now, generation=session.generation)
    if status.job_id is not None or (status.phase is not None and status.phase.is_terminal):
        return status
    decided = await _plan_for(rt, session, profiles, sites, status, now)
    if isinstance(decided, NotebookSessionStatus):
        return decided
    chosen, env = decided
    if not rt.shard.serves_site(chosen.site):  # placed here, submitted by its site's shard
        log.info("session %s/%s placed at %s", session.namespace, session.name, chosen.site)
        return observe.placed(
            status, chosen.site, rt.shard.name, now=now, generation=session.generation
        )
    site = sites[chosen.site]
    submission = _Submission(rt, session, site, chosen, now)
    if observe.unconfirmed(session.status):  # an earlier answer was lost, maybe by a replica
        await asyncio.sleep(rt.settings.submission_settle_seconds)
    adopted_id = await submission.find()
    if adopted_id is not None:
        return submission.recorded(status, adopted_id, adopted=True)
    return await submission.submit(status, env)


async def _plan_for(
    rt: Runtime,
    session: SessionRef,
    profiles: Mapping[str, NotebookProfileSpec],
    sites: Mapping[str, SiteView],
    status: NotebookSessionStatus,
    now: dt.datetime,
) -> tuple[Plan, dict[str, str]] | NotebookSessionStatus:
    """The plan and the environment, or the InvalidSpec status that says why there is none."""
    try:
        protected = protected_users(rt.settings.protected_users, sites.values())
        chosen = plan(
            session.spec, profiles, sites, session.groups, protected, placed=session.status.site
        )
        env = await environment_for(rt, session, now)
        if isinstance(env, InvalidSpec):
            raise env
    except InvalidSpec as invalid:
        # A label names a SlurmSite, never the unchecked text of a refused spec.
        site_label = session.spec.site if session.spec.site in sites else ""
        SUBMISSION_FAILURES.labels(site_label, invalid.reason).inc()
        if invalid.reason == Reason.USER_NOT_ALLOWED:
            USER_REFUSALS.labels(site_label, invalid.reason).inc()
        return observe.invalid(
            status, invalid.reason, invalid.message, now=now, generation=session.generation
        )
    return chosen, env


class _Submission:
    """One session's submission at its chosen site: look up by tag, sbatch, record."""

    def __init__(
        self, rt: Runtime, session: SessionRef, site: SiteView, chosen: Plan, now: dt.datetime
    ) -> None:
        self.rt, self.session, self.site, self.chosen, self.now = rt, session, site, chosen, now
        self.client = rt.client(site.name, site.spec)
        self.tag = job_name(rt.settings.installation_id, session.uid)
        self.where = f"{session.namespace}/{session.name}"

    async def identity(self) -> Identity:
        return await self.rt.identity(
            self.site.name, self.site.spec, self.session.spec.user, namespace=self.session.namespace
        )

    async def find(self) -> int | None:
        """The id of a job already carrying the session's tag, as its owner sees the queue."""
        user = self.session.spec.user
        existing = await self.client.queue(await self.identity(), names=[self.tag], users=[user])
        return next((entry.job_id for entry in existing if entry.name == self.tag), None)

    async def submit(
        self, status: NotebookSessionStatus, env: dict[str, str]
    ) -> NotebookSessionStatus:
        # A fresh token per submission; its digest is in status before the job can exist, so a
        # crash after sbatch leaves a job whose report can still be checked, by any replica.
        # The site too: an `auto` session is placed once, so a retry after a lost answer looks
        # for the job where it may be, never plans it anew elsewhere (planning.plan).
        token = new_token()
        status = status.model_copy(
            update={"callback_token_sha256": digest(token), "site": self.site.name}
        )
        await self._write(status)
        rt, site, session = self.rt, self.site, self.session
        identity = await self.identity()
        job = job_script(rt, session, site, self.chosen, env, token)
        if identity.kind == IdentityKind.GSSAPI:  # the job's own ticket, placed before sbatch
            job = await kerberos.place_ticket(
                rt, site, session.namespace, session.spec.user, session.uid, job
            )
        try:
            job_id = await self.client.submit(
                identity, job_spec(self.tag, self.chosen), render_job_script(job)
            )
        except SubmissionRejected as refusal:
            SUBMISSION_FAILURES.labels(site.name, Reason.SUBMISSION_REJECTED).inc()
            log.warning("session %s: %s refused the job: %s", self.where, site.name, refusal.reason)
            return observe.rejected(
                status,
                f"Slurm at {site.name} refused the job: {refusal.reason}",
                now=self.now,
                generation=self.session.generation,
            )
        except SshError as error:
            if not may_have_run(error):
                raise
            return await self._answer_lost(status, error)
        SUBMISSIONS.labels(site.name).inc()
        failpoints.reached("after-sbatch", job_id=job_id)
        log.info("submitted job %d for session %s at %s", job_id, self.where, site.name)
        return self.recorded(status, job_id, adopted=False)

    async def _answer_lost(
        self, status: NotebookSessionStatus, error: SshError
    ) -> NotebookSessionStatus:
        def mark(message: str) -> NotebookSessionStatus:
            return observe.submission_unconfirmed(
                status, message, now=self.now, generation=self.session.generation
            )

        job_id = await answer_lost(
            self.rt, self.session, self.site.name, "sbatch", error, mark, self.find
        )
        log.info("session %s: the lost sbatch made job %d; adopted", self.where, job_id)
        return self.recorded(status, job_id, adopted=True)

    async def _write(self, new: NotebookSessionStatus) -> None:
        patch = observe.status_patch(self.session.status, new)
        if patch:
            await self.rt.kube.patch_session_status(
                self.session.namespace, self.session.name, patch
            )

    def recorded(
        self, status: NotebookSessionStatus, job_id: int, *, adopted: bool
    ) -> NotebookSessionStatus:
        if adopted:
            log.info("adopted existing job %d for session %s", job_id, self.where)
        return observe.submitted(
            status,
            job_id=job_id,
            site=self.site.name,
            time_limit_minutes=self.chosen.time_limit_minutes,
            adopted=adopted,
            now=self.now,
            generation=self.session.generation,
        )


async def answer_lost(
    rt: Runtime,
    session: SessionRef,
    site: str,
    what: str,
    error: SshError,
    mark: Callable[[str], NotebookSessionStatus],
    find: Callable[[], Awaitable[int | None]],
) -> int:
    """``what`` (an sbatch) may have made a job though its answer was lost: say so in status
    (``mark``, so any replica, after a crash too, waits before submitting), give the controller
    time, then look for the job by its tag (``find``). The job's id, or SubmissionUnconfirmed."""
    settle = rt.settings.submission_settle_seconds
    SUBMISSION_FAILURES.labels(site, Reason.SUBMISSION_UNCONFIRMED).inc()
    message = (
        f"{what} at {site} gave no answer ({error}); looking for the job by its tag in "
        f"{settle} s before submitting again"
    )
    log.warning("session %s/%s: %s", session.namespace, session.name, message)
    patch = observe.status_patch(session.status, mark(message))
    if patch:
        await rt.kube.patch_session_status(session.namespace, session.name, patch)
    await asyncio.sleep(settle)
    found = await find()
    if found is None:
        raise SubmissionUnconfirmed(f"{message}: not found yet") from error
    return found


async def ensure_companion(
    rt: Runtime,
    session: SessionRef,
    status: NotebookSessionStatus,
    profiles: Mapping[str, NotebookProfileSpec],
    sites: Mapping[str, SiteView],
) -> NotebookSessionStatus:
    """For a PySpark profile, once the notebook's job is recorded: the status with its Spark
    cluster job, found by the companion tag (a crash after its sbatch) or submitted now, at the
    same site and as the same user. Raises like :func:`ensure_submitted`."""
    profile = profiles.get(session.spec.profile)
    site = sites.get(status.site or "")
    if (
        profile is None
        or profile.spark is None
        or site is None
        or status.job_id is None
        or (status.phase is not None and status.phase.is_terminal)
    ):
        return status
    now = dt.datetime.now(dt.UTC)
    spark = status.spark or SparkStatus()
    if spark.job_id is not None or spark.state == _REJECTED:
        return status
    tag = companion_job_name(rt.settings.installation_id, session.uid)
    user = session.spec.user
    client = rt.client(site.name, site.spec)
    identity = await rt.identity(site.name, site.spec, user, namespace=session.namespace)
    where = f"{session.namespace}/{session.name}"

    def recorded(job_id: int, adopted: bool) -> NotebookSessionStatus:
        log.info(
            "session %s: Spark cluster job %d (%s)",
            where,
            job_id,
            "adopted" if adopted else "submitted",
        )
        new = status.model_copy(update={"spark": spark.model_copy(update={"job_id": job_id})})
        return observe.with_spark(new, None, None, now=now, generation=session.generation)

    async def find() -> int | None:
        found = await client.queue(identity, names=[tag], users=[user])
        return next((e.job_id for e in found if e.name == tag), None)

    if observe.spark_unconfirmed_before(session.status):  # an answer was lost, maybe by a replica
        await asyncio.sleep(rt.settings.submission_settle_seconds)
    adopted = await find()
    if adopted is not None:
        return recorded(adopted, True)
    token = new_token()
    spark = spark.model_copy(update={"callback_token_sha256": digest(token)})
    waiting = status.model_copy(update={"spark": spark})
    patch = observe.status_patch(session.status, waiting)
    if patch:  # the digest is recorded before the job can exist (as for the notebook's job)
        await rt.kube.patch_session_status(session.namespace, session.name, patch)
    minutes = (status.time_limit_minutes or 0) + profile.spark.extra_minutes
    try:
        job_id = await client.submit(
            identity,
            spark_job_spec(tag, site, session, profile, max(1, minutes)),
            render_spark_script(spark_job(rt, session, site, profile, token)),
        )
    except SubmissionRejected as refusal:
        SUBMISSION_FAILURES.labels(site.name, Reason.SUBMISSION_REJECTED).inc()
        message = f"Slurm at {site.name} refused the Spark cluster job: {refusal.reason}"
        log.warning("session %s: %s", where, message)
        refused = waiting.model_copy(
            update={"spark": spark.model_copy(update={"state": _REJECTED})}
        )
        return observe.spark_rejected(refused, message, now=now, generation=session.generation)
    except SshError as error:
        if not may_have_run(error):
            raise

        def mark(message: str) -> NotebookSessionStatus:
            return observe.spark_unconfirmed(
                waiting, message, now=now, generation=session.generation
            )

        what = "sbatch of the Spark cluster job"
        return recorded(await answer_lost(rt, session, site.name, what, error, mark, find), True)
    SUBMISSIONS.labels(site.name).inc()
    failpoints.reached("after-spark-sbatch", job_id=job_id)
    return recorded(job_id, False)


# status.spark.state of a companion Slurm refused: not submitted again for this session.
_REJECTED = "Rejected"


class JobStillActive(Exception):
    """scancel was sent but the job has not ended yet."""


class SiteGone(Exception):
    """The session's job ran at a SlurmSite that no longer exists: nobody can cancel it here."""


# After an accepted scancel, how long the delete waits for Slurm to confirm the end before it
# reports "still ending" (a normal stop takes a second or two; waiting is progress, not an error).
CANCEL_CONFIRM_S = 15.0
CANCEL_CONFIRM_POLL_S = 0.5
# Jobs in COMPLETING have been told to stop: for a delete, they have ended.
_ENDING = frozenset({JobState.COMPLETING})


@dataclass(frozen=True)
class CancelPlan:
    """Where a deleted session's job may be, decided without any I/O."""

    sites: tuple[SiteView, ...]
    why_none: str = ""


def plan_cancel(
    status: NotebookSessionStatus,
    spec: NotebookSessionSpec,
    sites: Mapping[str, SiteView],
    protected: Collection[str],
) -> CancelPlan:
    """The sites to look for the job at: none when no job was ever submitted or its end is
    already known; raises SiteGone when the job's site was deleted."""
    if status.job_id is None and status.callback_token_sha256 is None:
        # The token digest is written before any sbatch: without it no job was ever submitted.
        return CancelPlan((), "no job was ever submitted")
    if status.job_id is None and status.phase == SessionPhase.INVALID_SPEC:
        return CancelPlan((), "refused before any job")
    companion_done = (
        status.spark is None
        or status.spark.job_id is None
        or (status.spark.state is not None and _ended_state(status.spark.state))
    )
    if status.job_id is not None and status.phase in _ENDED_PHASES and companion_done:
        return CancelPlan((), f"job {status.job_id} already ended ({status.phase})")
    site_name = status.site or (spec.site if spec.site != "auto" else None)
    if site_name and site_name not in sites:
        raise SiteGone(f"SlurmSite {site_name!r} no longer exists")
    candidates = [sites[site_name]] if site_name else list(sites.values())
    # We never submit as a refused user at a site, so we never log in as one there either.
    allowed = tuple(s for s in candidates if user_refusal(s, spec.user, protected) is None)
    return CancelPlan(allowed, "" if allowed else "no site where this user may run")


def _ended_state(state: str) -> bool:
    try:
        return JobState(state).is_terminal
    except ValueError:
        return False


# Phases whose job Slurm has reported ended (JobVanished is not one: the job may still run).
_ENDED_PHASES = frozenset({SessionPhase.COMPLETED, SessionPhase.CANCELLED, SessionPhase.TIMEOUT})


async def cancel(rt: Runtime, session: SessionRef, sites: Mapping[str, SiteView]) -> int | None:
    """Cancel the session's job and confirm that it ended. Returns the job id, if there was one.

    Looks the job up by tag when the status never recorded it (crash right after sbatch).
    Raises JobStillActive, SiteGone or the ssh layer's errors; the caller decides.
    """
    protected = protected_users(rt.settings.protected_users, sites.values())
    where = plan_cancel(session.status, session.spec, sites, protected)
    if not where.sites:
        log.info(
            "session %s/%s: nothing to cancel (%s)", session.namespace, session.name, where.why_none
        )
        return session.status.job_id
    # The notebook's job and its Spark cluster job (PySpark profiles) go together.
    tags = (
        job_name(rt.settings.installation_id, session.uid),
        companion_job_name(rt.settings.installation_id, session.uid),
    )
    for site in where.sites:
        client = rt.client(site.name, site.spec)
        identity = await rt.identity(
            site.name, site.spec, session.spec.user, namespace=session.namespace, for_cancel=True
        )
        found = await client.queue(identity, names=tags, users=[session.spec.user])
        active = {
            tag: [e.job_id for e in found if e.name == tag and not e.state.is_terminal]
            for tag in tags
        }
        if not any(active.values()):
            continue
        for tag, ids in active.items():
            if not ids:
                continue
            try:
                await client.cancel(identity, ids, name=tag, user=session.spec.user)
            except CommandFailed:
                pass  # it may have ended between the query and scancel; the query below decides
        every = [job_id for ids in active.values() for job_id in ids]
        await _confirm_ended(client, identity, every, site.name)
        return (active[tags[0]] or every)[0]
    return session.status.job_id


async def _confirm_ended(
    client: SlurmClient, identity: Identity, job_ids: list[int], site: str
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CANCEL_CONFIRM_S
    while True:
        after = await client.queue(identity, job_ids=job_ids)
        still = [e.job_id for e in after if not e.state.is_terminal and e.state not in _ENDING]
        if not still:
            return
        if loop.time() >= deadline:
            raise JobStillActive(f"job(s) {still} at {site} still ending")
        await asyncio.sleep(CANCEL_CONFIRM_POLL_S)
