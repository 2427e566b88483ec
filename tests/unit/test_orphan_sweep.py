"""Which tagged jobs the orphan sweep may cancel: ours, unfinished, sessionless, past the grace."""

from __future__ import annotations

import dataclasses
import datetime as dt
from zoneinfo import ZoneInfo

import pytest

from bbp_notebooks.operator.planning import job_name, session_uid
from bbp_notebooks.operator.sites import orphan_candidates
from bbp_notebooks.slurm.commands import QueueEntry
from bbp_notebooks.slurm.values import JobState

ZONE = ZoneInfo("Europe/Zurich")
NOW = dt.datetime(2026, 12, 1, 12, 0, 0, tzinfo=dt.UTC)  # 13:00 in Geneva
GRACE = dt.timedelta(seconds=120)
UID = "0b3c5d1e-7f00-4a8e-9d2b-1c2d3e4f5a6b"
JOB = QueueEntry(
    job_id=1000007,
    name=job_name("default", UID),
    user="bob",
    state=JobState.RUNNING,
    reason=None,
    nodes="n1",
    start_time=None,
    time_limit_s=600,
    time_left_s=600,
    partition="prod",
    account=None,
    submit_time=dt.datetime(2026, 12, 1, 12, 50, 0),  # Geneva local time: 10 minutes ago
)


def candidates(entry: QueueEntry, known: frozenset[str] = frozenset()) -> list[int]:
    uid = session_uid(entry.name, "default")
    tagged = {uid: (entry,)} if uid is not None else {}
    found = orphan_candidates(tagged, set(known), now=NOW, grace=GRACE, zone=ZONE)
    return [e.job_id for _, e in found]


@pytest.mark.parametrize(
    ("change", "cancellable"),
    [
        pytest.param({}, True, id="ours, sessionless, 10 minutes old"),
        pytest.param(
            {"submit_time": dt.datetime(2026, 12, 1, 12, 59, 0)}, False, id="1 minute old"
        ),
        pytest.param({"submit_time": dt.datetime(2026, 12, 1, 12, 58, 1)}, False, id="just inside"),
        pytest.param(
            {"submit_time": dt.datetime(2026, 12, 1, 12, 57, 59)},
            False,
            id="shown 121 s old, which may be 120.0 s",
        ),
        pytest.param(
            {"submit_time": dt.datetime(2026, 12, 1, 12, 57, 58)}, True, id="past the grace"
        ),
        pytest.param({"submit_time": None}, False, id="age unknown"),
        pytest.param({"state": JobState.COMPLETED}, False, id="already ended"),
        pytest.param({"name": f"bbpnb-other-{UID}"}, False, id="another installation's"),
        pytest.param({"name": job_name("default", UID) + "x"}, False, id="not exactly our tag"),
        pytest.param({"user": "Bob.Smith"}, False, id="an owner we could not name to scancel"),
    ],
)
def test_only_our_sessionless_jobs_past_the_grace_are_candidates(
    change: dict[str, object], cancellable: bool
) -> None:
    entry = dataclasses.replace(JOB, **change)  # type: ignore[arg-type]
    assert candidates(entry) == ([1000007] if cancellable else [])


def test_a_job_of_a_known_session_is_never_a_candidate() -> None:
    assert candidates(JOB, frozenset({UID})) == []


def test_a_tagged_job_of_a_protected_user_is_never_a_candidate() -> None:
    # We never submit as root or a monitor user, so such a job is not ours: never log in as it.
    uid = session_uid(JOB.name, "default")
    assert uid is not None
    for user in ("root", "bbpmon"):
        tagged = {uid: (dataclasses.replace(JOB, user=user),)}
        found = orphan_candidates(
            tagged, set(), now=NOW, grace=GRACE, zone=ZONE, protected={"root", "bbpmon"}
        )
        assert found == []
    assert orphan_candidates(
        {uid: (JOB,)}, set(), now=NOW, grace=GRACE, zone=ZONE, protected={"root"}
    )


def test_every_job_of_a_gone_session_is_a_candidate() -> None:
    uid = session_uid(JOB.name, "default")
    assert uid is not None
    second = dataclasses.replace(JOB, job_id=1000008)
    found = orphan_candidates({uid: (JOB, second)}, set(), now=NOW, grace=GRACE, zone=ZONE)
    assert [e.job_id for _, e in found] == [1000007, 1000008]
