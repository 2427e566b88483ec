"""The time-limit decisions (operator/timelimit.py), table by table: end time, warning,
extension, Events, and the job output's tail."""

# ruff: noqa: E501
from __future__ import annotations

import datetime as dt

import pytest

from bbp_notebooks.api.models import ConditionStatus, NotebookSessionStatus, SessionPhase
from bbp_notebooks.api.vocabulary import ConditionType, Reason
from bbp_notebooks.operator import timelimit
from bbp_notebooks.operator.conditions import get

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
LEAD = dt.timedelta(minutes=15)


def running(started_ago_min: float, limit: int, phase: SessionPhase = SessionPhase.READY,
            **update: object) -> NotebookSessionStatus:  # fmt: skip
    return NotebookSessionStatus(
        phase=phase,
        job_id=1001,
        start_time=NOW - dt.timedelta(minutes=started_ago_min),
        time_limit_minutes=limit,
        **update,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize(
    ("status", "end", "reason", "value"),
    [
        (running(10, 60), NOW + dt.timedelta(minutes=50), Reason.TIME_REMAINING, "True"),
        (running(45, 60), NOW + dt.timedelta(minutes=15), Reason.ENDING_SOON, "False"),
        (running(59, 60), NOW + dt.timedelta(minutes=1), Reason.ENDING_SOON, "False"),
        (running(0, 60, SessionPhase.RUNNING), NOW + dt.timedelta(minutes=60), Reason.TIME_REMAINING, "True"),
        (running(0, 60, SessionPhase.QUEUED), None, None, None),
        (running(70, 60, SessionPhase.TIMEOUT), None, None, None),
        (NotebookSessionStatus(phase=SessionPhase.RUNNING, job_id=1, time_limit_minutes=60), None, None, None),
    ],
)  # fmt: skip
def test_end_time_and_warning(
    status: NotebookSessionStatus, end: dt.datetime | None, reason: str | None, value: str | None
) -> None:
    new = timelimit.with_time_left(status, now=NOW, lead=LEAD, generation=1)
    assert new.expected_end_time == end
    condition = get(new.conditions, ConditionType.TIME_LIMIT)
    assert (
        (condition.reason, condition.status.value) == (reason, value)
        if condition
        else reason is None
    )


def test_a_raised_limit_moves_the_end_and_clears_the_warning() -> None:
    soon = timelimit.with_time_left(running(50, 60), now=NOW, lead=LEAD, generation=1)
    later = timelimit.with_time_left(
        soon.model_copy(update={"time_limit_minutes": 120}), now=NOW, lead=LEAD, generation=1
    )
    assert later.expected_end_time == NOW + dt.timedelta(minutes=70)
    condition = get(later.conditions, ConditionType.TIME_LIMIT)
    assert condition is not None and condition.reason == Reason.TIME_REMAINING


@pytest.mark.parametrize(
    ("requested", "status", "profile_max", "admin", "expected"),
    [
        (None, running(5, 60), 480, "slurmop", None),
        (60, running(5, 60), 480, "slurmop", None),  # not above the current limit
        (30, running(5, 60), 480, "slurmop", None),  # lowering is not an extension
        (120, running(5, 60), 480, "slurmop", timelimit.Raise(120)),
        (120, running(0, 60, SessionPhase.QUEUED), 480, "slurmop", timelimit.Raise(120)),
        (481, running(5, 60), 480, "slurmop", timelimit.Refuse("481 minutes exceeds the profile's maximum of 480 minutes")),
        (120, running(5, 60), None, "slurmop", timelimit.Refuse("the session's profile is not known, so its maximum time limit is not")),
        (120, running(5, 60), 480, None, timelimit.Refuse("the site has no adminUser to raise time limits with")),
        (120, running(70, 60, SessionPhase.TIMEOUT), 480, "slurmop", None),  # ended
        (120, NotebookSessionStatus(phase=SessionPhase.PENDING), 480, "slurmop", None),  # no job
    ],
)  # fmt: skip
def test_extension_decision(
    requested: int | None,
    status: NotebookSessionStatus,
    profile_max: int | None,
    admin: str | None,
    expected: object,
) -> None:
    assert (
        timelimit.extension(
            requested, status, profile_max=profile_max, admin_user=admin, generation=2
        )
        == expected
    )


def test_a_request_slurm_refused_is_not_asked_again_until_it_changes() -> None:
    status = timelimit.refused(running(5, 60), "Access/permission denied", now=NOW, generation=2)
    assert timelimit.extension(120, status, profile_max=480, admin_user="op", generation=2) is None
    assert timelimit.extension(
        150, status, profile_max=480, admin_user="op", generation=3
    ) == timelimit.Raise(150)
    # and the refusal stays on the condition while the request is the same
    kept = timelimit.with_time_left(status, now=NOW, lead=LEAD, generation=2)
    condition = get(kept.conditions, ConditionType.TIME_LIMIT)
    assert condition is not None and condition.reason == Reason.EXTENSION_REFUSED
    assert condition.status == ConditionStatus.FALSE
    assert "Access/permission denied" in condition.message


@pytest.mark.parametrize(
    ("minutes", "max_time", "refused"),
    [(120, None, False), (120, 120, False), (121, 120, True)],
)
def test_partition_max_time_bounds_an_extension(
    minutes: int, max_time: int | None, refused: bool
) -> None:
    assert (timelimit.within_partition(minutes, "prod", max_time) is not None) is refused


def test_extended_shows_the_new_limit_and_end() -> None:
    new = timelimit.extended(running(5, 60), 120, now=NOW, generation=2)
    assert new.time_limit_minutes == 120
    assert new.expected_end_time == NOW + dt.timedelta(minutes=115)
    condition = get(new.conditions, ConditionType.TIME_LIMIT)
    assert condition is not None and (condition.reason, condition.status.value) == (
        Reason.EXTENDED,
        "True",
    )


def test_events_once_per_transition() -> None:
    quiet = timelimit.with_time_left(running(10, 60), now=NOW, lead=LEAD, generation=1)
    soon = timelimit.with_time_left(
        quiet, now=NOW + dt.timedelta(minutes=36), lead=LEAD, generation=1
    )
    sooner = timelimit.with_time_left(
        soon, now=NOW + dt.timedelta(minutes=40), lead=LEAD, generation=1
    )
    assert timelimit.event_for(NotebookSessionStatus(), quiet) is None
    event = timelimit.event_for(quiet, soon)
    assert event is not None and event[:2] == ("Warning", Reason.ENDING_SOON)
    assert timelimit.event_for(soon, sooner) is None  # minutes left changed: no second warning
    refused = timelimit.refused(sooner, "no", now=NOW, generation=1)
    assert timelimit.event_for(sooner, refused) == (
        "Warning",
        Reason.EXTENSION_REFUSED,
        "extension refused: no",
    )
    extended = timelimit.extended(sooner, 120, now=NOW, generation=2)
    assert timelimit.event_for(sooner, extended)[:2] == ("Normal", Reason.EXTENDED)  # type: ignore[index]


# fmt: skip


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"one\ntwo\n", "one\ntwo"),
        (b"\x1b[31mred\x1b[0m\n", "[31mred[0m"),  # the ESC is gone, so nothing is interpreted
        (b"bell\x07 nul\x00 del\x7f\n", "bell nul del"),
        (b"cr\rover\r\n", "cr\nover"),
        (b"bad \xff utf-8\n", "bad \ufffd utf-8"),
        (b"".join(b"line %d\n" % i for i in range(100)), "\n".join(f"line {i}" for i in range(50, 100))),
    ],
)  # fmt: skip
def test_log_tail_is_bounded_and_clean(raw: bytes, expected: str) -> None:
    assert timelimit.log_tail(raw) == expected


def test_log_tail_of_a_huge_line_fits_the_status_field() -> None:
    tail = timelimit.log_tail(b"\xff" * 100_000)
    assert len(tail.encode()) <= timelimit.LOG_TAIL_BYTES


@pytest.mark.parametrize(
    ("old", "new", "wanted"),
    [
        (SessionPhase.READY, SessionPhase.FAILED, True),
        (SessionPhase.RUNNING, SessionPhase.COMPLETED, True),
        (SessionPhase.READY, SessionPhase.TIMEOUT, False),
        (SessionPhase.READY, SessionPhase.CANCELLED, False),
        (SessionPhase.FAILED, SessionPhase.FAILED, False),
    ],
)
def test_the_log_is_read_once_when_a_job_fails_or_ends_early(
    old: SessionPhase, new: SessionPhase, wanted: bool
) -> None:
    before = NotebookSessionStatus(phase=old, job_id=7)
    after = NotebookSessionStatus(phase=new, job_id=7)
    assert timelimit.wants_log(before, after) is wanted


def test_the_passing_minutes_change_nothing_in_status() -> None:
    """No countdown in status: a poll a few minutes later writes nothing (one write per session
    per minute would be 10,000 writes a minute at centre scale)."""
    lead = dt.timedelta(minutes=15)
    first = timelimit.with_time_left(running(10, 60), now=NOW, lead=lead, generation=1)
    later = timelimit.with_time_left(first, now=NOW + dt.timedelta(minutes=7), lead=lead, generation=1)
    assert later == first
    soon = timelimit.with_time_left(first, now=NOW + dt.timedelta(minutes=40), lead=lead, generation=1)
    sooner = timelimit.with_time_left(soon, now=NOW + dt.timedelta(minutes=45), lead=lead, generation=1)
    assert sooner == soon and get(soon.conditions, ConditionType.TIME_LIMIT).reason == Reason.ENDING_SOON  # type: ignore[union-attr]
    event = timelimit.event_for(first, soon)
    assert event is not None and "(10 min left)" in event[2]
