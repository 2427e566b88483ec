"""The operator's metrics as a scraper sees them: site gauges from a SlurmSite status, session
gauges with bounded labels, transitions counted once, deletions tracked, no `_created` series."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bbp_notebooks.api.models import NotebookSessionSpec, NotebookSessionStatus, SlurmSiteStatus
from bbp_notebooks.operator import metrics
from bbp_notebooks.operator.sessions import SessionRef

NOW = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)


def samples(name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Every sample called ``name`` in the registry, keyed by its sorted labels."""
    found = {}
    for family in text_string_to_metric_families(generate_latest(metrics.REGISTRY).decode()):
        for sample in family.samples:
            if sample.name == name:
                found[tuple(sorted(sample.labels.items()))] = sample.value
    return found


@pytest.fixture(autouse=True)
def fresh() -> Iterator[None]:
    yield
    for site in ("unit-a", "unit-b"):
        metrics.forget_site(site)
    metrics.publish_sessions([])


def condition(type_: str, status: str, reason: str, at: dt.datetime = NOW) -> dict[str, Any]:
    return {"type": type_, "status": status, "reason": reason, "lastTransitionTime": at}


def site_status(reachable: bool, partitions: list[str]) -> SlurmSiteStatus:
    return SlurmSiteStatus.model_validate(
        {
            "conditions": [
                condition("Reachable", str(reachable), "Polled" if reachable else "SiteUnavailable")
            ],
            "partitions": [
                {"name": p, "idleNodes": 3, "totalNodes": 8, "idleCores": 24, "totalCores": 64}
                for p in partitions
            ],
            "pendingJobs": 5,
            "runningJobs": 2,
            "lastPollTime": NOW,
        }
    )


def ref(uid: str, status: dict[str, Any], profile: str = "bluepy") -> SessionRef:
    return SessionRef(
        uid=uid,
        namespace="default",
        name=uid,
        generation=1,
        created=NOW - dt.timedelta(minutes=2),
        spec=NotebookSessionSpec(user="alice", profile=profile, site="unit-a"),
        status=NotebookSessionStatus.model_validate(status),
    )


def test_the_exposition_has_no_created_series() -> None:
    metrics.SUBMISSIONS.labels("unit-b").inc()
    metrics.QUEUE_WAIT.labels("unit-b", "bluepy").observe(3)
    text = generate_latest(metrics.REGISTRY).decode()
    assert "bbp_notebooks_submissions_total" in text
    assert "_created" not in text


def test_a_polled_site_publishes_reachability_partitions_jobs_and_its_last_poll() -> None:
    metrics.publish_site("unit-a", site_status(True, ["prod", "debug"]))
    assert samples("bbp_notebooks_site_reachable")[(("site", "unit-a"),)] == 1
    idle = samples("bbp_notebooks_site_partition_idle_cores")
    assert idle[(("partition", "prod"), ("site", "unit-a"))] == 24
    assert (
        samples("bbp_notebooks_site_partition_nodes")[(("partition", "debug"), ("site", "unit-a"))]
        == 8
    )
    jobs = samples("bbp_notebooks_site_jobs")
    assert jobs[(("site", "unit-a"), ("state", "pending"))] == 5
    assert jobs[(("site", "unit-a"), ("state", "running"))] == 2
    polled = samples("bbp_notebooks_site_last_successful_poll_timestamp_seconds")
    assert polled[(("site", "unit-a"),)] == NOW.timestamp()
    # The failure counters start at zero, so that the first failure is an increase.
    assert samples("bbp_notebooks_submissions_total")[(("site", "unit-a"),)] == 0


def test_an_unreachable_site_reads_zero_and_a_removed_partition_loses_its_series() -> None:
    metrics.publish_site("unit-a", site_status(True, ["prod", "debug"]))
    metrics.publish_site("unit-a", site_status(False, ["prod"]))
    assert samples("bbp_notebooks_site_reachable")[(("site", "unit-a"),)] == 0
    partitions = {dict(k)["partition"] for k in samples("bbp_notebooks_site_partition_cores")
                  if dict(k)["site"] == "unit-a"}  # fmt: skip
    assert partitions == {"prod"}


def test_a_forgotten_site_leaves_no_series_behind() -> None:
    metrics.publish_site("unit-a", site_status(True, ["prod"]))
    metrics.publish_site("unit-b", site_status(True, ["prod"]))
    metrics.observe_credential("unit-a", "Certificate", NOW + dt.timedelta(minutes=5))
    metrics.forget_site("unit-a")
    text = generate_latest(metrics.REGISTRY).decode()
    site_lines = [line for line in text.splitlines() if "bbp_notebooks_site_" in line]
    assert not [line for line in site_lines if 'site="unit-a"' in line], site_lines
    assert any('site="unit-b"' in line for line in site_lines)


def test_session_gauges_never_carry_the_text_of_an_unchecked_spec() -> None:
    refused = ref("u1", {"phase": "InvalidSpec", "conditions": [
        condition("Submitted", "False", "UnknownProfile")]}, profile="x" * 60)  # fmt: skip
    running = ref("u2", {"phase": "Running", "site": "unit-a", "jobId": 7, "conditions": [
        condition("Running", "True", "JobRunning"),
        condition("Ready", "False", "HandEdited"),
    ]})  # fmt: skip
    metrics.publish_sessions([refused, running])
    phases = samples("bbp_notebooks_sessions")
    assert phases[(("phase", "InvalidSpec"), ("profile", ""), ("site", ""))] == 1
    assert phases[(("phase", "Running"), ("profile", "bluepy"), ("site", "unit-a"))] == 1
    reasons = samples("bbp_notebooks_session_conditions")
    assert reasons[(("condition", "Running"), ("reason", "JobRunning"), ("site", "unit-a"),
                    ("status", "True"))] == 1  # fmt: skip
    assert reasons[(("condition", "Ready"), ("reason", "Other"), ("site", "unit-a"),
                    ("status", "False"))] == 1  # fmt: skip
    oldest = samples("bbp_notebooks_oldest_session_creation_timestamp_seconds")
    assert oldest == {(("phase", "Running"), ("site", "unit-a")): running.created.timestamp()}


def _histogram_count(name: str, site: str = "unit-a") -> float:
    return samples(f"{name}_count").get((("profile", "bluepy"), ("site", site)), 0.0)


def test_readiness_counts_once_per_job_whoever_sees_it_first() -> None:
    submitted = condition("Submitted", "True", "JobSubmitted", NOW - dt.timedelta(seconds=40))
    before = ref("u3", {"phase": "Queued", "site": "unit-a", "jobId": 9, "conditions": [submitted]})
    ready = NotebookSessionStatus.model_validate({
        "phase": "Ready", "site": "unit-a", "jobId": 9, "startTime": NOW - dt.timedelta(seconds=4),
        "conditions": [submitted, condition("Running", "True", "JobRunning")],
    })  # fmt: skip
    counts = {
        name: _histogram_count(name)
        for name in ("bbp_notebooks_queue_wait_seconds", "bbp_notebooks_time_to_ready_seconds",
                     "bbp_notebooks_running_to_ready_seconds")
    }  # fmt: skip
    sums = {name: samples(f"{name}_sum").get((("profile", "bluepy"), ("site", "unit-a")), 0.0)
            for name in counts}  # fmt: skip
    metrics.observe_session(before, ready, now=NOW)  # the endpoint report
    metrics.observe_session(before, ready, now=NOW + dt.timedelta(seconds=1))  # a lagging poll
    for name, count in counts.items():
        assert _histogram_count(name) == count + 1, name
    added = {name: samples(f"{name}_sum")[(("profile", "bluepy"), ("site", "unit-a"))] - sums[name]
             for name in counts}  # fmt: skip
    assert added["bbp_notebooks_queue_wait_seconds"] == pytest.approx(40)
    assert added["bbp_notebooks_time_to_ready_seconds"] == pytest.approx(120)
    assert added["bbp_notebooks_running_to_ready_seconds"] == pytest.approx(4)
    # A new job of the same session (resubmitted) is a new wait.
    again = ready.model_copy(update={"job_id": 10})
    metrics.observe_session(before, again, now=NOW)
    assert _histogram_count("bbp_notebooks_time_to_ready_seconds") == counts[
        "bbp_notebooks_time_to_ready_seconds"] + 2  # fmt: skip


def test_a_deletion_is_tracked_until_its_finalizer_is_released() -> None:
    metrics.publish_site("unit-a", site_status(True, ["prod"]))
    session = ref("u4", {"phase": "Ready", "site": "unit-a", "jobId": 11})
    metrics.deletion_started(session, "2025-03-01T11:50:00Z")
    metrics.deletion_started(session, "2025-03-01T11:50:00Z")  # a retry: the same deletion
    assert samples("bbp_notebooks_deletions_in_progress")[(("site", "unit-a"),)] == 1
    oldest = samples("bbp_notebooks_oldest_deletion_timestamp_seconds")
    assert oldest[(("site", "unit-a"),)] == (NOW - dt.timedelta(minutes=10)).timestamp()
    metrics.deletion_finished(session)
    assert samples("bbp_notebooks_deletions_in_progress")[(("site", "unit-a"),)] == 0
    assert (("site", "unit-a"),) not in samples("bbp_notebooks_oldest_deletion_timestamp_seconds")


def test_a_session_gone_without_its_finalizer_is_not_tracked_forever() -> None:
    session = ref("u5", {"phase": "Ready", "site": "unit-a", "jobId": 12})
    metrics.deletion_started(session, None)
    metrics.publish_sessions([])  # the session left the index (finalizer removed by hand)
    assert not samples("bbp_notebooks_oldest_deletion_timestamp_seconds")


def test_a_gssapi_site_publishes_its_earliest_valid_ticket_end_without_user_labels() -> None:
    soon, later = NOW + dt.timedelta(minutes=7), NOW + dt.timedelta(hours=9)
    # None: a session whose ticket is not valid (ended, missing, someone else's) does not count.
    assert metrics.earliest_ticket_expiry([later, None, soon]) == soon
    assert metrics.earliest_ticket_expiry([None, None]) is None
    metrics.observe_ticket_expiry("unit-a", metrics.earliest_ticket_expiry([later, soon]))
    name = "bbp_notebooks_site_earliest_ticket_expiry_timestamp_seconds"
    assert samples(name) == {(("site", "unit-a"),): soon.timestamp()}
    # No valid ticket left: the series goes (an absent series, not a moment in the past).
    metrics.observe_ticket_expiry("unit-a", None)
    assert samples(name) == {}
    metrics.observe_ticket_expiry("unit-a", later)
    metrics.forget_site("unit-a")
    assert samples(name) == {}
