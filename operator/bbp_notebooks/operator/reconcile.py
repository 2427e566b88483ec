"""One site poll's decisions, as a pure function of what Slurm said (a Snapshot), the sessions,
the endpoints jobs reported, the clock and the settings. No clients, no I/O: sites.py gathers
the snapshot before and applies the result after.

Which source decides a job's state, in order: the monitor's squeue while the job is queued or
running; sacct once it left the queue (the authority on how it ended); squeue's final state while
sacct has not caught up; what the job's owner sees (squeue -j / sacct -j as the user) when the
monitor sees nothing. A job is "vanished" only when the owner's view, asked now, knows it neither.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from zoneinfo import ZoneInfo

from bbp_notebooks.api.models import (
    Condition,
    Endpoint,
    NotebookSessionStatus,
    PartitionStatus,
    SlurmSiteStatus,
    UserAccounts,
    dump,
)
from bbp_notebooks.api.vocabulary import ConditionType, Reason
from bbp_notebooks.operator import observe, timelimit
from bbp_notebooks.operator.conditions import get, set_condition
from bbp_notebooks.operator.planning import tagged_session
from bbp_notebooks.operator.sessions import SessionRef
from bbp_notebooks.slurm.commands import AccountingEntry, PartitionAvailability, QueueEntry
from bbp_notebooks.slurm.values import JobState

# The circuit breaker: when at least this many sessions, and more than this share of a site's
# active sessions, go missing from the monitor's view in one poll, the view is what is broken
# (a partition hidden, PrivateData switched on, slurmdbd behind): the site is marked, no session
# is confirmed one by one, none ends.
BREAKER_MIN_MISSING = 3
BREAKER_SHARE = 0.5


@dataclass(frozen=True)
class Snapshot:
    """What one poll learnt from a site (immutable; plain data)."""

    now: dt.datetime
    partitions: tuple[PartitionAvailability, ...]
    queue: tuple[QueueEntry, ...]
    accounting: Mapping[int, AccountingEntry]
    version: str | None = None
    associations: dict[str, list[str]] | None = None
    # Jobs the monitor could not see, as their owner saw them when asked: an observation, or
    # None when the owner's squeue and sacct both answered that no such job exists.
    owner_view: Mapping[int, observe.JobObservation | None] = field(default_factory=dict)


@dataclass(frozen=True)
class Settings:
    installation_id: str
    zone: ZoneInfo
    grace: dt.timedelta  # how long after submission a job may be absent before it is looked for
    default_partition: str
    # How old a second tagged job of a live session must be before it is cancelled (the same
    # rule as for orphans: a job submitted a moment ago may still be adopted).
    duplicate_grace: dt.timedelta = dt.timedelta(minutes=5)
    # How long before a running job's end its session is warned (TimeLimit EndingSoon).
    warning_lead: dt.timedelta = dt.timedelta(minutes=15)


@dataclass(frozen=True)
class Unchanged:
    """What a session's last decision was made from, when it changed nothing: the same inputs
    decide the same nothing again, so the next poll skips the decision (0.5 ms of pydantic per
    session) for a session whose Slurm row, status and reports did not move.

    Only a decision that the clock alone cannot change is remembered: a job the monitor sees
    (a missing one waits on the grace period), and, while it runs with a limit, only until the
    TimeLimit warning is due (``until``). ``status`` is compared by identity: the index parses a
    new status for every change of the object, so the same object is the same status."""

    status: NotebookSessionStatus
    generation: int | None
    job: observe.JobObservation
    companion: observe.JobObservation | None
    endpoint: Endpoint | None
    report: observe.SparkReport | None
    lead: dt.timedelta
    until: dt.datetime | None

    def holds(
        self,
        session: SessionRef,
        job: observe.JobObservation | None,
        companion: observe.JobObservation | None,
        endpoint: Endpoint | None,
        report: observe.SparkReport | None,
        settings: Settings,
        now: dt.datetime,
    ) -> bool:
        return (
            self.status is session.status
            and self.generation == session.generation
            and self.job == job
            and self.companion == companion
            and self.endpoint == endpoint
            and self.report == report
            and self.lead == settings.warning_lead
            and (self.until is None or now < self.until)
        )


@dataclass(frozen=True)
class PollResult:
    """What to write and do after a poll."""

    # Every active session with its new status: the very same object as before when nothing
    # changed (so applying it costs no comparison).
    sessions: tuple[tuple[SessionRef, NotebookSessionStatus], ...]
    site: SlurmSiteStatus
    tagged: Mapping[str, tuple[QueueEntry, ...]]  # our installation's queued jobs, by session
    confirm: tuple[SessionRef, ...]  # missing from the monitor's view: ask their owners
    degraded: bool
    # Unfinished tagged jobs of existing sessions that are not the session's job (a lost sbatch
    # answer resubmitted, a handover): cancel them, as their owner, restricted to the tag.
    duplicates: tuple[tuple[SessionRef, QueueEntry], ...] = ()
    # What the next poll may skip deciding again, by session uid (see Unchanged).
    unchanged: Mapping[str, Unchanged] = field(default_factory=dict)


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


def active(sessions: Iterable[SessionRef]) -> list[SessionRef]:
    """Sessions with a job whose end is not known yet: the ones a poll looks at."""
    return [
        s
        for s in sessions
        if s.status.job_id is not None and not (s.status.phase and s.status.phase.is_terminal)
    ]


def tagged_jobs(
    queue: Iterable[QueueEntry], installation_id: str
) -> dict[str, tuple[QueueEntry, ...]]:
    """Our installation's jobs in the queue, by the session uid their tag names: a session's
    notebook job and, for a PySpark profile, its companion (more of either is a duplicate)."""
    found: dict[str, list[QueueEntry]] = {}
    for entry in queue:
        tag = tagged_session(entry.name, installation_id)
        if tag is not None:
            found.setdefault(tag[0], []).append(entry)
    return {uid: tuple(entries) for uid, entries in found.items()}


def is_companion(entry: QueueEntry, installation_id: str) -> bool:
    tag = tagged_session(entry.name, installation_id)
    return tag is not None and tag[1]


def ours(session: SessionRef, tagged: Mapping[str, tuple[QueueEntry, ...]]) -> QueueEntry | None:
    """The queue's entry for the session's own job (tag and job id both match)."""
    return next((e for e in tagged.get(session.uid, ()) if e.job_id == session.status.job_id), None)


def companion_id(session: SessionRef) -> int | None:
    spark = session.status.spark
    return spark.job_id if spark is not None else None


def companion(
    session: SessionRef, tagged: Mapping[str, tuple[QueueEntry, ...]]
) -> QueueEntry | None:
    """The queue's entry for the session's Spark cluster job (its id as status records it)."""
    job_id = companion_id(session)
    if job_id is None:
        return None
    return next((e for e in tagged.get(session.uid, ()) if e.job_id == job_id), None)


def needs_accounting(
    sessions: Iterable[SessionRef], tagged: Mapping[str, tuple[QueueEntry, ...]]
) -> list[int]:
    """Job ids to ask sacct about: those that left the queue, or ended in it (the notebook's
    and the companion's)."""
    ids = []
    for s in active(sessions):
        if s.status.job_id is not None and ((e := ours(s, tagged)) is None or e.state.is_terminal):
            ids.append(s.status.job_id)
        spark_id = companion_id(s)
        if spark_id is not None and ((c := companion(s, tagged)) is None or c.state.is_terminal):
            ids.append(spark_id)
    return ids


def duplicates(
    sessions: Iterable[SessionRef],
    tagged: Mapping[str, tuple[QueueEntry, ...]],
    *,
    now: dt.datetime,
    grace: dt.timedelta,
    zone: ZoneInfo,
    installation_id: str,
) -> tuple[tuple[SessionRef, QueueEntry], ...]:
    """Unfinished tagged jobs of a session that are not its job: a session whose job is
    recorded (or that ended without one) owns exactly that job, and likewise for its companion
    tag (a recorded companion, or none when the session has no cluster). The companion of a
    session that ended is cancelled at once: its notebook is gone. A session still being
    submitted is left to adopt what it finds; a job of another user than the session's, or
    younger than ``grace`` (or of unknown age), is left alone."""
    found = []
    for session in sessions:
        ended = session.status.phase is not None and session.status.phase.is_terminal
        spark = session.status.spark
        for entry in tagged.get(session.uid, ()):
            if is_companion(entry, installation_id):
                settled = ended or spark is None or spark.job_id is not None
                owned = spark.job_id if spark is not None else None
            else:
                settled = ended or session.status.job_id is not None
                owned = session.status.job_id
            if not settled or entry.state.is_terminal or entry.user != session.spec.user:
                continue
            if ended and entry.job_id == owned and is_companion(entry, installation_id):
                # The notebook ended: its cluster has nobody to serve; no adoption can race it.
                found.append((session, entry))
                continue
            submitted = localised(entry.submit_time, zone)
            if (
                entry.job_id != owned
                and submitted is not None
                and now - (submitted + dt.timedelta(seconds=1)) > grace
            ):
                found.append((session, entry))
    return tuple(found)


def companion_of(
    session: SessionRef,
    snapshot: Snapshot,
    tagged: Mapping[str, tuple[QueueEntry, ...]],
    zone: ZoneInfo,
) -> observe.JobObservation | None:
    """The companion job as the queue or sacct shows it (None: not seen; never read as gone)."""
    job_id = companion_id(session)
    entry = companion(session, tagged)
    if entry is not None and not entry.state.is_terminal:
        return from_queue(entry, zone)
    if job_id is not None and job_id in snapshot.accounting:
        return from_accounting(snapshot.accounting[job_id], zone)
    return from_queue(entry, zone) if entry is not None else None


def job_of(
    session: SessionRef,
    snapshot: Snapshot,
    tagged: Mapping[str, tuple[QueueEntry, ...]],
    zone: ZoneInfo,
) -> observe.JobObservation | None:
    """The best observation of the session's job, by the order in the module docstring."""
    job_id = session.status.job_id
    entry = ours(session, tagged)
    if entry is not None and not entry.state.is_terminal:
        return from_queue(entry, zone)
    if job_id is None:
        return None
    if job_id in snapshot.accounting:
        return from_accounting(snapshot.accounting[job_id], zone)
    if entry is not None:  # ended, not yet in accounting: squeue's final state will do
        return from_queue(entry, zone)
    return snapshot.owner_view.get(job_id)


def overdue(session: SessionRef, now: dt.datetime, grace: dt.timedelta) -> bool:
    """Submitted longer ago than ``grace``: a job this old must be visible somewhere."""
    submitted = get(session.status.conditions, ConditionType.SUBMITTED)
    return submitted is not None and now - submitted.last_transition_time > grace


def reconcile(
    snapshot: Snapshot,
    previous_site: SlurmSiteStatus,
    site_generation: int | None,
    sessions: Iterable[SessionRef],
    endpoints: Mapping[str, Endpoint],
    settings: Settings,
    spark_reports: Mapping[str, observe.SparkReport] | None = None,
    unchanged: Mapping[str, Unchanged] | None = None,
) -> PollResult:
    """The new status of every active session and of the site, after a poll that answered.
    ``sessions`` are all the site's sessions (ended ones too: they may have a duplicate);
    ``unchanged``: the previous poll's PollResult.unchanged (decisions that need not be made
    again)."""
    reports = spark_reports or {}
    sessions = list(sessions)
    now = snapshot.now
    looked_at = active(sessions)
    tagged = tagged_jobs(snapshot.queue, settings.installation_id)
    jobs = {s.uid: job_of(s, snapshot, tagged, settings.zone) for s in looked_at}
    missing = [
        s
        for s in looked_at
        if jobs[s.uid] is None
        and overdue(s, now, settings.grace)
        and s.status.job_id not in snapshot.owner_view
    ]
    degraded = len(missing) >= BREAKER_MIN_MISSING and len(missing) > BREAKER_SHARE * len(looked_at)
    known = unchanged or {}
    changes: list[tuple[SessionRef, NotebookSessionStatus]] = []
    remembered: dict[str, Unchanged] = {}
    for s in looked_at:
        job = jobs[s.uid]
        spark_job = companion_of(s, snapshot, tagged, settings.zone)
        endpoint = endpoints.get(s.uid, s.status.endpoint)
        report = reports.get(s.uid)
        last = known.get(s.uid)
        if last is not None and last.holds(s, job, spark_job, endpoint, report, settings, now):
            changes.append((s, s.status))
            remembered[s.uid] = last
            continue
        new = observe.with_spark(
            decide(s, job, snapshot, endpoints, settings),
            spark_job,
            report,
            now=now,
            generation=s.generation,
            before=s.status,
        )
        if dump(new) != dump(s.status):
            changes.append((s, new))
            continue
        changes.append((s, s.status))
        if job is not None:
            end = timelimit.expected_end(s.status)
            until = end - settings.warning_lead if end is not None else None
            remembered[s.uid] = Unchanged(
                s.status, s.generation, job, spark_job, endpoint, report, settings.warning_lead,
                until,
            )  # fmt: skip
    return PollResult(
        sessions=tuple(changes),
        site=_answered(
            snapshot, previous_site, site_generation, settings, len(missing) if degraded else 0
        ),
        tagged=tagged,
        confirm=() if degraded else tuple(missing),
        degraded=degraded,
        duplicates=duplicates(
            sessions,
            tagged,
            now=now,
            grace=settings.duplicate_grace,
            zone=settings.zone,
            installation_id=settings.installation_id,
        ),
        unchanged=remembered,
    )


def decide(
    session: SessionRef,
    job: observe.JobObservation | None,
    snapshot: Snapshot,
    endpoints: Mapping[str, Endpoint],
    settings: Settings,
) -> NotebookSessionStatus:
    """One session's new status. Gone only when the owner, asked now, knows the job neither in
    the queue nor in sacct."""
    gone = (
        job is None
        and session.status.job_id in snapshot.owner_view
        and overdue(session, snapshot.now, settings.grace)
    )
    new = observe.observed(
        session.status,
        job,
        endpoint=endpoints.get(session.uid, session.status.endpoint),
        vanished=gone,
        now=snapshot.now,
        generation=session.generation,
    )
    return timelimit.with_time_left(
        new, now=snapshot.now, lead=settings.warning_lead, generation=session.generation
    )


def _answered(
    snapshot: Snapshot,
    previous: SlurmSiteStatus,
    generation: int | None,
    settings: Settings,
    missing: int,
) -> SlurmSiteStatus:
    return site_status(
        previous,
        reachable=True,
        message="",
        now=snapshot.now,
        generation=generation,
        partitions=[partition_status(p) for p in snapshot.partitions],
        queue=snapshot.queue,
        version=snapshot.version,
        associations=snapshot.associations,
        default_partition=settings.default_partition,
        missing=missing,
    )


def partition_status(p: PartitionAvailability) -> PartitionStatus:
    return PartitionStatus(
        name=p.name,
        idle_nodes=p.nodes_idle,
        total_nodes=p.nodes_total,
        idle_cores=p.cpus_idle,
        total_cores=p.cpus_total,
    )


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
    missing: int = 0,
    reason: Reason = Reason.SITE_UNAVAILABLE,
) -> SlurmSiteStatus:
    conditions = set_condition(
        previous.conditions,
        ConditionType.REACHABLE,
        reachable,
        Reason.POLLED if reachable else reason,
        message,
        now=now,
        generation=generation,
    )
    if not reachable:
        return previous.model_copy(
            update={"conditions": conditions, "observed_generation": generation}
        )
    conditions = _jobs_visible(conditions, missing, now, generation)
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


def _jobs_visible(
    conditions: list[Condition], missing: int, now: dt.datetime, generation: int | None
) -> list[Condition]:
    message = (
        f"{missing} sessions' jobs are missing from the monitor's view at once: the view is "
        "suspect (hidden partition, PrivateData, accounting lag); no session is ended for it"
    )
    return set_condition(
        conditions,
        ConditionType.JOBS_VISIBLE,
        not missing,
        Reason.MANY_JOBS_MISSING if missing else Reason.ALL_JOBS_VISIBLE,
        message if missing else "",
        now=now,
        generation=generation,
    )
