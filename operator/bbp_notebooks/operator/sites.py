"""One poll of one Slurm site: availability, every session's job, orphans. Cost is per site.

Each interval costs a constant number of Slurm commands whatever the number of sessions: one
sinfo, one squeue over the whole queue (filtered here by our job tag), and one sacct for the
sessions whose jobs left the queue. A failed command never reads as "job gone".
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import re
from collections import Counter
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from kubernetes_asyncio.client.exceptions import ApiException

from bbp_notebooks.api.constants import POSIX_USER_PATTERN
from bbp_notebooks.api.models import (
    Endpoint,
    NotebookSessionStatus,
    PartitionStatus,
    SessionPhase,
    SlurmSiteStatus,
    UserAccounts,
    dump,
)
from bbp_notebooks.operator import observe
from bbp_notebooks.operator.callbacks import FIRST_UNPRIVILEGED_PORT, allowed_hosts
from bbp_notebooks.operator.conditions import ConditionType, get, set_condition
from bbp_notebooks.operator.metrics import (
    QUEUE_WAIT,
    RECONCILE_ERRORS,
    SESSIONS,
    SITE_POLLS,
    SQUEUE_ROWS_DROPPED,
    TIME_TO_READY,
)
from bbp_notebooks.operator.planning import SiteView, protected_users, session_uid
from bbp_notebooks.operator.runtime import CredentialsUnavailable, Runtime
from bbp_notebooks.operator.sessions import SessionRef
from bbp_notebooks.slurm.commands import AccountingEntry, QueueEntry
from bbp_notebooks.slurm.values import JobState
from bbp_notebooks.ssh import CommandFailed, Identity, SlurmClient, SshError

log = logging.getLogger(__name__)


@dataclass
class PollState:
    """What a site's poller remembers between polls (only caches; truth is in Slurm and the API)."""

    polls: int = 0
    version: str | None = None
    associations: dict[str, list[str]] | None = None
    last_phase: dict[str, SessionPhase | None] = field(default_factory=dict)


def localised(moment: dt.datetime | None, zone: ZoneInfo) -> dt.datetime | None:
    """Slurm prints the controller's local time without an offset; attach the site's zone."""
    if moment is None or moment.tzinfo is not None:
        return moment
    return moment.replace(tzinfo=zone)


def from_queue(entry: QueueEntry, zone: ZoneInfo) -> observe.JobObservation:
    return observe.JobObservation(
        job_id=entry.job_id,
        state=entry.state.value,
        reason=entry.reason,
        node=entry.nodes,
        start_time=localised(entry.start_time, zone),
        time_limit_minutes=entry.time_limit_s // 60 if entry.time_limit_s is not None else None,
    )


def from_accounting(entry: AccountingEntry, zone: ZoneInfo) -> observe.JobObservation:
    return observe.JobObservation(
        job_id=entry.job_id,
        state=entry.state.value,
        node=entry.nodes,
        start_time=localised(entry.start, zone),
        end_time=localised(entry.end, zone),
        exit_code=entry.exit_code,
        signal=entry.signal,
    )


def endpoint_for(rt: Runtime, session: SessionRef) -> Endpoint | None:
    reported = rt.endpoints.get(session.uid)
    if reported is not None and reported[0] == session.status.job_id:
        return reported[1]
    return session.status.endpoint


def vanished(session: SessionRef, now: dt.datetime, grace: dt.timedelta) -> bool:
    submitted = get(session.status.conditions, ConditionType.SUBMITTED)
    return submitted is not None and now - submitted.last_transition_time > grace


def site_status(
    previous: SlurmSiteStatus,
    *,
    reachable: bool,
    message: str,
    now: dt.datetime,
    generation: int | None,
    partitions: list[PartitionStatus] | None = None,
    queue: Iterable[QueueEntry] = (),
    version: str | None = None,
    associations: dict[str, list[str]] | None = None,
    default_partition: str | None = None,
) -> SlurmSiteStatus:
    conditions = set_condition(
        previous.conditions,
        ConditionType.REACHABLE,
        reachable,
        "Polled" if reachable else "SiteUnavailable",
        message,
        now=now,
        generation=generation,
    )
    if not reachable:
        return previous.model_copy(
            update={"conditions": conditions, "observed_generation": generation}
        )
    states = Counter(entry.state for entry in queue)
    parts = partitions or []
    return SlurmSiteStatus(
        conditions=conditions,
        partitions=parts,
        # Sessions run in the default partition; partitions share nodes, so no sum.
        idle_nodes=next((p.idle_nodes for p in parts if p.name == default_partition), 0),
        pending_jobs=states[JobState.PENDING],
        running_jobs=states[JobState.RUNNING] + states[JobState.COMPLETING],
        slurm_version=version or previous.slurm_version,
        user_accounts=[
            UserAccounts(user=user, accounts=accounts)
            for user, accounts in sorted((associations or {}).items())
        ]
        if associations is not None
        else previous.user_accounts,
        last_poll_time=now,
        observed_generation=generation,
    )


async def _write_session(
    rt: Runtime, state: PollState, session: SessionRef, new: NotebookSessionStatus, site: str
) -> None:
    if dump(new) == dump(session.status):
        return
    try:
        await rt.kube.patch_session_status(session.namespace, session.name, dump(new))
    except ApiException as error:  # one bad write must not starve the site's other sessions
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
        profile = session.spec.profile
        if new.phase == SessionPhase.RUNNING or (
            new.phase == SessionPhase.READY and old_phase != SessionPhase.RUNNING
        ):
            submitted = get(session.status.conditions, ConditionType.SUBMITTED)
            if submitted is not None:
                QUEUE_WAIT.labels(site, profile).observe(
                    (dt.datetime.now(dt.UTC) - submitted.last_transition_time).total_seconds()
                )
        if new.phase == SessionPhase.READY:
            TIME_TO_READY.labels(site, profile).observe(
                (dt.datetime.now(dt.UTC) - session.created).total_seconds()
            )
    state.last_phase[session.uid] = new.phase


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
    state: PollState,
    site: str,
    changes: list[tuple[SessionRef, NotebookSessionStatus]],
) -> None:
    gate = asyncio.Semaphore(WRITE_CONCURRENCY)

    async def write(session: SessionRef, new: NotebookSessionStatus) -> None:
        async with gate:
            await _write_session(rt, state, session, new, site)

    await asyncio.gather(*(write(s, n) for s, n in changes if dump(n) != dump(s.status)))


async def poll_once(
    rt: Runtime,
    site: SiteView,
    generation: int | None,
    sessions: list[SessionRef],
    state: PollState,
) -> SlurmSiteStatus:
    """Poll ``site`` once and write what changed. Returns the site's new status."""
    now = dt.datetime.now(dt.UTC)
    client = rt.client(site.name, site.spec)
    active = [
        s
        for s in sessions
        if s.status.job_id is not None and not (s.status.phase and s.status.phase.is_terminal)
    ]
    try:
        identity = await rt.identity(site.name, site.spec, site.spec.monitor_user)
        availability = await client.partitions(identity)
        if state.version is None or state.polls % 20 == 0:
            state.version = await client.version(identity)
            state.associations = await _associations(client, identity, site.name)
        listing = await client.queue_all(identity)
        if listing.dropped:
            SQUEUE_ROWS_DROPPED.labels(site.name).inc(listing.dropped)
            log.warning("site %s: %d unreadable squeue records dropped", site.name, listing.dropped)
        queue = listing.entries
        tagged = {
            uid: e
            for e in queue
            if (uid := session_uid(e.name, rt.settings.installation_id)) is not None
        }
        ask_accounting = [
            s.status.job_id
            for s in active
            if s.status.job_id is not None
            and (s.uid not in tagged or tagged[s.uid].state.is_terminal)
        ]
        accounting = (
            {e.job_id: e for e in await client.accounting(identity, ask_accounting)}
            if ask_accounting
            else {}
        )
    except (SshError, CredentialsUnavailable) as error:
        SITE_POLLS.labels(site.name, type(error).__name__).inc()
        message = str(error)
        log.warning("site %s unreachable: %s", site.name, message)
        unreachable = [
            (s, observe.site_unreachable(s.status, message, now=now, generation=s.generation))
            for s in active
        ]
        await _write_all(rt, state, site.name, unreachable)
        return site_status(
            site.status, reachable=False, message=message, now=now, generation=generation
        )

    SITE_POLLS.labels(site.name, "ok").inc()
    zone = ZoneInfo(site.spec.time_zone)
    state.polls += 1
    grace = dt.timedelta(seconds=max(60, 3 * site.spec.poll_interval_seconds))
    changes = []
    for session in active:
        entry = tagged.get(session.uid)
        job: observe.JobObservation | None
        if (
            entry is not None
            and entry.job_id == session.status.job_id
            and not entry.state.is_terminal
        ):
            job = from_queue(entry, zone)
        elif session.status.job_id in accounting:
            job = from_accounting(accounting[session.status.job_id], zone)
        elif entry is not None and entry.job_id == session.status.job_id:
            job = from_queue(
                entry, zone
            )  # ended, not yet in accounting: squeue's final state will do
        else:
            job = None
        new = observe.observed(
            session.status,
            job,
            endpoint=endpoint_for(rt, session),
            vanished=job is None and vanished(session, now, grace),
            now=now,
            generation=session.generation,
        )
        changes.append((session, new))
    if site.spec.connection_file_fallback:
        changes = [(s, await _endpoint_fallback(rt, site, s, new, now)) for s, new in changes]
    await _write_all(rt, state, site.name, changes)

    if (
        state.polls % rt.settings.orphan_sweep_every_polls == 1
        or rt.settings.orphan_sweep_every_polls == 1
    ):
        await sweep_orphans(rt, site, tagged, {s.uid for s in sessions})

    partitions = [
        PartitionStatus(
            name=p.name,
            idle_nodes=p.nodes_idle,
            total_nodes=p.nodes_total,
            idle_cores=p.cpus_idle,
            total_cores=p.cpus_total,
        )
        for p in availability
    ]
    return site_status(
        site.status,
        reachable=True,
        message="",
        now=now,
        generation=generation,
        partitions=partitions,
        queue=queue,
        version=state.version,
        associations=state.associations,
        default_partition=site.default_partition,
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


def orphan_candidates(
    tagged: dict[str, QueueEntry],
    known: set[str],
    *,
    now: dt.datetime,
    grace: dt.timedelta,
    zone: ZoneInfo,
    protected: Collection[str] = frozenset(),
) -> dict[str, QueueEntry]:
    """Tagged, unfinished jobs of no known session that were submitted more than ``grace`` ago.

    A job whose age squeue does not tell (no submit time) is never a candidate: when in doubt,
    leave the job running. Slurm prints whole seconds, truncated, so a job counts as submitted
    at the end of the second it shows. A job of a ``protected`` user is never ours (we never
    submit as one), so the sweep never logs in as one."""
    candidates = {}
    for uid, entry in tagged.items():
        submitted = localised(entry.submit_time, zone)
        if uid in known or entry.state.is_terminal or submitted is None:
            continue
        submitted += dt.timedelta(seconds=1)
        if (
            now - submitted > grace
            and re.match(POSIX_USER_PATTERN, entry.user)
            and entry.user not in protected
        ):
            candidates[uid] = entry
    return candidates


async def sweep_orphans(
    rt: Runtime, site: SiteView, tagged: dict[str, QueueEntry], known: set[str]
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
    for uid, entry in candidates.items():
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


def publish_session_gauge(sessions: Iterable[SessionRef]) -> None:
    counts = Counter(
        (s.status.site or "", s.spec.profile, (s.status.phase or SessionPhase.PENDING).value)
        for s in sessions
    )
    SESSIONS.clear()
    for (site, profile, phase), count in counts.items():
        SESSIONS.labels(site, profile, phase).set(count)
