"""Slurm's printed values (job states, durations, timestamps, exit codes) read into Python."""

from __future__ import annotations

import datetime as dt
import enum
import re


class SlurmOutputError(ValueError):
    """Slurm printed something we do not understand; never guess what it meant."""


class JobState(enum.Enum):
    """A job's state as squeue (%T) and sacct (State) print it, with Slurm's aliases folded in."""

    PENDING = "PENDING"
    CONFIGURING = "CONFIGURING"
    RUNNING = "RUNNING"
    RESIZING = "RESIZING"
    SUSPENDED = "SUSPENDED"
    STOPPED = "STOPPED"
    COMPLETING = "COMPLETING"
    SIGNALING = "SIGNALING"
    STAGE_OUT = "STAGE_OUT"
    REQUEUED = "REQUEUED"
    REQUEUE_HOLD = "REQUEUE_HOLD"
    REQUEUE_FED = "REQUEUE_FED"
    RESV_DEL_HOLD = "RESV_DEL_HOLD"
    SPECIAL_EXIT = "SPECIAL_EXIT"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"
    OUT_OF_MEMORY = "OUT_OF_MEMORY"
    PREEMPTED = "PREEMPTED"
    BOOT_FAIL = "BOOT_FAIL"
    DEADLINE = "DEADLINE"
    REVOKED = "REVOKED"

    @property
    def category(self) -> JobCategory:
        """Queued, running or ended: the one place that sorts Slurm's states."""
        return _CATEGORY[self]

    @property
    def is_terminal(self) -> bool:
        """The job has ended and will not run again (Slurm's IS_JOB_FINISHED, plus REVOKED)."""
        return self.category is JobCategory.ENDED

    @property
    def is_active(self) -> bool:
        """The job holds, or waits for, resources (it counts against the one-server rule)."""
        return not self.is_terminal


class JobCategory(enum.Enum):
    QUEUED = "queued"  # waiting for resources, held, requeued: no node to reach yet
    RUNNING = "running"  # allocated: running, suspended, ending
    ENDED = "ended"  # finished for good


_CATEGORY: dict[JobState, JobCategory] = {
    **dict.fromkeys(
        (
            JobState.PENDING,
            JobState.CONFIGURING,  # nodes booting for it
            JobState.REQUEUED,
            JobState.REQUEUE_HOLD,
            JobState.REQUEUE_FED,
            JobState.RESV_DEL_HOLD,
            JobState.SPECIAL_EXIT,  # requeued and held after a special exit code
        ),
        JobCategory.QUEUED,
    ),
    **dict.fromkeys(
        (
            JobState.RUNNING,
            JobState.RESIZING,
            JobState.SUSPENDED,
            JobState.STOPPED,
            JobState.COMPLETING,
            JobState.SIGNALING,
            JobState.STAGE_OUT,
        ),
        JobCategory.RUNNING,
    ),
    **dict.fromkeys(
        (
            JobState.COMPLETED,
            JobState.FAILED,
            JobState.CANCELLED,
            JobState.TIMEOUT,
            JobState.NODE_FAIL,
            JobState.OUT_OF_MEMORY,
            JobState.PREEMPTED,
            JobState.BOOT_FAIL,
            JobState.DEADLINE,
            JobState.REVOKED,
        ),
        JobCategory.ENDED,
    ),
}

# Short codes (squeue %t) and spellings that older/newer Slurm versions print.
_STATE_ALIASES = {
    "PD": JobState.PENDING,
    "CF": JobState.CONFIGURING,
    "R": JobState.RUNNING,
    "RS": JobState.RESIZING,
    "S": JobState.SUSPENDED,
    "ST": JobState.STOPPED,
    "CG": JobState.COMPLETING,
    "SI": JobState.SIGNALING,
    "SO": JobState.STAGE_OUT,
    "RQ": JobState.REQUEUED,
    "RH": JobState.REQUEUE_HOLD,
    "RF": JobState.REQUEUE_FED,
    "RD": JobState.RESV_DEL_HOLD,
    "SE": JobState.SPECIAL_EXIT,
    "CD": JobState.COMPLETED,
    "F": JobState.FAILED,
    "CA": JobState.CANCELLED,
    "TO": JobState.TIMEOUT,
    "NF": JobState.NODE_FAIL,
    "OOM": JobState.OUT_OF_MEMORY,
    "PR": JobState.PREEMPTED,
    "BF": JobState.BOOT_FAIL,
    "DL": JobState.DEADLINE,
    "RV": JobState.REVOKED,
    "COMPLETE": JobState.COMPLETED,
    "CANCELED": JobState.CANCELLED,
}


def parse_state(text: str) -> JobState:
    """Read a job state: "RUNNING", "CANCELLED by 1000" (sacct), "CD", "PENDING+" (truncated)."""
    word = text.strip().split(" ", 1)[0].rstrip("+").upper()
    try:
        return JobState(word)
    except ValueError:
        pass
    try:
        return _STATE_ALIASES[word]
    except KeyError:
        raise SlurmOutputError(f"unknown Slurm job state {text!r}") from None


_DURATION = re.compile(
    r"^(?:(?P<days>\d+)-)?(?:(?P<hours>\d+):)?(?P<minutes>\d+):(?P<seconds>\d+)$"
)
_NO_DURATION = frozenset({"UNLIMITED", "INFINITE", "N/A", "INVALID", "NOT_SET", "NONE", ""})


def parse_duration(text: str) -> int | None:
    """Seconds from Slurm's [D-]HH:MM:SS or MM:SS; None for UNLIMITED, N/A, INVALID, NOT_SET.

    None means "no finite value"; it is never 0 in disguise.
    """
    value = text.strip()
    if value.upper() in _NO_DURATION:
        return None
    match = _DURATION.match(value)
    if match is None:
        raise SlurmOutputError(f"not a Slurm duration: {text!r}")
    days = int(match["days"] or 0)
    hours = int(match["hours"] or 0)
    if match["days"] is not None and match["hours"] is None:
        # "D-HH:MM" is never printed, but "1-02:03" must not silently read as minutes.
        raise SlurmOutputError(f"ambiguous Slurm duration: {text!r}")
    return ((days * 24 + hours) * 60 + int(match["minutes"])) * 60 + int(match["seconds"])


_NO_TIMESTAMP = frozenset({"N/A", "UNKNOWN", "NONE", ""})


def parse_timestamp(text: str) -> dt.datetime | None:
    """A naive datetime in the site's local time from "2026-11-25T10:00:00"; None for N/A/Unknown.

    Slurm prints local time of the frontend without a zone, so the result is naive on purpose:
    compare it only with other timestamps from the same site.
    """
    value = text.strip()
    if value.upper() in _NO_TIMESTAMP:
        return None
    try:
        parsed = dt.datetime.strptime(value, "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        raise SlurmOutputError(f"not a Slurm timestamp: {text!r}") from None
    return parsed


_EXIT_CODE = re.compile(r"^(\d+):(\d+)$")


def parse_exit_code(text: str) -> tuple[int, int]:
    """(exit status, signal) from sacct's ExitCode "2:0"."""
    match = _EXIT_CODE.match(text.strip())
    if match is None:
        raise SlurmOutputError(f"not a Slurm exit code: {text!r}")
    return int(match[1]), int(match[2])


def parse_job_id(text: str) -> int:
    """A job id is a positive integer; anything else (array ids, steps, blanks) is an error."""
    value = text.strip()
    if not value.isascii() or not value.isdigit():
        raise SlurmOutputError(f"not a Slurm job id: {text!r}")
    job_id = int(value)
    if job_id <= 0:
        raise SlurmOutputError(f"not a Slurm job id: {text!r}")
    return job_id
