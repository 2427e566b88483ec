"""One poll of one Slurm site: gather (Slurm commands -> a Snapshot), reconcile (pure, in
reconcile.py), apply (status writes, Events, metrics, the orphan sweep). Cost is per site.

Each interval costs a constant number of Slurm commands whatever the number of sessions: one
sinfo, one squeue over the whole queue (filtered by our job tag), and one sacct for the sessions
whose jobs left the queue; only a job the monitor cannot see is asked about as its owner. A
failed command never reads as "job gone".
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import logging
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from zoneinfo import ZoneInfo

from kubernetes_asyncio.client.exceptions import ApiException

from bbp_notebooks.api.constants import POSIX_USER_PATTERN
from bbp_notebooks.api.models import (
    Endpoint,
    NotebookProfileSpec,
    NotebookSessionStatus,
    SessionPhase,
    SlurmSiteStatus,
)
from bbp_notebooks.api.vocabulary import ConditionType, Reason
from bbp_notebooks.operator import metrics, observe, reconcile, timelimit
from bbp_notebooks.operator.callbacks import FIRST_UNPRIVILEGED_PORT, allowed_hosts
from bbp_notebooks.operator.conditions import get
from bbp_notebooks.operator.metrics import (
    DUPLICATES_CANCELLED,
    RECONCILE_ERRORS,
    SITE_POLLS,
    SQUEUE_ROWS_DROPPED,
)
from bbp_notebooks.operator.planning import SiteView, protected_users
from bbp_notebooks.operator.runtime import CredentialsUnavailable, Runtime
from bbp_notebooks.operator.sessions import SessionRef
from bbp_notebooks.slurm.commands import QueueEntry
from bbp_notebooks.ssh import CommandFailed, Identity, SlurmClient, SshError

log = logging.getLogger(__name__)


@dataclass
class PollState:
    """What a site's poller remembers between polls (only caches; truth is in Slurm and the API)."""

    polls: int = 0
    version: str | None = None
    associations: dict[str, list[str]] | None = None
    # Sessions whose last decision changed nothing, with what it was made from (skipped while
    # none of it moves; reconcile.Unchanged).
    unchanged: Mapping[str, reconcile.Unchanged] = dataclasses.field(default_factory=dict)


def endpoints_known(rt: Runtime, sessions: Iterable[SessionRef]) -> dict[str, Endpoint]:
    """Endpoints this replica accepted for the sessions' current jobs (status may lag them)."""
    known = {}
    for session in sessions:
        reported = rt.endpoints.get(session.uid)
        if reported is not None and reported[0] == session.status.job_id:
            known[session.uid] = reported[1]
    return known


async def _write_session(
    rt: Runtime, session: SessionRef, new: NotebookSessionStatus, site: str
) -> None:
    if new is session.status:
        return
    # Only the fields that changed: a full status from an index that lags would write back
    # other writers' fields as they were (and costs a third dump and more bytes per write).
    patch = observe.status_patch(session.status, new)
    if not patch:
        return
    try:
        await rt.kube.patch_session_status(session.namespace, session.name, patch)
    except ApiException as error:  # one bad write must not starve the site's other sessions
        if error.status == 404:  # deleted since the poll began: nothing left to tell
            log.info("session %s/%s is gone; its status was not written", session.namespace,
                     session.name)  # fmt: skip
            return
        RECONCILE_ERRORS.labels("write_status", str(error.status)).inc()
        log.error("status of %s/%s not written: %s", session.namespace, session.name, error.body)
        return
    old_phase = session.status.phase
    if new.phase != old_phase:
        await rt.kube.event(
            session.involved,
            reason=(new.phase or SessionPhase.PENDING).value,
            message=new.message or "",
            type_="Warning" if new.phase == SessionPhase.FAILED else "Normal",
        )
        metrics.observe_session(session, new)
    told = timelimit.event_for(session.status, new)
    if told is not None:
        type_, reason, message = told
        await rt.kube.event(session.involved, reason=reason, message=message, type_=type_)


async def _endpoint_fallback(
    rt: Runtime, site: SiteView, session: SessionRef, new: NotebookSessionStatus, now: dt.datetime
) -> NotebookSessionStatus:
    """The status with the endpoint from the job's connection file, when the callback never came.

    One command per such session, and only for jobs running a minute without an endpoint: the
    callback is the normal path, so this stays rare."""
    running = get(new.conditions, ConditionType.RUNNING)
    if (
        new.phase != SessionPhase.RUNNING
        or new.job_id is None
        or running is None
        or (now - running.last_transition_time).total_seconds()
        < rt.settings.endpoint_fallback_after_seconds
    ):
        return new
    try:
        identity = await rt.identity(site.name, site.spec, session.spec.user)
        found = await rt.client(site.name, site.spec).read_connection(identity, session.uid)
    except (SshError, CredentialsUnavailable) as error:
        log.warning("connection file of session %s unreadable: %s", session.uid, error)
        return new
    if found is None or found.job_id != new.job_id:
        return new
    # The file is the user's to write: it gets the same checks as a callback report.
    if (
        not new.node
        or found.host not in allowed_hosts(site.spec, new.node)
        or found.port < FIRST_UNPRIVILEGED_PORT
    ):
        log.warning(
            "session %s: connection file names %s:%d, not an address of node %s; ignored",
            session.uid,
            found.host,
            found.port,
            new.node,
        )
        return new
    endpoint = Endpoint(host=found.host, port=found.port, url=f"http://{found.host}:{found.port}")
    rt.endpoints[session.uid] = (found.job_id, endpoint)
    log.info("session %s: endpoint %s read from its connection file", session.uid, endpoint.url)
    job = observe.JobObservation(job_id=found.job_id, state="RUNNING", node=new.node)
    return observe.observed(
        new, job, endpoint=endpoint, vanished=False, now=now, generation=session.generation
    )


# Status writes of one poll go out concurrently, but boundedly: many sessions change at once
# after an outage or a burst of submissions, and the API server has its own limits.
WRITE_CONCURRENCY = 16


async def _write_all(
    rt: Runtime,
    site: str,
    changes: list[tuple[SessionRef, NotebookSessionStatus]],
) -> None:
    gate = asyncio.Semaphore(WRITE_CONCURRENCY)

    async def write(session: SessionRef, new: NotebookSessionStatus) -> None:
        async with gate:
            await _write_session(rt, session, new, site)

    await asyncio.gather(*(write(s, n) for s, n in changes if n is not s.status))


async def gather(
    rt: Runtime, site: SiteView, sessions: list[SessionRef], state: PollState
) -> reconcile.Snapshot:
    """The site-wide Slurm commands of one poll, as the monitor user; raises when the site cannot
    be asked. sinfo, one squeue, and sacct only for jobs that left the queue."""
    now = dt.datetime.now(dt.UTC)
    client = rt.client(site.name, site.spec)
    identity = await rt.identity(site.name, site.spec, site.spec.monitor_user)
    metrics.observe_credential(site.name, site.spec.auth.method.value, identity.valid_before)
    availability = await client.partitions(identity)
    if state.version is None or state.polls % 20 == 0:
        state.version = await client.version(identity)
        state.associations = await _associations(client, identity, site.name)
    listing = await client.queue_all(identity)
    if listing.dropped:
        SQUEUE_ROWS_DROPPED.labels(site.name).inc(listing.dropped)
        log.warning("site %s: %d unreadable squeue records dropped", site.name, listing.dropped)
    tagged = reconcile.tagged_jobs(listing.entries, rt.settings.installation_id)
    ask = reconcile.needs_accounting(sessions, tagged)
    accounting = {e.job_id: e for e in await client.accounting(identity, ask)} if ask else {}
    return reconcile.Snapshot(
        now=now,
        partitions=tuple(availability),
        queue=tuple(listing.entries),
        accounting=accounting,
        version=state.version,
        associations=state.associations,
    )


async def owner_view(
    rt: Runtime, site: SiteView, sessions: Iterable[SessionRef], zone: ZoneInfo
) -> dict[int, observe.JobObservation | None]:
    """Jobs the monitor cannot see, asked as their owners (squeue -j, then sacct -j). A job the
    owner cannot be asked about is left out: unconfirmed, so it does not end."""
    seen: dict[int, observe.JobObservation | None] = {}
    for session in sessions:
        job_id = session.status.job_id
        if job_id is None:
            continue
        try:
            identity = await rt.identity(site.name, site.spec, session.spec.user)
            client = rt.client(site.name, site.spec)
            queued = [
                e for e in await client.queue(identity, job_ids=[job_id]) if e.job_id == job_id
            ]
            if queued:
                seen[job_id] = reconcile.from_queue(queued[0], zone)
                continue
            ended = [e for e in await client.accounting(identity, [job_id]) if e.job_id == job_id]
            seen[job_id] = reconcile.from_accounting(ended[0], zone) if ended else None
        except (SshError, CredentialsUnavailable) as error:
            log.warning("job %d at %s: its owner could not be asked: %s", job_id, site.name, error)
    return seen


async def poll_once(
    rt: Runtime,
    site: SiteView,
    generation: int | None,
    sessions: list[SessionRef],
    state: PollState,
    profiles: Mapping[str, NotebookProfileSpec] | None = None,
) -> SlurmSiteStatus:
    """Poll ``site`` once (gather, reconcile, apply) and write what changed. Returns the site's
    new status. ``profiles`` bound extensions (a session's maxTimeLimitMinutes)."""
    looked_at = reconcile.active(sessions)
    try:
        snapshot = await gather(rt, site, looked_at, state)
    except (SshError, CredentialsUnavailable) as error:
        return await _unreachable(rt, site, generation, looked_at, error)
    SITE_POLLS.labels(site.name, "ok").inc()
    state.polls += 1
    settings = reconcile.Settings(
        installation_id=rt.settings.installation_id,
        zone=ZoneInfo(site.spec.time_zone),
        grace=dt.timedelta(
            seconds=max(rt.settings.missing_job_grace_seconds, 3 * site.spec.poll_interval_seconds)
        ),
        default_partition=site.default_partition,
        duplicate_grace=dt.timedelta(seconds=rt.settings.orphan_grace_seconds),
        warning_lead=dt.timedelta(minutes=rt.settings.warning_lead_minutes),
    )
    endpoints = endpoints_known(rt, looked_at)
    reports = rt.spark_reports
    result = reconcile.reconcile(
        snapshot, site.status, generation, sessions, endpoints, settings, reports, state.unchanged
    )
    if result.confirm:  # follow-up reads, then decide again with what the owners saw
        seen = await owner_view(rt, site, result.confirm, settings.zone)
        snapshot = dataclasses.replace(snapshot, owner_view=seen)
        result = reconcile.reconcile(
            snapshot, site.status, generation, sessions, endpoints, settings, reports,
            state.unchanged,
        )  # fmt: skip
    state.unchanged = result.unchanged
    if result.degraded:
        visible = get(result.site.conditions, ConditionType.JOBS_VISIBLE)
        log.warning("site %s: %s", site.name, visible.message if visible else "degraded")
    await apply(rt, state, site, result, sessions, snapshot.now, profiles or {})
    return result.site


async def _unreachable(
    rt: Runtime,
    site: SiteView,
    generation: int | None,
    looked_at: list[SessionRef],
    error: Exception,
) -> SlurmSiteStatus:
    """The site could not be asked: say so on every active session, keep their last state."""
    now = dt.datetime.now(dt.UTC)
    SITE_POLLS.labels(site.name, type(error).__name__).inc()
    message = str(error)
    reason = reason_for(error)
    if reason == Reason.CREDENTIALS_UNAVAILABLE:  # ours to fix, not the site's: say so loudly
        log.error("site %s: the operator's credentials are unusable: %s", site.name, message)
    else:
        log.warning("site %s unreachable: %s", site.name, message)
    unreachable = [
        (
            s,
            observe.site_unreachable(
                s.status, message, now=now, generation=s.generation, reason=reason
            ),
        )
        for s in looked_at
    ]
    await _write_all(rt, site.name, unreachable)
    return reconcile.site_status(
        site.status, reachable=False, message=message, now=now, generation=generation, reason=reason
    )


def reason_for(error: Exception) -> Reason:
    """Why a site could not be asked: its own failure, or our credentials for it."""
    if isinstance(error, CredentialsUnavailable):
        return Reason.CREDENTIALS_UNAVAILABLE
    return Reason.SITE_UNAVAILABLE


async def apply(
    rt: Runtime,
    state: PollState,
    site: SiteView,
    result: reconcile.PollResult,
    sessions: list[SessionRef],
    now: dt.datetime,
    profiles: Mapping[str, NotebookProfileSpec] | None = None,
) -> None:
    """Write what changed (with Events and metrics) and sweep for orphans when it is time."""
    changes = list(result.sessions)
    if site.spec.connection_file_fallback:
        changes = [(s, await _endpoint_fallback(rt, site, s, new, now)) for s, new in changes]
    changes = [
        (s, await extend(rt, site, s, new, profiles or {}, now, reconcile.ours(s, result.tagged)))
        for s, new in changes
    ]
    changes = [(s, await read_log_tail(rt, site, s, new)) for s, new in changes]
    changes = [(s, await read_spark_log_tail(rt, site, s, new)) for s, new in changes]
    await _write_all(rt, site.name, changes)
    if result.duplicates:
        await cancel_duplicates(rt, site, result.duplicates)
    every = rt.settings.orphan_sweep_every_polls
    if every == 1 or state.polls % every == 1:
        await sweep_orphans(rt, site, result.tagged, {s.uid for s in sessions})


async def extend(
    rt: Runtime,
    site: SiteView,
    session: SessionRef,
    new: NotebookSessionStatus,
    profiles: Mapping[str, NotebookProfileSpec],
    now: dt.datetime,
    queued: QueueEntry | None,
) -> NotebookSessionStatus:
    """Carry out a request for more time (spec.resources.timeLimitMinutes above the job's
    limit): the policy decides (timelimit.extension), then the partition's MaxTime, then Slurm,
    asked as the site's adminUser. Any refusal is TimeLimit=False ExtensionRefused."""
    profile = profiles.get(session.spec.profile)
    requested = session.spec.resources.time_limit_minutes if session.spec.resources else None
    decision = timelimit.extension(
        requested,
        new,
        profile_max=profile.max_time_limit_minutes if profile else None,
        admin_user=site.spec.admin_user,
        generation=session.generation,
    )
    if decision is None:
        return new
    generation = session.generation
    if isinstance(decision, timelimit.Refuse):
        return timelimit.refused(new, decision.message, now=now, generation=generation)
    admin = site.spec.admin_user
    assert admin is not None and new.job_id is not None  # noqa: S101 - extension() checked
    client = rt.client(site.name, site.spec)
    try:
        identity = await rt.identity(site.name, site.spec, admin)
        partition = (queued.partition if queued else None) or site.default_partition
        too_long = timelimit.within_partition(
            decision.minutes, partition, await client.partition_max_time(identity, partition)
        )
        if too_long is not None:
            return timelimit.refused(new, too_long.message, now=now, generation=generation)
        await client.set_time_limit(identity, new.job_id, decision.minutes)
    except CommandFailed as error:  # Slurm's answer: refused, with its words
        log.info("session %s: extension refused by Slurm: %s", session.uid, error.stderr)
        return timelimit.refused(
            new, error.stderr.strip() or str(error), now=now, generation=generation
        )
    except (SshError, CredentialsUnavailable) as error:  # could not ask: try again next poll
        log.warning("session %s: extension not asked yet: %s", session.uid, error)
        return new
    log.info("session %s: job %d time limit raised to %d min", session.uid, new.job_id,
             decision.minutes)  # fmt: skip
    return timelimit.extended(new, decision.minutes, now=now, generation=generation)


async def read_log_tail(
    rt: Runtime, site: SiteView, session: SessionRef, new: NotebookSessionStatus
) -> NotebookSessionStatus:
    """Once a job failed or ended early, the tail of its output file, read as the user (the
    path from scontrol while slurmctld still knows the job, else Slurm's default
    slurm-<id>.out in the home directory), into status.logTail and the message."""
    if not timelimit.wants_log(session.status, new) or new.job_id is None:
        return new
    user = session.spec.user
    client = rt.client(site.name, site.spec)
    try:
        identity = await rt.identity(site.name, site.spec, user, namespace=session.namespace)
        shown = await client.show_job(identity, new.job_id)
        path = (shown or {}).get("StdOut") or f"slurm-{new.job_id}.out"
        raw = await client.output_tail(identity, path, timelimit.LOG_TAIL_BYTES)
    except (SshError, CredentialsUnavailable, ValueError) as error:
        log.info("session %s: job output not read: %s", session.uid, error)
        return new
    tail = timelimit.log_tail(raw)
    if not tail:
        return new
    last = tail.splitlines()[-5:]
    message = (new.message or "") + "; last output:\n" + "\n".join(last)
    return new.model_copy(update={"log_tail": tail, "message": message[-4096:]})


async def read_spark_log_tail(
    rt: Runtime, site: SiteView, session: SessionRef, new: NotebookSessionStatus
) -> NotebookSessionStatus:
    """Once a PySpark session's cluster job ended while the session lives, the tail of its
    output into status.spark.logTail and the message (read once, as the user)."""
    spark = new.spark
    ended = get(new.conditions, ConditionType.SPARK_READY)
    if (
        spark is None
        or spark.job_id is None
        or spark.log_tail is not None
        or ended is None
        or ended.reason != Reason.SPARK_CLUSTER_ENDED
    ):
        return new
    client = rt.client(site.name, site.spec)
    try:
        identity = await rt.identity(site.name, site.spec, session.spec.user,
                                     namespace=session.namespace)  # fmt: skip
        shown = await client.show_job(identity, spark.job_id)
        path = (shown or {}).get("StdOut") or f"slurm-{spark.job_id}.out"
        raw = await client.output_tail(identity, path, timelimit.LOG_TAIL_BYTES)
    except (SshError, CredentialsUnavailable, ValueError) as error:
        log.info("session %s: Spark job output not read: %s", session.uid, error)
        return new
    tail = timelimit.log_tail(raw) or "(no output)"
    last = "\n".join(tail.splitlines()[-5:])
    message = ((new.message or "") + "; the cluster's last output:\n" + last)[-4096:]
    return new.model_copy(
        update={"spark": spark.model_copy(update={"log_tail": tail}), "message": message}
    )


async def _associations(
    client: SlurmClient, identity: Identity, site: str
) -> dict[str, list[str]] | None:
    """Users' accounts, or None where the site keeps no association table (no slurmdbd)."""
    try:
        return await client.associations(identity)
    except CommandFailed as error:
        log.info("site %s lists no associations: %s", site, error)
        return None


async def cancel_duplicates(
    rt: Runtime, site: SiteView, found: Iterable[tuple[SessionRef, QueueEntry]]
) -> list[int]:
    """Cancel second jobs of live sessions (as their owner, restricted to tag and owner), with
    a Warning Event on the session: only the job in status is the session's."""
    cancelled = []
    for session, entry in found:
        try:
            identity = await rt.identity(site.name, site.spec, entry.user)
            await rt.client(site.name, site.spec).cancel(
                identity, [entry.job_id], name=entry.name, user=entry.user
            )
        except (SshError, CredentialsUnavailable) as error:
            log.warning(
                "could not cancel duplicate job %d at %s: %s", entry.job_id, site.name, error
            )
            continue
        cancelled.append(entry.job_id)
        DUPLICATES_CANCELLED.labels(site.name).inc()
        message = (
            f"cancelled job {entry.job_id}, a second job carrying this session's tag (the "
            f"session's job is {session.status.job_id})"
        )
        log.warning("session %s/%s: %s", session.namespace, session.name, message)
        await rt.kube.event(
            session.involved,
            reason=Reason.DUPLICATE_JOB_CANCELLED,
            message=message,
            type_="Warning",
        )
    return cancelled


def orphan_candidates(
    tagged: Mapping[str, tuple[QueueEntry, ...]],
    known: set[str],
    *,
    now: dt.datetime,
    grace: dt.timedelta,
    zone: ZoneInfo,
    protected: Collection[str] = frozenset(),
) -> list[tuple[str, QueueEntry]]:
    """Tagged, unfinished jobs of no known session that were submitted more than ``grace`` ago.

    A job whose age squeue does not tell (no submit time) is never a candidate: when in doubt,
    leave the job running. Slurm prints whole seconds, truncated, so a job counts as submitted
    at the end of the second it shows. A job of a ``protected`` user is never ours (we never
    submit as one), so the sweep never logs in as one."""
    candidates = []
    for uid, entries in tagged.items():
        for entry in entries:
            submitted = reconcile.localised(entry.submit_time, zone)
            if uid in known or entry.state.is_terminal or submitted is None:
                continue
            submitted += dt.timedelta(seconds=1)
            if (
                now - submitted > grace
                and re.match(POSIX_USER_PATTERN, entry.user)
                and entry.user not in protected
            ):
                candidates.append((uid, entry))
    return candidates


async def sweep_orphans(
    rt: Runtime, site: SiteView, tagged: Mapping[str, tuple[QueueEntry, ...]], known: set[str]
) -> list[int]:
    """Cancel tagged jobs whose session no longer exists. The index only nominates candidates;
    the API server, read now, decides, so a session created a moment ago is never mistaken.

    Only our installation's exact tags are in ``tagged``; a job younger than the orphan grace is
    left alone; and scancel is restricted to the tag and the owner squeue printed, so even a
    record naming somebody else's job id can only ever cancel a job of that tag and owner."""
    candidates = orphan_candidates(
        tagged,
        known,
        now=dt.datetime.now(dt.UTC),
        grace=dt.timedelta(seconds=rt.settings.orphan_grace_seconds),
        zone=ZoneInfo(site.spec.time_zone),
        protected=protected_users(rt.settings.protected_users, [site]),
    )
    if not candidates:
        return []
    existing = await rt.kube.session_uids()
    cancelled = []
    for uid, entry in candidates:
        if uid in existing:
            continue
        try:
            identity = await rt.identity(site.name, site.spec, entry.user)
            await rt.client(site.name, site.spec).cancel(
                identity, [entry.job_id], name=entry.name, user=entry.user
            )
            cancelled.append(entry.job_id)
            log.warning(
                "cancelled orphan job %d (session %s is gone) at %s", entry.job_id, uid, site.name
            )
        except (SshError, CredentialsUnavailable) as error:
            log.warning("could not cancel orphan job %d at %s: %s", entry.job_id, site.name, error)
    return cancelled
