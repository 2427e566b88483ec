"""Pure reconcile logic: validation, site choice, and the status state machine."""

from __future__ import annotations

import datetime as dt

import pytest

from bbp_notebooks.api.models import (
    Endpoint,
    NotebookProfileSpec,
    NotebookSessionSpec,
    NotebookSessionStatus,
    SessionPhase,
    SlurmSiteSpec,
    SlurmSiteStatus,
    dump,
)
from bbp_notebooks.api.vocabulary import ConditionType
from bbp_notebooks.operator import observe
from bbp_notebooks.operator.conditions import get, set_condition
from bbp_notebooks.operator.planning import (
    InvalidSpec,
    NoSiteAvailable,
    SiteView,
    job_name,
    plan,
    session_uid,
)

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)


def profile(**extra: object) -> NotebookProfileSpec:
    return NotebookProfileSpec.model_validate(
        {"displayName": "BluePy", "cores": 2, "memoryMiB": 2048, "maxCores": 4, **extra}
    )


def site(
    name: str, *, reachable: bool, idle_cores: int, account_policy: str = "Optional"
) -> SiteView:
    spec = SlurmSiteSpec.model_validate(
        {
            "displayName": name.title(),
            "frontend": {"host": "127.0.0.21"},
            "hostKeys": {"certificateAuthorities": ["ssh-ed25519 AAAA"]},
            "partitions": [{"name": "debug"}, {"name": "prod", "default": True}],
            "accountPolicy": account_policy,
            "monitorUser": "bbpmon",
        }
    )
    conditions = set_condition(
        [], ConditionType.REACHABLE, reachable, "Polled", "", now=NOW, generation=1
    )
    status = SlurmSiteStatus.model_validate(
        {
            "conditions": [dump(c) for c in conditions],
            "partitions": [
                {
                    "name": "prod",
                    "idleNodes": 1,
                    "totalNodes": 2,
                    "idleCores": idle_cores,
                    "totalCores": 16,
                }
            ],
        }
    )
    return SiteView(name=name, spec=spec, status=status)


SITES = {
    "geneva": site("geneva", reachable=True, idle_cores=8),
    "lugano": site("lugano", reachable=True, idle_cores=12, account_policy="Required"),
}


def session(**extra: object) -> NotebookSessionSpec:
    return NotebookSessionSpec.model_validate({"user": "alice", "profile": "bluepy", **extra})


def test_a_valid_session_is_planned_with_profile_defaults() -> None:
    result = plan(session(site="geneva"), {"bluepy": profile()}, SITES)
    assert (result.site, result.partition, result.cores, result.memory_mib) == (
        "geneva",
        "prod",
        2,
        2048,
    )
    assert result.time_limit_minutes == 60


@pytest.mark.parametrize(
    ("spec", "reason"),
    [
        (session(profile="nope"), "UnknownProfile"),
        (session(site="zurich"), "UnknownSite"),
        (session(site="lugano"), "AccountRequired"),
        (session(site="geneva", resources={"cores": 5}), "ResourcesExceedProfile"),
        (session(site="geneva", resources={"memoryMiB": 4096}), "ResourcesExceedProfile"),
        (session(site="geneva", resources={"timeLimitMinutes": 481}), "ResourcesExceedProfile"),
    ],
)
def test_invalid_sessions_are_refused_with_a_reason(spec: NotebookSessionSpec, reason: str) -> None:
    with pytest.raises(InvalidSpec) as caught:
        plan(spec, {"bluepy": profile()}, SITES)
    assert caught.value.reason == reason


def test_a_profile_restricted_to_groups_refuses_other_users() -> None:
    restricted = {"bluepy": profile(allowedGroups=["neuro"])}
    with pytest.raises(InvalidSpec, match="none of the groups"):
        plan(session(site="geneva"), restricted, SITES, groups=["physics"])
    assert plan(session(site="geneva"), restricted, SITES, groups=["neuro"]).site == "geneva"


def test_auto_picks_the_reachable_allowed_site_with_most_idle_cores() -> None:
    assert plan(session(account="proj1"), {"bluepy": profile()}, SITES).site == "lugano"
    only_geneva = {"bluepy": profile(allowedSites=["geneva"])}
    assert plan(session(), only_geneva, SITES).site == "geneva"
    down = {**SITES, "lugano": site("lugano", reachable=False, idle_cores=99)}
    assert plan(session(), {"bluepy": profile()}, down).site == "geneva"
    with pytest.raises(NoSiteAvailable):
        plan(
            session(),
            {"bluepy": profile()},
            {"geneva": site("geneva", reachable=False, idle_cores=1)},
        )


def test_a_placed_auto_session_stays_where_it_was_placed() -> None:
    """Placement is once (status.site): a retry, or the shard of the placed site, plans the
    session there even when another site now has more idle cores, and checks it like a
    session that named that site."""
    profiles = {"bluepy": profile()}
    assert plan(session(), profiles, SITES, placed="geneva").site == "geneva"  # lugano: more
    with pytest.raises(InvalidSpec) as caught:  # lugano requires an account, as if named
        plan(session(), profiles, SITES, placed="lugano")
    assert caught.value.reason == "AccountRequired"
    with pytest.raises(InvalidSpec) as gone:
        plan(session(), profiles, SITES, placed="zurich")
    assert gone.value.reason == "UnknownSite"
    down = {**SITES, "geneva": site("geneva", reachable=False, idle_cores=99)}
    # Its site down: planned there still (the sbatch then waits, as for a named site), never
    # moved to the site that answers.
    assert plan(session(), profiles, down, placed="geneva").site == "geneva"
    assert plan(session(site="geneva"), profiles, SITES, placed="lugano").site == "geneva"


def test_job_names_round_trip_to_session_uids() -> None:
    uid = "0b9c1d2e-0000-4000-8000-00000000abcd"
    assert session_uid(job_name("prod", uid), "prod") == uid
    assert session_uid(job_name("other", uid), "prod") is None
    assert session_uid(job_name("prod", uid) + "x", "prod") is None
    assert session_uid("bbpnb-prod-not-a-uid", "prod") is None
    assert session_uid("interactive", "prod") is None
    assert session_uid("bbpnb-", "prod") is None


def _submitted() -> NotebookSessionStatus:
    status = observe.initial(NotebookSessionStatus(), now=NOW, generation=1)
    return observe.submitted(
        status,
        job_id=1000001,
        site="geneva",
        time_limit_minutes=60,
        adopted=False,
        now=NOW,
        generation=1,
    )


def test_first_visit_sets_every_condition_as_unknown() -> None:
    status = observe.initial(NotebookSessionStatus(), now=NOW, generation=1)
    assert status.phase == SessionPhase.PENDING
    assert {c.type: c.status.value for c in status.conditions} == {
        "Submitted": "Unknown",
        "Running": "Unknown",
        "Ready": "Unknown",
        "SiteReachable": "Unknown",
    }


def test_a_session_goes_queued_running_ready() -> None:
    status = _submitted()
    assert status.phase == SessionPhase.QUEUED and status.job_id == 1000001
    pending = observe.JobObservation(1000001, "PENDING", reason="Resources", start_time=NOW)
    status = observe.observed(status, pending, endpoint=None, vanished=False, now=NOW, generation=1)
    assert status.phase == SessionPhase.QUEUED and status.queue is not None
    assert status.queue.reason == "Resources"
    running = observe.JobObservation(1000001, "RUNNING", node="gva-n1", start_time=NOW)
    status = observe.observed(status, running, endpoint=None, vanished=False, now=NOW, generation=1)
    assert (status.phase, status.node, status.queue) == (SessionPhase.RUNNING, "gva-n1", None)
    endpoint = Endpoint(host="127.0.0.1", port=8888, url="http://127.0.0.1:8888")
    status = observe.observed(
        status, running, endpoint=endpoint, vanished=False, now=NOW, generation=1
    )
    ready = get(status.conditions, ConditionType.READY)
    assert status.phase == SessionPhase.READY and ready is not None and ready.status.value == "True"


def test_an_unchanged_observation_produces_an_identical_status() -> None:
    running = observe.JobObservation(1000001, "RUNNING", node="gva-n1", start_time=NOW)
    once = observe.observed(
        _submitted(), running, endpoint=None, vanished=False, now=NOW, generation=1
    )
    later = NOW + dt.timedelta(minutes=5)
    twice = observe.observed(once, running, endpoint=None, vanished=False, now=later, generation=1)
    assert dump(once) == dump(twice)


def test_an_unreachable_site_never_fails_a_running_session() -> None:
    running = observe.JobObservation(1000001, "RUNNING", node="gva-n1")
    status = observe.observed(
        _submitted(), running, endpoint=None, vanished=False, now=NOW, generation=1
    )
    status = observe.site_unreachable(status, "connect failure", now=NOW, generation=1)
    assert status.phase == SessionPhase.RUNNING
    reachable = get(status.conditions, ConditionType.SITE_REACHABLE)
    assert reachable is not None and reachable.status.value == "False"


@pytest.mark.parametrize(
    ("state", "phase", "reason"),
    [
        ("COMPLETED", SessionPhase.COMPLETED, "JobCompleted"),
        ("FAILED", SessionPhase.FAILED, "JobFailed"),
        ("TIMEOUT", SessionPhase.TIMEOUT, "JobTimeLimitReached"),
        ("CANCELLED", SessionPhase.CANCELLED, "JobCancelled"),
        ("NODE_FAIL", SessionPhase.FAILED, "NodeFail"),
    ],
)
def test_terminal_states_come_from_accounting(state: str, phase: SessionPhase, reason: str) -> None:
    ended = observe.JobObservation(1000001, state, exit_code=3 if state == "FAILED" else 0)
    status = observe.observed(
        _submitted(), ended, endpoint=None, vanished=False, now=NOW, generation=1
    )
    running = get(status.conditions, ConditionType.RUNNING)
    assert status.phase == phase and running is not None and running.reason == reason
    if state == "FAILED":
        assert "exit code 3" in (status.message or "")


def test_absence_is_failure_only_when_conclusive() -> None:
    status = observe.observed(
        _submitted(), None, endpoint=None, vanished=False, now=NOW, generation=1
    )
    assert status.phase == SessionPhase.QUEUED
    status = observe.observed(status, None, endpoint=None, vanished=True, now=NOW, generation=1)
    running = get(status.conditions, ConditionType.RUNNING)
    assert (
        status.phase == SessionPhase.FAILED
        and running is not None
        and running.reason == "JobVanished"
    )
