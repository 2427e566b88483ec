"""From what Slurm reports about a job to the session's status. Pure and level-based."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from bbp_notebooks.api.models import (
    Condition,
    ConditionStatus,
    Endpoint,
    NotebookSessionStatus,
    QueueInfo,
    SessionPhase,
    dump,
)
from bbp_notebooks.api.vocabulary import ConditionType, Reason
from bbp_notebooks.operator.conditions import SESSION_CONDITIONS, ensure_all, get
from bbp_notebooks.operator.conditions import set_condition as _set
from bbp_notebooks.slurm.values import JobCategory, JobState

# How a job ended -> (phase, CamelCase reason). Which states count as ended is JobState's
# category (slurm/values.py); this only names each end.
ENDINGS: dict[JobState, tuple[SessionPhase, str]] = {
    JobState.COMPLETED: (SessionPhase.COMPLETED, Reason.JOB_COMPLETED),
    JobState.CANCELLED: (SessionPhase.CANCELLED, Reason.JOB_CANCELLED),
    JobState.TIMEOUT: (SessionPhase.TIMEOUT, Reason.JOB_TIME_LIMIT_REACHED),
    JobState.FAILED: (SessionPhase.FAILED, Reason.JOB_FAILED),
    JobState.NODE_FAIL: (SessionPhase.FAILED, Reason.NODE_FAIL),
    JobState.OUT_OF_MEMORY: (SessionPhase.FAILED, Reason.OUT_OF_MEMORY),
    JobState.BOOT_FAIL: (SessionPhase.FAILED, Reason.BOOT_FAIL),
    JobState.DEADLINE: (SessionPhase.FAILED, Reason.DEADLINE_REACHED),
    JobState.PREEMPTED: (SessionPhase.FAILED, Reason.PREEMPTED),
    JobState.REVOKED: (SessionPhase.FAILED, Reason.REVOKED),
}


@dataclass(frozen=True)
class JobObservation:
    """One job as squeue or sacct reported it."""

    job_id: int
    state: str
    reason: str | None = None
    node: str | None = None
    start_time: dt.datetime | None = None
    end_time: dt.datetime | None = None
    time_limit_minutes: int | None = None
    exit_code: int | None = None
    signal: int | None = None

    @property
    def category(self) -> JobCategory | None:
        """None for a state this version does not know (reported as UnrecognisedJobState)."""
        try:
            return JobState(self.state).category
        except ValueError:
            return None

    @property
    def terminal(self) -> bool:
        return self.category is JobCategory.ENDED


def initial(
    status: NotebookSessionStatus, *, now: dt.datetime, generation: int | None
) -> NotebookSessionStatus:
    """Conditions present from the first visit, as Unknown; phase Pending."""
    return status.model_copy(
        update={
            "phase": status.phase or SessionPhase.PENDING,
            "conditions": ensure_all(
                status.conditions, SESSION_CONDITIONS, now=now, generation=generation
            ),
            "observed_generation": generation,
        }
    )


def _conditioned(
    status: NotebookSessionStatus,
    *changes: Change,
    now: dt.datetime,
    generation: int | None,
    **update: object,
) -> NotebookSessionStatus:
    """``status`` with conditions set, each (type, status, reason, message), and ``update``."""
    status = initial(status, now=now, generation=generation)
    conditions = status.conditions
    for type_, value, reason, message in changes:
        conditions = _set(conditions, type_, value, reason, message, now=now, generation=generation)
    return status.model_copy(update={"conditions": conditions, **update})


def invalid(
    status: NotebookSessionStatus,
    reason: str,
    message: str,
    *,
    now: dt.datetime,
    generation: int | None,
) -> NotebookSessionStatus:
    return _conditioned(
        status,
        (ConditionType.SUBMITTED, False, reason, message),
        now=now,
        generation=generation,
        phase=SessionPhase.INVALID_SPEC,
        message=message,
    )


def submitted(
    status: NotebookSessionStatus,
    *,
    job_id: int,
    site: str,
    time_limit_minutes: int,
    adopted: bool,
    now: dt.datetime,
    generation: int | None,
) -> NotebookSessionStatus:
    status = initial(status, now=now, generation=generation)
    reason = Reason.EXISTING_JOB_ADOPTED if adopted else Reason.JOB_SUBMITTED
    message = f"Slurm job {job_id} at {site}"
    conditions = _set(
        status.conditions,
        ConditionType.SUBMITTED,
        True,
        reason,
        message,
        now=now,
        generation=generation,
    )
    conditions = _set(
        conditions,
        ConditionType.SITE_REACHABLE,
        True,
        Reason.SITE_ANSWERED,
        "",
        now=now,
        generation=generation,
    )
    phase = (
        status.phase if status.phase not in (None, SessionPhase.PENDING) else SessionPhase.QUEUED
    )
    return status.model_copy(
        update={
            "phase": phase,
            "conditions": conditions,
            "job_id": job_id,
            "site": site,
            "time_limit_minutes": time_limit_minutes,
            "message": message,
        }
    )


def rejected(
    status: NotebookSessionStatus, message: str, *, now: dt.datetime, generation: int | None
) -> NotebookSessionStatus:
    """Slurm refused the job: final, with Slurm's words, so the hub shows them at once."""
    return _conditioned(
        status,
        (ConditionType.SUBMITTED, False, Reason.SUBMISSION_REJECTED, message),
        (ConditionType.SITE_REACHABLE, True, Reason.SITE_ANSWERED, ""),
        now=now,
        generation=generation,
        phase=SessionPhase.FAILED,
        message=message,
    )


def placed(
    status: NotebookSessionStatus,
    site: str,
    shard: str,
    *,
    now: dt.datetime,
    generation: int | None,
) -> NotebookSessionStatus:
    """A ``site: auto`` session placed at a site another shard serves (shards.py): that
    shard submits it."""
    message = f"placed at {site} by shard {shard}; the shard of {site} submits the job"
    return _conditioned(
        status,
        (ConditionType.SUBMITTED, ConditionStatus.UNKNOWN, Reason.PLACED, message),
        now=now,
        generation=generation,
        site=site,
        message=message,
    )


def submission_unconfirmed(
    status: NotebookSessionStatus, message: str, *, now: dt.datetime, generation: int | None
) -> NotebookSessionStatus:
    """sbatch may have created a job whose id never reached us: not submitted, not refused;
    the job is looked for by its tag before anything is submitted again."""
    return _conditioned(
        status,
        (ConditionType.SUBMITTED, ConditionStatus.UNKNOWN, Reason.SUBMISSION_UNCONFIRMED, message),
        now=now,
        generation=generation,
        message=message,
    )


def unconfirmed(status: NotebookSessionStatus) -> bool:
    """A previous sbatch's answer was lost (perhaps by a replica that is gone)."""
    submitted = get(status.conditions, ConditionType.SUBMITTED)
    return submitted is not None and submitted.reason == Reason.SUBMISSION_UNCONFIRMED


def cannot_log_in(
    status: NotebookSessionStatus,
    reason: str,
    message: str,
    *,
    now: dt.datetime,
    generation: int | None,
) -> NotebookSessionStatus:
    """The frontend refused our login (LoginRefused) or showed a host key we do not trust
    (HostKeyMismatch): not an unreachable site, and not retried as one."""
    return _conditioned(
        status,
        (ConditionType.SITE_REACHABLE, False, reason, message),
        (ConditionType.SUBMITTED, False, reason, message),
        now=now,
        generation=generation,
        message=message,
    )


def admission_policy_missing(
    status: NotebookSessionStatus, message: str, *, now: dt.datetime, generation: int | None
) -> NotebookSessionStatus:
    """Not submitted, and not invalid: the operator waits until the admission policy is back."""
    return _conditioned(
        status,
        (ConditionType.SUBMITTED, False, Reason.ADMISSION_POLICY_MISSING, message),
        now=now,
        generation=generation,
        message=message,
    )


def site_unreachable(
    status: NotebookSessionStatus,
    message: str,
    *,
    now: dt.datetime,
    generation: int | None,
    reason: Reason = Reason.SITE_UNAVAILABLE,
) -> NotebookSessionStatus:
    """The site could not be asked (it did not answer, or the operator's own credentials for it
    cannot be read): keep the last known state, never read it as a failure."""
    return _conditioned(
        status,
        (ConditionType.SITE_REACHABLE, False, reason, message),
        now=now,
        generation=generation,
    )


Change = tuple[str, bool | ConditionStatus, str, str]  # condition type, status, reason, message


def observed(
    status: NotebookSessionStatus,
    job: JobObservation | None,
    *,
    endpoint: Endpoint | None,
    vanished: bool,
    now: dt.datetime,
    generation: int | None,
) -> NotebookSessionStatus:
    """The status after a successful poll. ``job`` is None when neither squeue nor sacct knew it;
    ``vanished`` says whether that absence is conclusive (past the grace period)."""
    status = initial(status, now=now, generation=generation)
    if status.phase is not None and status.phase.is_terminal:
        return status
    if job is None:
        changes, update = _absent(status, vanished, now) if vanished else ([], {})
    else:
        changes, update = _seen(status, job, endpoint, now)
    answered: Change = (ConditionType.SITE_REACHABLE, True, Reason.SITE_ANSWERED, "")
    return _conditioned(status, answered, *changes, now=now, generation=generation, **update)


Observation = tuple[list[Change], dict[str, object]]


def _absent(status: NotebookSessionStatus, vanished: bool, now: dt.datetime) -> Observation:
    message = f"Slurm job {status.job_id} is known to neither squeue nor sacct"
    changes: list[Change] = [
        (ConditionType.RUNNING, False, Reason.JOB_VANISHED, message),
        (ConditionType.READY, False, Reason.JOB_ENDED, message),
    ]
    return changes, {
        "phase": SessionPhase.FAILED,
        "message": message,
        "endpoint": None,
        "end_time": now,
    }


def _seen(
    status: NotebookSessionStatus, job: JobObservation, endpoint: Endpoint | None, now: dt.datetime
) -> Observation:
    if job.category is JobCategory.QUEUED:
        changes, update = _queued(job)
    elif job.category is JobCategory.RUNNING:
        changes, update = _running(status, job, endpoint)
    elif job.terminal:
        changes, update = _ended(status, job, now)
    else:
        state = (ConditionType.RUNNING, ConditionStatus.UNKNOWN, Reason.UNRECOGNISED_JOB_STATE)
        changes, update = [(*state, job.state)], {}
    if job.time_limit_minutes is not None:
        update["time_limit_minutes"] = job.time_limit_minutes
    return changes, update


def _queued(job: JobObservation) -> Observation:
    reason = job.reason or "None"
    changes: list[Change] = [
        (ConditionType.RUNNING, False, Reason.JOB_PENDING, f"waiting in queue: {reason}"),
        (ConditionType.READY, False, Reason.JOB_PENDING, ""),
    ]
    return changes, {
        "phase": SessionPhase.QUEUED,
        "queue": QueueInfo(reason=reason, estimated_start=job.start_time),
        "message": f"queued: {reason}",
    }


def _running(
    status: NotebookSessionStatus, job: JobObservation, endpoint: Endpoint | None
) -> Observation:
    node = job.node or None
    changes: list[Change] = [(ConditionType.RUNNING, True, Reason.JOB_RUNNING, f"on {node}")]
    update: dict[str, object] = {
        "node": node,
        "start_time": job.start_time or status.start_time,
        "queue": None,
    }
    if endpoint is not None:
        changes.append((ConditionType.READY, True, Reason.ENDPOINT_REPORTED, endpoint.url))
        update.update(
            phase=SessionPhase.READY, endpoint=endpoint, message=f"ready at {endpoint.url}"
        )
    else:
        starting = "the notebook server is starting"
        changes.append((ConditionType.READY, False, Reason.WAITING_FOR_ENDPOINT, starting))
        update.update(phase=SessionPhase.RUNNING, message=f"running on {node}, starting notebook")
    return changes, update


def _ended(status: NotebookSessionStatus, job: JobObservation, now: dt.datetime) -> Observation:
    phase, reason = ENDINGS[JobState(job.state)]
    message = f"Slurm job {job.job_id} ended {job.state}"
    if job.exit_code is not None and phase == SessionPhase.FAILED:
        signal = f", signal {job.signal}" if job.signal else ""
        message += f" (exit code {job.exit_code}{signal})"
    changes: list[Change] = [
        (ConditionType.RUNNING, False, reason, message),
        (ConditionType.READY, False, Reason.JOB_ENDED, message),
    ]
    return changes, {
        "phase": phase,
        "message": message,
        "endpoint": None,
        "queue": None,
        "node": job.node or status.node,
        "start_time": job.start_time or status.start_time,
        "end_time": job.end_time or now,
    }


def status_patch(old: NotebookSessionStatus, new: NotebookSessionStatus) -> dict[str, Any]:
    """The merge patch that turns ``old`` into ``new``: only fields that differ (a removed one
    as null). Empty when nothing changed, so a restart or a retry writes nothing."""
    before, after = dump(old), dump(new)
    patch: dict[str, Any] = {k: v for k, v in after.items() if before.get(k) != v}
    patch.update({k: None for k in before if k not in after})
    return patch


# --- the Spark cluster of a PySpark session (its companion job) --------------------------------


@dataclass(frozen=True)
class SparkReport:
    """What an accepted cluster report said (the callback), for the companion job ``job_id``."""

    job_id: int
    master_url: str
    ui_url: str
    workers: int


def spark_rejected(
    status: NotebookSessionStatus, message: str, *, now: dt.datetime, generation: int | None
) -> NotebookSessionStatus:
    """Slurm refused the Spark cluster job: SparkReady False with Slurm's words (the notebook
    job stays; Ready never becomes True)."""
    return _conditioned(
        status,
        (ConditionType.SPARK_READY, False, Reason.SUBMISSION_REJECTED, message),
        now=now,
        generation=generation,
        message=message,
    )


_SPARK_SUBMISSION_KNOWN = frozenset({Reason.SUBMISSION_REJECTED, Reason.SUBMISSION_UNCONFIRMED})
_BEFORE_SPARK_JOB_ID = frozenset({Reason.SPARK_JOB_NOT_SUBMITTED, Reason.SUBMISSION_UNCONFIRMED})


def spark_unconfirmed(
    status: NotebookSessionStatus, message: str, *, now: dt.datetime, generation: int | None
) -> NotebookSessionStatus:
    """The Spark cluster job's sbatch may have made a job whose id never reached us: SparkReady
    Unknown, and nothing is submitted again before the settle time and a look for its tag."""
    return _conditioned(
        status,
        (
            ConditionType.SPARK_READY,
            ConditionStatus.UNKNOWN,
            Reason.SUBMISSION_UNCONFIRMED,
            message,
        ),
        now=now,
        generation=generation,
        message=message,
    )


def spark_unconfirmed_before(status: NotebookSessionStatus) -> bool:
    """An earlier sbatch of the Spark cluster job lost its answer (maybe at a replica now gone)."""
    known = get(status.conditions, ConditionType.SPARK_READY)
    return (
        status.spark is not None
        and status.spark.job_id is None
        and known is not None
        and known.reason == Reason.SUBMISSION_UNCONFIRMED
    )


def with_spark(
    status: NotebookSessionStatus,
    companion: JobObservation | None,
    report: SparkReport | None,
    *,
    now: dt.datetime,
    generation: int | None,
    before: NotebookSessionStatus | None = None,
) -> NotebookSessionStatus:
    """``status`` with its Spark part and SparkReady set from the companion job as Slurm shows
    it (None: not seen in this poll, which changes nothing) and the cluster's report; Ready is
    True only while both the notebook and the cluster are. Sessions without a cluster pass.
    ``before``: the status before this poll's changes (keeps Ready's transition time)."""
    spark = status.spark
    if spark is None or (status.phase is not None and status.phase.is_terminal):
        return status
    if report is not None and report.job_id != spark.job_id:
        report = None
    if report is None and spark.master_url and spark.ui_url and spark.job_id is not None:
        report = SparkReport(
            spark.job_id, spark.master_url, spark.ui_url, spark.workers_registered or 0
        )
    update: dict[str, object] = {}
    known = get(status.conditions, ConditionType.SPARK_READY)
    if spark.job_id is None and known is not None and known.reason in _SPARK_SUBMISSION_KNOWN:
        return status  # refused, or answer lost: what the submitter wrote stands
    if spark.job_id is None:
        change: Change = (
            ConditionType.SPARK_READY,
            False,
            Reason.SPARK_JOB_NOT_SUBMITTED,
            "the Spark cluster job is not submitted yet",
        )
    elif companion is None or companion.job_id != spark.job_id:
        previous = get(status.conditions, ConditionType.SPARK_READY)
        # What stood before the job had an id says nothing of the job now.
        if previous is not None and previous.reason not in _BEFORE_SPARK_JOB_ID:
            change = (ConditionType.SPARK_READY, previous.status, previous.reason, previous.message)
        elif report is not None:  # not seen in this poll, but it reported: still up
            change = (
                ConditionType.SPARK_READY,
                True,
                Reason.SPARK_CLUSTER_REPORTED,
                f"{report.master_url} with {report.workers} workers, UI {report.ui_url}",
            )
        else:
            change = (
                ConditionType.SPARK_READY,
                False,
                Reason.SPARK_STARTING,
                f"Slurm job {spark.job_id} not seen yet",
            )
    elif companion.category is JobCategory.QUEUED:
        reason = companion.reason or "None"
        change = (
            ConditionType.SPARK_READY,
            False,
            Reason.SPARK_JOB_PENDING,
            f"Spark cluster job {spark.job_id} waiting in queue: {reason}",
        )
        update = {"state": companion.state, "reason": reason}
    elif companion.category is JobCategory.RUNNING:
        update = {"state": companion.state, "reason": None, "node": companion.node or spark.node}
        if report is not None:
            change = (
                ConditionType.SPARK_READY,
                True,
                Reason.SPARK_CLUSTER_REPORTED,
                f"{report.master_url} with {report.workers} workers, UI {report.ui_url}",
            )
            update.update(
                master_url=report.master_url,
                ui_url=report.ui_url,
                workers_registered=report.workers,
            )
        else:
            change = (
                ConditionType.SPARK_READY,
                False,
                Reason.SPARK_STARTING,
                f"Spark cluster job {spark.job_id} running on {companion.node}, "
                "waiting for its master and workers",
            )
    elif companion.terminal:
        message = f"Spark cluster job {spark.job_id} ended {companion.state}"
        if companion.exit_code is not None and companion.state != "COMPLETED":
            message += f" (exit code {companion.exit_code})"
        change = (ConditionType.SPARK_READY, False, Reason.SPARK_CLUSTER_ENDED, message)
        update = {"state": companion.state, "reason": None, "master_url": None}
    else:
        change = (
            ConditionType.SPARK_READY,
            ConditionStatus.UNKNOWN,
            Reason.UNRECOGNISED_JOB_STATE,
            companion.state,
        )
        update = {"state": companion.state}
    new_spark = spark.model_copy(update=update)
    status = _conditioned(status, change, now=now, generation=generation, spark=new_spark)
    previous = get((before or status).conditions, ConditionType.READY)
    return _ready_with_spark(status, previous, now=now, generation=generation)


def _ready_with_spark(
    status: NotebookSessionStatus,
    previous: Condition | None,
    *,
    now: dt.datetime,
    generation: int | None,
) -> NotebookSessionStatus:
    spark_ready = get(status.conditions, ConditionType.SPARK_READY)
    ready = get(status.conditions, ConditionType.READY)
    if spark_ready is None or ready is None:
        return status
    if spark_ready.status == ConditionStatus.TRUE:
        return status
    notebook_up = status.endpoint is not None and status.phase in (
        SessionPhase.READY,
        SessionPhase.RUNNING,
    )
    if not notebook_up:
        return status
    ended = spark_ready.reason == Reason.SPARK_CLUSTER_ENDED
    reason = Reason.SPARK_CLUSTER_ENDED if ended else Reason.WAITING_FOR_SPARK
    message = (
        f"{spark_ready.message}; the notebook still runs, without its cluster"
        if ended
        else f"the notebook is up, waiting for its Spark cluster: {spark_ready.message}"
    )
    new = _conditioned(
        status,
        (ConditionType.READY, False, reason, message),
        now=now,
        generation=generation,
        phase=SessionPhase.RUNNING,
        message=message,
    )
    if previous is not None and (previous.status, previous.reason, previous.message) == (
        ConditionStatus.FALSE,
        reason,
        message,
    ):  # unchanged since before this poll: its transition time stays
        conditions = [previous if c.type == ConditionType.READY else c for c in new.conditions]
        new = new.model_copy(update={"conditions": conditions})
    return new
