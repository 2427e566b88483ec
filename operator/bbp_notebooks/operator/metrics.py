"""Prometheus metrics of the operator, in one registry served at /metrics, and the small
functions that publish what a poll, a report or a delete learnt.

Names and units follow Prometheus conventions (base units, ``_total`` counters,
``_timestamp_seconds`` for moments). Every label value is bounded: site names come from SlurmSite
objects, profiles only from sessions that were submitted (so validated), phases, condition types
and reasons from the enums of ``api``; nothing is copied from free text in a spec.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter as Tally
from collections.abc import Iterable
from typing import TYPE_CHECKING

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

from bbp_notebooks.api.models import (
    Condition,
    ConditionStatus,
    NotebookSessionStatus,
    SessionPhase,
    SlurmSiteStatus,
)
from bbp_notebooks.api.vocabulary import ConditionType, Reason

if TYPE_CHECKING:
    from bbp_notebooks.operator.sessions import SessionRef

# Every counter and histogram would also emit a `_created` series (one more series each, which
# Prometheus stores as a gauge and nobody queries): off, process-wide.
disable_created_metrics()  # type: ignore[no-untyped-call]

REGISTRY = CollectorRegistry(auto_describe=True)

SESSIONS = Gauge(
    "bbp_notebooks_sessions",
    "NotebookSessions by site, profile and phase.",
    ["site", "profile", "phase"],
    registry=REGISTRY,
)
SUBMISSIONS = Counter(
    "bbp_notebooks_submissions_total",
    "Slurm jobs submitted (adopted jobs are not counted).",
    ["site"],
    registry=REGISTRY,
)
SUBMISSION_FAILURES = Counter(
    "bbp_notebooks_submission_failures_total",
    "Sessions that could not be submitted, by reason.",
    ["site", "reason"],
    registry=REGISTRY,
)
CALLBACKS = Counter(
    "bbp_notebooks_endpoint_reports_total",
    "Endpoint reports from jobs, by outcome (Accepted or the refusal's reason).",
    ["outcome"],
    registry=REGISTRY,
)
USER_REFUSALS = Counter(
    "bbp_notebooks_user_refusals_total",
    "Sessions refused because of who they would run as, by site and reason.",
    ["site", "reason"],
    registry=REGISTRY,
)
_WAIT_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
QUEUE_WAIT = Histogram(
    "bbp_notebooks_queue_wait_seconds",
    "Time from submission to the job running.",
    ["site", "profile"],
    buckets=_WAIT_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_READY = Histogram(
    "bbp_notebooks_time_to_ready_seconds",
    "Time from session creation to the notebook endpoint being reported.",
    ["site", "profile"],
    buckets=_WAIT_BUCKETS,
    registry=REGISTRY,
)
RUNNING_TO_READY = Histogram(
    "bbp_notebooks_running_to_ready_seconds",
    "Time from the Slurm job running (its start as Slurm reports it, else when the operator "
    "first saw it run) to the notebook endpoint being reported: the notebook's own start-up.",
    ["site", "profile"],
    buckets=(0.5, 1, 2, 5, 10, 20, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
SLURM_COMMAND_SECONDS = Histogram(
    "bbp_notebooks_slurm_command_seconds",
    "Latency of Slurm commands over ssh.",
    ["site", "command"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
SLURM_COMMAND_ERRORS = Counter(
    "bbp_notebooks_slurm_command_errors_total",
    "Slurm commands that failed, by outcome.",
    ["site", "command", "outcome"],
    registry=REGISTRY,
)
SSH_CONNECTIONS = Gauge(
    "bbp_notebooks_ssh_connections", "Open pooled ssh connections.", registry=REGISTRY
)
SSH_CHANNELS = Gauge("bbp_notebooks_ssh_channels_in_use", "ssh channels in use.", registry=REGISTRY)
RECONCILE_ERRORS = Counter(
    "bbp_notebooks_reconcile_errors_total",
    "Errors in reconciliation, by handler and kind.",
    ["handler", "kind"],
    registry=REGISTRY,
)
POLL_SECONDS = Histogram(
    "bbp_notebooks_site_poll_seconds",
    "Duration of one site poll (Slurm commands, status computation and writes).",
    ["site"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
SITE_POLLS = Counter(
    "bbp_notebooks_site_polls_total",
    "Site polls, by outcome.",
    ["site", "outcome"],
    registry=REGISTRY,
)
DUPLICATES_CANCELLED = Counter(
    "bbp_notebooks_duplicate_jobs_cancelled_total",
    "Second tagged jobs of a live session, cancelled by the poll.",
    ["site"],
    registry=REGISTRY,
)
SQUEUE_ROWS_DROPPED = Counter(
    "bbp_notebooks_squeue_rows_dropped_total",
    "squeue records that did not read as one job (e.g. a job name forging a row) and were "
    "dropped, by site.",
    ["site"],
    registry=REGISTRY,
)


def observe_command(site: str, command: str, seconds: float, outcome: str) -> None:
    """Observer for the ssh layer: one call per Slurm command."""
    SLURM_COMMAND_SECONDS.labels(site, command).observe(seconds)
    if outcome != "ok":
        SLURM_COMMAND_ERRORS.labels(site, command, outcome).inc()


# Sites, from each poll's SlurmSite status (see publish_site) ----------------------------------

SITE_REACHABLE = Gauge(
    "bbp_notebooks_site_reachable",
    "1 when the site's last poll was answered, 0 when the site could not be asked.",
    ["site"],
    registry=REGISTRY,
)
SITE_LAST_POLL = Gauge(
    "bbp_notebooks_site_last_successful_poll_timestamp_seconds",
    "When the site last answered a poll (Unix time).",
    ["site"],
    registry=REGISTRY,
)
SITE_NODES = Gauge(
    "bbp_notebooks_site_partition_nodes",
    "Nodes in a partition (the last known sinfo).",
    ["site", "partition"],
    registry=REGISTRY,
)
SITE_IDLE_NODES = Gauge(
    "bbp_notebooks_site_partition_idle_nodes",
    "Nodes with nothing running in a partition (the last known sinfo).",
    ["site", "partition"],
    registry=REGISTRY,
)
SITE_CORES = Gauge(
    "bbp_notebooks_site_partition_cores",
    "Cores in a partition (the last known sinfo).",
    ["site", "partition"],
    registry=REGISTRY,
)
SITE_IDLE_CORES = Gauge(
    "bbp_notebooks_site_partition_idle_cores",
    "Unallocated cores in a partition (the last known sinfo).",
    ["site", "partition"],
    registry=REGISTRY,
)
SITE_JOBS = Gauge(
    "bbp_notebooks_site_jobs",
    "Jobs of every user in the site's queue, by state (pending, running).",
    ["site", "state"],
    registry=REGISTRY,
)
CREDENTIAL_EXPIRY = Gauge(
    "bbp_notebooks_site_credential_expiry_timestamp_seconds",
    "When the credential the site is polled with (the monitor user's) expires (Unix time); "
    "absent for credentials that do not expire.",
    ["site", "method"],
    registry=REGISTRY,
)
TICKET_EXPIRY = Gauge(
    "bbp_notebooks_site_earliest_ticket_expiry_timestamp_seconds",
    "When the first of the valid Kerberos tickets of a GSSAPI site's live sessions ends (Unix "
    "time), as the site's ticket check last saw them; absent when no session there holds a "
    "valid ticket. One series per site: which user's ticket it is stays in the sessions' "
    "CredentialsValid condition, not in a label.",
    ["site"],
    registry=REGISTRY,
)

# Sessions, from the session index after each poll (see publish_sessions) -----------------------

SESSION_CONDITIONS = Gauge(
    "bbp_notebooks_session_conditions",
    "NotebookSessions by site and by each condition's type, status and reason.",
    ["site", "condition", "status", "reason"],
    registry=REGISTRY,
)
OLDEST_SESSION = Gauge(
    "bbp_notebooks_oldest_session_creation_timestamp_seconds",
    "Creation time (Unix time) of the oldest session in each waiting phase (Pending, Queued, "
    "Running): how long the longest wait has been.",
    ["site", "phase"],
    registry=REGISTRY,
)
DELETIONS = Gauge(
    "bbp_notebooks_deletions_in_progress",
    "Sessions being deleted whose job's end is not confirmed yet (finalizer still held).",
    ["site"],
    registry=REGISTRY,
)
OLDEST_DELETION = Gauge(
    "bbp_notebooks_oldest_deletion_timestamp_seconds",
    "Deletion time (Unix time) of the oldest session whose finalizer is still held.",
    ["site"],
    registry=REGISTRY,
)

_WAITING_PHASES = (SessionPhase.PENDING, SessionPhase.QUEUED, SessionPhase.RUNNING)
_CONDITION_TYPES = frozenset(ConditionType)
_REASONS = frozenset(Reason)
_OTHER = "Other"  # a condition type or reason the operator does not write (hand-edited status)

# Partitions each site last published, so that a partition removed from a site loses its series.
_site_partitions: dict[str, set[str]] = {}


def publish_site(site: str, status: SlurmSiteStatus) -> None:
    """The site's gauges from the status its poll just computed. A site that did not answer
    keeps its last known partitions and queue (so does its status) and reads 0 as reachable."""
    reachable = next((c for c in status.conditions if c.type == ConditionType.REACHABLE), None)
    SITE_REACHABLE.labels(site).set(
        1 if reachable is not None and reachable.status == ConditionStatus.TRUE else 0
    )
    # Counters at zero from the first poll on, so that a site's first failure is an increase.
    SUBMISSIONS.labels(site)
    SUBMISSION_FAILURES.labels(site, Reason.SUBMISSION_REJECTED)
    if status.last_poll_time is not None:
        SITE_LAST_POLL.labels(site).set(status.last_poll_time.timestamp())
    seen = set()
    for partition in status.partitions:
        seen.add(partition.name)
        SITE_NODES.labels(site, partition.name).set(partition.total_nodes)
        SITE_IDLE_NODES.labels(site, partition.name).set(partition.idle_nodes)
        SITE_CORES.labels(site, partition.name).set(partition.total_cores)
        SITE_IDLE_CORES.labels(site, partition.name).set(partition.idle_cores)
    for gone in _site_partitions.get(site, set()) - seen:
        for gauge in (SITE_NODES, SITE_IDLE_NODES, SITE_CORES, SITE_IDLE_CORES):
            gauge.remove(site, gone)
    _site_partitions[site] = seen
    if status.pending_jobs is not None:
        SITE_JOBS.labels(site, "pending").set(status.pending_jobs)
    if status.running_jobs is not None:
        SITE_JOBS.labels(site, "running").set(status.running_jobs)


def observe_credential(site: str, method: str, valid_before: dt.datetime | None) -> None:
    """The expiry of the identity a site is polled with (certificates now; tickets too once a
    Kerberos identity carries its end time in ``Identity.valid_before``)."""
    if valid_before is None:
        _remove_site_series(CREDENTIAL_EXPIRY, site)
    else:
        CREDENTIAL_EXPIRY.labels(site, method).set(valid_before.timestamp())


def earliest_ticket_expiry(ends: Iterable[dt.datetime | None]) -> dt.datetime | None:
    """The first end among valid tickets (None entries: no valid ticket), or None."""
    return min((end for end in ends if end is not None), default=None)


def observe_ticket_expiry(site: str, earliest: dt.datetime | None) -> None:
    if earliest is None:
        _remove_site_series(TICKET_EXPIRY, site)
    else:
        TICKET_EXPIRY.labels(site).set(earliest.timestamp())


def forget_site(site: str) -> None:
    """Drop every per-site gauge of a site this replica no longer polls (deleted, or the poller
    stopped), so no stale value outlives it."""
    for gauge in (
        SITE_REACHABLE,
        SITE_LAST_POLL,
        SITE_NODES,
        SITE_IDLE_NODES,
        SITE_CORES,
        SITE_IDLE_CORES,
        SITE_JOBS,
        CREDENTIAL_EXPIRY,
        TICKET_EXPIRY,
    ):
        _remove_site_series(gauge, site)
    _site_partitions.pop(site, None)


def _remove_site_series(gauge: Gauge, site: str) -> None:
    for metric in gauge.collect():
        for sample in metric.samples:
            if sample.labels.get("site") == site:
                labels = [sample.labels[name] for name in gauge._labelnames]
                try:
                    gauge.remove(*labels)
                except KeyError:  # already removed (several samples of one child)
                    pass


def profile_label(session: SessionRef) -> str:
    """The profile as a label value: only once the session was submitted (the profile then
    exists), never the unchecked text of a spec that may be refused."""
    return session.spec.profile if session.status.site else ""


def publish_sessions(sessions: Iterable[SessionRef]) -> None:
    """Session gauges (by phase, by condition, oldest waiting) from the whole session index."""
    sessions = list(sessions)
    phases: Tally[tuple[str, str, str]] = Tally()
    conditions: Tally[tuple[str, str, str, str]] = Tally()
    oldest: dict[tuple[str, str], float] = {}
    for s in sessions:
        site = s.status.site or ""
        phase = s.status.phase or SessionPhase.PENDING
        phases[(site, profile_label(s), phase.value)] += 1
        for c in s.status.conditions:
            type_ = c.type if c.type in _CONDITION_TYPES else _OTHER
            reason = c.reason if c.reason in _REASONS else _OTHER
            conditions[(site, type_, c.status.value, reason)] += 1
        if s.status.site and phase in (SessionPhase.PENDING, SessionPhase.QUEUED):
            # The histograms' series exist (at zero) before the first observation, so that
            # rate() sees it as an increase.
            for histogram in (QUEUE_WAIT, TIME_TO_READY, RUNNING_TO_READY):
                histogram.labels(site, s.spec.profile)
        if phase in _WAITING_PHASES:
            key = (site, phase.value)
            oldest[key] = min(oldest.get(key, float("inf")), s.created.timestamp())
    for gauge, counts in ((SESSIONS, phases), (SESSION_CONDITIONS, conditions)):
        gauge.clear()
        for labels, count in counts.items():
            gauge.labels(*labels).set(count)
    OLDEST_SESSION.clear()
    for (site, waiting), moment in oldest.items():
        OLDEST_SESSION.labels(site, waiting).set(moment)
    live = {s.uid for s in sessions}
    _MILESTONES.keep(live)
    for uid in [uid for uid in _deleting if uid not in live]:
        del _deleting[uid]
    _publish_deletions()


class _Milestones:
    """Which (session, job) already counted its start and its readiness: a report and a poll
    may both see the same transition (the poll's index lags the report's write), and each must
    count once. Bounded by the sessions that exist (``keep``)."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[int | None, set[str]]] = {}

    def first(self, uid: str, job_id: int | None, milestone: str) -> bool:
        job, done = self._seen.get(uid, (job_id, set()))
        if job != job_id:  # a new job for the session (resubmitted): its own milestones
            done = set()
        if milestone in done:
            return False
        done.add(milestone)
        self._seen[uid] = (job_id, done)
        return True

    def keep(self, uids: set[str]) -> None:
        for uid in [uid for uid in self._seen if uid not in uids]:
            del self._seen[uid]


_MILESTONES = _Milestones()


def observe_session(
    session: SessionRef, new: NotebookSessionStatus, *, now: dt.datetime | None = None
) -> None:
    """Queue wait, time to ready and running-to-ready of a status just written for
    ``session`` (whose ``status`` is the one before). Each counts once per job."""
    now = now or dt.datetime.now(dt.UTC)
    site, profile = new.site or session.status.site or "", session.spec.profile
    if not site or new.phase not in (SessionPhase.RUNNING, SessionPhase.READY):
        return
    if _MILESTONES.first(session.uid, new.job_id, "started"):
        submitted = _condition(new, ConditionType.SUBMITTED)
        if submitted is not None and submitted.status == ConditionStatus.TRUE:
            QUEUE_WAIT.labels(site, profile).observe(
                max(0.0, (now - submitted.last_transition_time).total_seconds())
            )
    if new.phase == SessionPhase.READY and _MILESTONES.first(session.uid, new.job_id, "ready"):
        TIME_TO_READY.labels(site, profile).observe(
            max(0.0, (now - session.created).total_seconds())
        )
        running = _condition(new, ConditionType.RUNNING)
        began = new.start_time or (running.last_transition_time if running else None)
        if began is not None:
            RUNNING_TO_READY.labels(site, profile).observe(max(0.0, (now - began).total_seconds()))


def _condition(status: NotebookSessionStatus, type_: str) -> Condition | None:
    return next((c for c in status.conditions if c.type == type_), None)


# Deletions, from the delete handler ------------------------------------------------------------

_deleting: dict[str, tuple[str, float]] = {}  # uid -> (site, deletionTimestamp)


def deletion_started(session: SessionRef, deletion_timestamp: str | None) -> None:
    """The delete handler began (or retries) ending this session's job; ``deletion_timestamp``
    is the object's metadata.deletionTimestamp."""
    try:
        deleted = dt.datetime.fromisoformat((deletion_timestamp or "").replace("Z", "+00:00"))
    except ValueError:
        deleted = dt.datetime.now(dt.UTC)
    _deleting.setdefault(session.uid, (session.status.site or "", deleted.timestamp()))
    _publish_deletions()


def deletion_finished(session: SessionRef) -> None:
    """The session's finalizer is about to be released."""
    _deleting.pop(session.uid, None)
    _publish_deletions()


def _publish_deletions() -> None:
    counts: Tally[str] = Tally()
    oldest: dict[str, float] = {}
    for site, moment in _deleting.values():
        counts[site] += 1
        oldest[site] = min(oldest.get(site, moment), moment)
    DELETIONS.clear()
    OLDEST_DELETION.clear()
    for site in _site_partitions:  # zero, not absent, at every polled site
        DELETIONS.labels(site).set(0)
    for site, count in counts.items():
        DELETIONS.labels(site).set(count)
        OLDEST_DELETION.labels(site).set(oldest[site])
