"""Deletes always finish: a session whose site cannot be asked is released after a bounded time
with a Warning Event (its job left to the orphan sweep), a session whose site was deleted is
released with an Event, and a session that never got a job needs no ssh at all."""

from __future__ import annotations

import json
import time

from bbp_notebooks.devtools.stack import wait_for
from fixtures.operator import Stack, session

GIVE_UP_S = 20  # BBP_CANCEL_GIVE_UP_SECONDS of the test operator


def test_a_delete_while_the_controller_is_down_finishes_after_the_give_up_time(
    stack: Stack,
) -> None:
    stack.apply(session("stuck-delete"))
    job_id = stack.wait_phase("stuck-delete", {"Ready"})["jobId"]
    stack.mock.faults("geneva", controller_down=True)
    try:
        started = time.monotonic()
        stack.kubectl("delete", "notebooksession", "stuck-delete", "--wait=false")
        time.sleep(GIVE_UP_S / 2)
        assert stack.get("notebooksession", "stuck-delete") is not None, "released too early"
        stack.wait_gone("stuck-delete", timeout=GIVE_UP_S + 60)
        released = time.monotonic() - started
        (event,) = stack.warnings("stuck-delete", "CancelAbandoned")
        assert "orphan sweep" in event["message"]
        print(f"\ndelete with the controller down released after {released:.0f} s")
    finally:
        stack.mock.faults("geneva", controller_down=False)
    (job,) = [j for j in stack.jobs() if j["job_id"] == job_id]
    assert job["state"] in ("RUNNING", "CANCELLED", "COMPLETING")  # the sweep's to cancel
    stack.ssh_run("alice", ["scancel", str(job_id)])


def test_a_session_whose_site_was_deleted_is_released_with_an_event(stack: Stack) -> None:
    geneva = json.loads(stack.kubectl("get", "slurmsite", "geneva", "-o", "json").stdout)
    ephemeral = {
        "apiVersion": geneva["apiVersion"],
        "kind": "SlurmSite",
        "metadata": {"name": "ephemeral"},
        "spec": geneva["spec"],
    }
    stack.apply(ephemeral)

    def polled() -> bool:
        site = stack.get("slurmsite", "ephemeral", namespace="") or {}
        return bool(site.get("status", {}).get("lastPollTime"))

    wait_for(polled, 30, "the new site's first poll")
    stack.apply(session("orphaned-site", site="ephemeral"))
    job_id = stack.wait_phase("orphaned-site", {"Ready"})["jobId"]
    stack.kubectl("delete", "slurmsite", "ephemeral", "--timeout=30s")
    time.sleep(2)  # the operator's site index follows the watch
    stack.kubectl("delete", "notebooksession", "orphaned-site", "--wait=false")
    stack.wait_gone("orphaned-site", timeout=30)
    (event,) = stack.warnings("orphaned-site", "SiteGone")
    assert "ephemeral" in event["message"] and str(job_id) in event["message"]
    stack.ssh_run("alice", ["scancel", str(job_id)])


def test_a_session_that_never_got_a_job_is_deleted_without_ssh(stack: Stack) -> None:
    stack.apply(session("never-ran", profile="no-such-profile"))
    stack.wait_phase("never-ran", {"InvalidSpec"})
    stack.mock.faults("geneva", ssh_refused=True)  # any login would fail and hold the delete
    try:
        started = time.monotonic()
        stack.kubectl("delete", "notebooksession", "never-ran", "--wait=false")
        stack.wait_gone("never-ran", timeout=10)
        assert time.monotonic() - started < 10
    finally:
        stack.mock.faults("geneva", ssh_refused=False)
