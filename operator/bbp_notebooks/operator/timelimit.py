"""A session's time limit as the scientist lives it: when the job ends, a warning before that,
and asking for more time. Pure decisions; sites.py does the Slurm command and the writes.

The extension request is ``spec.resources.timeLimitMinutes`` (the one spec field that may change,
and only upwards, by the CRD's rule); it is carried out when it is above the job's current limit,
within the profile's maxTimeLimitMinutes and the partition's MaxTime, by the site's adminUser.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from bbp_notebooks.api.models import ConditionStatus, NotebookSessionStatus, SessionPhase
from bbp_notebooks.api.vocabulary import ConditionType, Reason
from bbp_notebooks.operator.conditions import get, set_condition

_RUNNING = (SessionPhase.RUNNING, SessionPhase.READY)


def expected_end(status: NotebookSessionStatus) -> dt.datetime | None:
    """Slurm's start time + the current limit while the job runs; None otherwise."""
    if status.phase not in _RUNNING or status.start_time is None or not status.time_limit_minutes:
        return None
    return status.start_time + dt.timedelta(minutes=status.time_limit_minutes)


def _left(end: dt.datetime, now: dt.datetime) -> str:
    """The condition's message: the end only. A countdown here would change the status, and so
    write it, every minute for every session; the hub computes time left from expectedEndTime."""
    return f"ends at {end.isoformat(timespec='seconds')}"


def _minutes_left(end: dt.datetime, now: dt.datetime) -> int:
    return max(0, int((end - now).total_seconds() // 60))


def with_time_left(
    status: NotebookSessionStatus, *, now: dt.datetime, lead: dt.timedelta, generation: int | None
) -> NotebookSessionStatus:
    """``status`` with expectedEndTime and the TimeLimit condition: TimeRemaining (True) until
    ``lead`` before the end, then EndingSoon (False). A refused extension stays on the condition
    until the request changes (a new generation); Extended stays until the warning is due."""
    end = expected_end(status)
    if end is None:
        return status.model_copy(update={"expected_end_time": None})
    current = get(status.conditions, ConditionType.TIME_LIMIT)
    keep = current is not None and (
        (current.reason == Reason.EXTENSION_REFUSED and current.observed_generation == generation)
        or (current.reason == Reason.EXTENDED and end - now > lead)
    )
    conditions = status.conditions
    if not keep:
        soon = end - now <= lead
        conditions = set_condition(
            conditions,
            ConditionType.TIME_LIMIT,
            not soon,
            Reason.ENDING_SOON if soon else Reason.TIME_REMAINING,
            _left(end, now),
            now=now,
            generation=generation,
        )
    return status.model_copy(update={"expected_end_time": end, "conditions": conditions})


@dataclass(frozen=True)
class Raise:
    """Ask Slurm for this limit (minutes), as the site's admin user."""

    minutes: int


@dataclass(frozen=True)
class Refuse:
    message: str


def extension(
    requested: int | None,
    status: NotebookSessionStatus,
    *,
    profile_max: int | None,
    admin_user: str | None,
    generation: int | None,
) -> Raise | Refuse | None:
    """What to do about the spec's time limit. None: nothing asked (not above the job's limit,
    no job running or queued yet, or this request already refused by Slurm)."""
    current = status.time_limit_minutes
    if (
        requested is None
        or current is None
        or requested <= current
        or status.job_id is None
        or status.phase not in (SessionPhase.QUEUED, *_RUNNING)
    ):
        return None
    condition = get(status.conditions, ConditionType.TIME_LIMIT)
    if (
        condition is not None
        and condition.reason == Reason.EXTENSION_REFUSED
        and condition.observed_generation == generation
    ):
        return None  # refused for this very request: a new request is a new generation
    if profile_max is None:
        return Refuse("the session's profile is not known, so its maximum time limit is not")
    if requested > profile_max:
        return Refuse(f"{requested} minutes exceeds the profile's maximum of {profile_max} minutes")
    if admin_user is None:
        return Refuse("the site has no adminUser to raise time limits with")
    return Raise(requested)


def within_partition(minutes: int, partition: str, max_time_minutes: int | None) -> Refuse | None:
    """The partition's MaxTime (None: unlimited) also bounds an extension."""
    if max_time_minutes is not None and minutes > max_time_minutes:
        return Refuse(
            f"{minutes} minutes exceeds partition {partition}'s MaxTime of "
            f"{max_time_minutes} minutes"
        )
    return None


def refused(
    status: NotebookSessionStatus, message: str, *, now: dt.datetime, generation: int | None
) -> NotebookSessionStatus:
    conditions = set_condition(
        status.conditions,
        ConditionType.TIME_LIMIT,
        ConditionStatus.FALSE,
        Reason.EXTENSION_REFUSED,
        f"extension refused: {message}",
        now=now,
        generation=generation,
    )
    return status.model_copy(update={"conditions": conditions})


def extended(
    status: NotebookSessionStatus, minutes: int, *, now: dt.datetime, generation: int | None
) -> NotebookSessionStatus:
    """Slurm accepted the new limit: the status shows it (and the new end) at once."""
    status = status.model_copy(update={"time_limit_minutes": minutes})
    end = expected_end(status)
    conditions = set_condition(
        status.conditions,
        ConditionType.TIME_LIMIT,
        ConditionStatus.TRUE,
        Reason.EXTENDED,
        f"time limit raised to {minutes} minutes"
        + (f"; {_left(end, now)}" if end is not None else ""),
        now=now,
        generation=generation,
    )
    return status.model_copy(update={"expected_end_time": end, "conditions": conditions})


# Which TimeLimit transitions are told as Events: (reason) -> Event type.
EVENTS = {
    Reason.ENDING_SOON: "Warning",
    Reason.EXTENSION_REFUSED: "Warning",
    Reason.EXTENDED: "Normal",
}


def event_for(
    old: NotebookSessionStatus, new: NotebookSessionStatus
) -> tuple[str, str, str] | None:
    """(type, reason, message) of the Event a TimeLimit change deserves, or None."""
    after = get(new.conditions, ConditionType.TIME_LIMIT)
    if after is None or after.reason not in EVENTS:
        return None
    before = get(old.conditions, ConditionType.TIME_LIMIT)
    if before is not None and (before.reason, before.message) == (after.reason, after.message):
        return None
    if before is not None and before.reason == after.reason == Reason.ENDING_SOON:
        return None  # one warning is enough
    message = after.message
    if after.reason == Reason.ENDING_SOON and new.expected_end_time is not None:
        left = _minutes_left(new.expected_end_time, after.last_transition_time)
        message = f"{message} ({left} min left)"
    return EVENTS[Reason(after.reason)], after.reason, message


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
LOG_TAIL_BYTES = 8192
LOG_TAIL_LINES = 50


def log_tail(raw: bytes) -> str:
    """The last lines of a job's output, safe to show: decoded leniently, control characters
    (terminal escapes included) removed, at most LOG_TAIL_LINES lines and LOG_TAIL_BYTES bytes."""
    text = raw[-LOG_TAIL_BYTES:].decode("utf-8", errors="replace").replace("\r\n", "\n")
    text = _CONTROL.sub("", text.replace("\r", "\n").replace("\t", "    "))
    lines = text.rstrip("\n").split("\n")[-LOG_TAIL_LINES:]
    tail = "\n".join(lines)
    while len(tail.encode()) > LOG_TAIL_BYTES:  # U+FFFD is 3 bytes: trim from the front
        tail = tail[1:]
    return tail


def wants_log(old: NotebookSessionStatus, new: NotebookSessionStatus) -> bool:
    """Read the job's output once, when it has just failed or ended before its time limit."""
    return (
        new.phase in (SessionPhase.FAILED, SessionPhase.COMPLETED)
        and old.phase != new.phase
        and new.job_id is not None
        and new.log_tail is None
    )
