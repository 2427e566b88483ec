"""The site poll's decisions (operator/reconcile.py), one row per case: which source decides a
job's state, when a job the monitor cannot see is asked about as its owner, when it has really
vanished, and when the circuit breaker holds every session as it is."""
# ruff: noqa: E501  (the decision table reads best one row per line)

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from bbp_notebooks.api.models import (
    Endpoint,
    NotebookSessionSpec,
    NotebookSessionStatus,
    SessionPhase,
    SlurmSiteStatus,
    dump,
)
from bbp_notebooks.api.vocabulary import ConditionType
from bbp_notebooks.operator import observe, reconcile
from bbp_notebooks.operator.conditions import get, set_condition
from bbp_notebooks.operator.planning import job_name
from bbp_notebooks.operator.sessions import SessionRef
from bbp_notebooks.slurm.commands import AccountingEntry, PartitionAvailability, QueueEntry
from bbp_notebooks.slurm.values import JobState

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
SETTINGS = reconcile.Settings(
    installation_id="default",
    zone=ZoneInfo("UTC"),
    grace=dt.timedelta(seconds=60),
    default_partition="prod",
)
PARTITIONS = (PartitionAvailability("prod", True, True, 2, 4, 16, 32),)


def uid(n: int) -> str:
    return f"00000000-0000-4000-8000-{n:012d}"


def session(
    n: int, *, phase: str = "Running", submitted_ago: float = 600, endpoint: bool = False
) -> SessionRef:
    conditions = set_condition(
        [],
        ConditionType.SUBMITTED,
        True,
        "JobSubmitted",
        "",
        now=NOW - dt.timedelta(seconds=submitted_ago),
        generation=1,
    )
    # As the last poll left it: running (so "unchanged" can be told apart from a decision).
    conditions = set_condition(
        conditions, ConditionType.RUNNING, True, "JobRunning", "on gva-cn01",
        now=NOW - dt.timedelta(seconds=5), generation=1,
    )  # fmt: skip
    status: dict[str, Any] = {
        "phase": phase,
        "jobId": 1000 + n,
        "site": "geneva",
        "conditions": [dump(c) for c in conditions],
    }
    if endpoint:
        status["endpoint"] = {"host": "127.0.0.1", "port": 8888, "url": "http://127.0.0.1:8888"}
    return SessionRef(
        uid=uid(n), namespace="default", name=f"s{n}", generation=1, created=NOW - dt.timedelta(hours=1),
        spec=NotebookSessionSpec.model_validate({"user": "alice", "profile": "p", "site": "geneva"}),
        status=NotebookSessionStatus.model_validate(status),
    )  # fmt: skip


def queued(
    n: int,
    state: JobState,
    *,
    installation: str = "default",
    job_id: int | None = None,
    submitted_ago: float | None = None,
    user: str = "alice",
) -> QueueEntry:
    return QueueEntry(
        job_id=job_id or 1000 + n, name=job_name(installation, uid(n)), user=user, state=state,
        reason="Resources" if state == JobState.PENDING else None, nodes="gva-cn01" if state != JobState.PENDING else None,
        start_time=None, time_limit_s=3600, time_left_s=3000, partition="prod", account=None,
        submit_time=None if submitted_ago is None else (NOW - dt.timedelta(seconds=submitted_ago)).replace(tzinfo=None),
    )  # fmt: skip


def accounted(n: int, state: JobState, exit_code: int = 0) -> AccountingEntry:
    return AccountingEntry(
        1000 + n, job_name("default", uid(n)), "alice", state, exit_code, 0, None, NOW, "gva-cn01"
    )


def snapshot(
    queue: tuple[QueueEntry, ...] = (),
    accounting: tuple[AccountingEntry, ...] = (),
    owner: dict[int, observe.JobObservation | None] | None = None,
) -> reconcile.Snapshot:
    return reconcile.Snapshot(
        NOW, PARTITIONS, queue, {a.job_id: a for a in accounting}, owner_view=owner or {}
    )


RUNNING_AS_OWNER = observe.JobObservation(1001, "RUNNING", node="gva-cn01")

CASES: list[tuple[str, reconcile.Snapshot, dict[str, Any], str, str | None, bool]] = [
    # (case, snapshot, session fields, phase after, Running condition reason, asked of the owner)
    ("pending in the queue", snapshot((queued(1, JobState.PENDING),)), {}, "Queued", "JobPending", False),
    ("running in the queue", snapshot((queued(1, JobState.RUNNING),)), {}, "Running", "JobRunning", False),
    ("running with an endpoint", snapshot((queued(1, JobState.RUNNING),)), {"endpoint": True}, "Ready", "JobRunning", False),
    ("COMPLETING still runs", snapshot((queued(1, JobState.COMPLETING),)), {}, "Running", "JobRunning", False),
    ("left the queue, sacct says COMPLETED", snapshot((), (accounted(1, JobState.COMPLETED),)), {}, "Completed", "JobCompleted", False),
    ("left the queue, sacct says FAILED", snapshot((), (accounted(1, JobState.FAILED, 1),)), {}, "Failed", "JobFailed", False),
    ("ended in the queue, sacct decides", snapshot((queued(1, JobState.COMPLETED),), (accounted(1, JobState.TIMEOUT),)), {}, "Timeout", "JobTimeLimitReached", False),
    ("ended in the queue, not in sacct yet", snapshot((queued(1, JobState.CANCELLED),)), {}, "Cancelled", "JobCancelled", False),
    ("missing, within the grace", snapshot(), {"submitted_ago": 10}, "Running", None, False),
    ("missing past the grace: ask the owner, change nothing", snapshot(), {}, "Running", None, True),
    ("another installation's job is not ours", snapshot((queued(1, JobState.RUNNING, installation="other"),)), {}, "Running", None, True),
    ("a queued job with another id is not ours", snapshot((queued(1, JobState.RUNNING, job_id=999),)), {}, "Running", None, True),
    ("the owner sees it running (hidden from the monitor)", snapshot(owner={1001: RUNNING_AS_OWNER}), {}, "Running", "JobRunning", False),
    ("the owner knows it neither in squeue nor sacct", snapshot(owner={1001: None}), {}, "Failed", "JobVanished", False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("snap", "fields", "phase", "running_reason", "asked"),
    [c[1:] for c in CASES],
    ids=[c[0] for c in CASES],
)
def test_a_poll_decides_each_sessions_status(snap: reconcile.Snapshot, fields: dict[str, Any], phase: str, running_reason: str | None, asked: bool) -> None:  # fmt: skip
    one = session(1, **fields)
    result = reconcile.reconcile(snap, SlurmSiteStatus(), 1, [one], {}, SETTINGS)
    ((ref, new),) = result.sessions
    assert ref is one
    assert new.phase == SessionPhase(phase), new.message
    running = get(new.conditions, ConditionType.RUNNING)
    if running_reason is None:  # nothing decided: the condition is as the last poll left it
        assert running == get(one.status.conditions, ConditionType.RUNNING)
    else:
        assert running is not None and running.reason == running_reason
    assert (result.confirm == (one,)) is asked
    assert not result.degraded


def test_an_endpoint_this_replica_accepted_wins_over_a_status_that_lags() -> None:
    one = session(1)
    endpoint = Endpoint(host="127.0.0.1", port=9999, url="http://127.0.0.1:9999")
    result = reconcile.reconcile(
        snapshot((queued(1, JobState.RUNNING),)),
        SlurmSiteStatus(),
        1,
        [one],
        {one.uid: endpoint},
        SETTINGS,
    )
    assert (
        result.sessions[0][1].endpoint == endpoint
        and result.sessions[0][1].phase == SessionPhase.READY
    )


def test_many_jobs_missing_at_once_trip_the_breaker_and_nothing_ends() -> None:
    sessions = [session(n) for n in range(1, 5)]
    visible = snapshot((queued(4, JobState.RUNNING),))  # 3 of 4 missing from the monitor's view
    result = reconcile.reconcile(visible, SlurmSiteStatus(), 1, sessions, {}, SETTINGS)
    assert result.degraded and result.confirm == ()
    assert all(new.phase != SessionPhase.FAILED for _, new in result.sessions)
    jobs_visible = get(result.site.conditions, ConditionType.JOBS_VISIBLE)
    assert (
        jobs_visible is not None
        and jobs_visible.status == "False"
        and jobs_visible.reason == "ManyJobsMissing"
    )
    assert "3 sessions" in jobs_visible.message


def test_few_missing_jobs_are_confirmed_one_by_one() -> None:
    sessions = [session(n) for n in range(1, 6)]
    visible = snapshot(tuple(queued(n, JobState.RUNNING) for n in (3, 4, 5)))  # 2 of 5 missing
    result = reconcile.reconcile(visible, SlurmSiteStatus(), 1, sessions, {}, SETTINGS)
    assert not result.degraded
    assert [s.uid for s in result.confirm] == [uid(1), uid(2)]
    jobs_visible = get(result.site.conditions, ConditionType.JOBS_VISIBLE)
    assert jobs_visible is not None and jobs_visible.status == "True"


def test_sessions_without_a_job_or_already_ended_are_not_looked_at() -> None:
    ended = session(1, phase="Completed")
    pending = SessionRef(
        **{
            **session(2).__dict__,
            "status": NotebookSessionStatus.model_validate({"phase": "Pending"}),
        }
    )
    result = reconcile.reconcile(snapshot(), SlurmSiteStatus(), 1, [ended, pending], {}, SETTINGS)
    assert result.sessions == () and result.confirm == ()


def test_only_jobs_that_left_the_queue_are_asked_of_sacct() -> None:
    sessions = [session(1), session(2), session(3)]
    tagged = reconcile.tagged_jobs(
        (queued(1, JobState.RUNNING), queued(2, JobState.COMPLETED)), "default"
    )
    assert reconcile.needs_accounting(sessions, tagged) == [1002, 1003]


def pending_submission(n: int) -> SessionRef:
    return SessionRef(
        **{**session(n).__dict__, "status": NotebookSessionStatus.model_validate({"phase": "Pending"})}
    )  # fmt: skip


SECOND = 5000  # the job id of a second job carrying a session's tag
DUPLICATE_CASES: list[tuple[str, SessionRef, QueueEntry, bool]] = [
    # (case, session, second tagged job in the queue, cancelled)
    ("a second job of a running session, past the grace", session(1), queued(1, JobState.RUNNING, job_id=SECOND, submitted_ago=600), True),
    ("a second job still pending", session(1), queued(1, JobState.PENDING, job_id=SECOND, submitted_ago=600), True),
    ("a second job of an ended session", session(1, phase="Completed"), queued(1, JobState.RUNNING, job_id=SECOND, submitted_ago=600), True),
    ("younger than the grace: may still be adopted", session(1), queued(1, JobState.RUNNING, job_id=SECOND, submitted_ago=60), False),
    ("age unknown: left alone", session(1), queued(1, JobState.RUNNING, job_id=SECOND), False),
    ("already ended", session(1), queued(1, JobState.CANCELLED, job_id=SECOND, submitted_ago=600), False),
    ("another user's job with our tag", session(1), queued(1, JobState.RUNNING, job_id=SECOND, submitted_ago=600, user="bob"), False),
    ("another installation's tag", session(1), queued(1, JobState.RUNNING, job_id=SECOND, submitted_ago=600, installation="other"), False),
    ("the session's own job", session(1), queued(1, JobState.RUNNING, submitted_ago=600), False),
    ("a session still being submitted adopts, not cancels", pending_submission(1), queued(1, JobState.RUNNING, job_id=SECOND, submitted_ago=600), False),
]  # fmt: skip


@pytest.mark.parametrize(
    ("one", "second", "cancelled"), [c[1:] for c in DUPLICATE_CASES], ids=[c[0] for c in DUPLICATE_CASES]
)  # fmt: skip
def test_a_second_tagged_job_of_a_session_is_cancelled(one: SessionRef, second: QueueEntry, cancelled: bool) -> None:  # fmt: skip
    settings = reconcile.Settings(
        **{**SETTINGS.__dict__, "duplicate_grace": dt.timedelta(seconds=300)}
    )
    own = queued(1, JobState.RUNNING, submitted_ago=900)
    result = reconcile.reconcile(snapshot((own, second)), SlurmSiteStatus(), 1, [one], {}, settings)
    assert [e.job_id for _, e in result.duplicates] == ([SECOND] if cancelled else [])
    if one.status.phase == SessionPhase.RUNNING:  # the session's own job still decides its state
        ((_, new),) = result.sessions
        assert new.phase == SessionPhase.RUNNING and new.job_id == 1001


def test_a_status_that_did_not_change_makes_an_empty_patch() -> None:
    one = session(1, endpoint=True)
    assert observe.status_patch(one.status, one.status) == {}
    moved = one.status.model_copy(update={"node": "gva-cn02", "endpoint": None})
    assert observe.status_patch(one.status, moved) == {"node": "gva-cn02", "endpoint": None}


# --- a poll decides again only for sessions whose inputs moved (reconcile.Unchanged) -----------

STARTED = (NOW - dt.timedelta(minutes=30)).replace(tzinfo=None)  # a 60-minute job: ends NOW+30
ROW = dataclasses.replace(queued(1, JobState.RUNNING), start_time=STARTED)


def settled(ref: SessionRef, new: NotebookSessionStatus, generation: int = 1) -> SessionRef:
    """The session as the index holds it after the write: its status parsed again."""
    status = NotebookSessionStatus.model_validate(dump(new))
    return dataclasses.replace(ref, status=status, generation=generation)


def quiet_session() -> tuple[SessionRef, reconcile.PollResult]:
    """A running session two polls in: the first decided its status, the second changed
    nothing and remembered so."""
    first = reconcile.reconcile(snapshot((ROW,)), SlurmSiteStatus(), 1, [session(1)], {}, SETTINGS)
    ((ref, new),) = first.sessions
    one = settled(ref, new)
    later = dataclasses.replace(snapshot((ROW,)), now=NOW + dt.timedelta(seconds=5))
    second = reconcile.reconcile(later, SlurmSiteStatus(), 1, [one], {}, SETTINGS)
    assert second.sessions == ((one, one.status),) and one.status is second.sessions[0][1]
    assert set(second.unchanged) == {one.uid}
    return one, second


ENDPOINT = Endpoint(host="127.0.0.1", port=9999, url="http://127.0.0.1:9999")
POLL_AGAIN_CASES: list[tuple[str, Any, bool, str]] = [
    # (case, what moved since the quiet poll: (session, snapshot, endpoints) -> the same, decided again, phase after)
    ("nothing moved: no decision, no write", lambda s, snap, e: (s, snap, e), False, "Running"),
    ("minutes later, before the warning is due", lambda s, snap, e: (s, dataclasses.replace(snap, now=NOW + dt.timedelta(minutes=14)), e), False, "Running"),
    ("the row changed: pending again", lambda s, snap, e: (s, snapshot((dataclasses.replace(ROW, state=JobState.PENDING, reason="Priority"),)), e), True, "Queued"),
    ("the row changed: another node", lambda s, snap, e: (s, snapshot((dataclasses.replace(ROW, nodes="gva-cn02"),)), e), True, "Running"),
    ("the row changed: a longer limit", lambda s, snap, e: (s, snapshot((dataclasses.replace(ROW, time_limit_s=7200),)), e), True, "Running"),
    ("the job left the queue: sacct decides", lambda s, snap, e: (s, snapshot((), (accounted(1, JobState.COMPLETED),)), e), True, "Completed"),
    ("the job vanished from the monitor's view", lambda s, snap, e: (s, snapshot(), e), True, "Running"),
    ("an endpoint was reported", lambda s, snap, e: (s, snap, {s.uid: ENDPOINT}), True, "Ready"),
    ("another writer changed the status", lambda s, snap, e: (settled(s, s.status.model_copy(update={"message": "other"})), snap, e), True, "Running"),
    ("a new generation (an extension request)", lambda s, snap, e: (settled(s, s.status, generation=2), snap, e), True, "Running"),
    ("the TimeLimit warning is due", lambda s, snap, e: (s, dataclasses.replace(snap, now=NOW + dt.timedelta(minutes=15)), e), True, "Running"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("moved", "decided", "phase"), [c[1:] for c in POLL_AGAIN_CASES], ids=[c[0] for c in POLL_AGAIN_CASES]
)  # fmt: skip
def test_a_poll_decides_again_only_what_moved(monkeypatch: pytest.MonkeyPatch, moved: Any, decided: bool, phase: str) -> None:  # fmt: skip
    one, quiet = quiet_session()
    one, snap, endpoints = moved(
        one, dataclasses.replace(snapshot((ROW,)), now=NOW + dt.timedelta(seconds=10)), {}
    )
    calls: list[str] = []
    decide = reconcile.decide
    monkeypatch.setattr(reconcile, "decide", lambda s, *a: calls.append(s.uid) or decide(s, *a))
    result = reconcile.reconcile(
        snap, SlurmSiteStatus(), 1, [one], endpoints, SETTINGS, None, quiet.unchanged
    )
    ((_, new),) = result.sessions
    assert bool(calls) is decided
    assert new.phase == SessionPhase(phase)
    # Remembered or not, the decision is the one a poll with no memory makes.
    fresh = reconcile.reconcile(snap, SlurmSiteStatus(), 1, [one], endpoints, SETTINGS)
    assert dump(new) == dump(fresh.sessions[0][1])
    if not decided:  # nothing to write: the very status the index holds
        assert new is one.status and one.uid in result.unchanged


def test_the_warning_due_is_decided_and_written() -> None:
    one, quiet = quiet_session()
    due = dataclasses.replace(snapshot((ROW,)), now=NOW + dt.timedelta(minutes=15))
    result = reconcile.reconcile(
        due, SlurmSiteStatus(), 1, [one], {}, SETTINGS, None, quiet.unchanged
    )
    ((_, new),) = result.sessions
    time_limit = get(new.conditions, ConditionType.TIME_LIMIT)
    assert time_limit is not None and time_limit.reason == "EndingSoon"
    assert observe.status_patch(one.status, new) != {}


def test_a_session_whose_job_the_monitor_cannot_see_is_never_remembered() -> None:
    one, _ = quiet_session()
    within_grace = dataclasses.replace(one, status=one.status.model_copy())  # missing, young
    result = reconcile.reconcile(snapshot(), SlurmSiteStatus(), 1, [within_grace], {}, SETTINGS)
    assert result.unchanged == {}
