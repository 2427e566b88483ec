"""Faults are normal: crashes, deletions while down, orphans, a controller outage."""

from __future__ import annotations

import time
import uuid

import pytest

from bbp_notebooks.devtools.stack import wait_for
from bbp_notebooks.operator.planning import job_name
from fixtures.operator import Stack, session

pytestmark = pytest.mark.kube


def uid_of(stack: Stack, name: str) -> str:
    found = stack.get("notebooksession", name)
    assert found is not None
    return str(found["metadata"]["uid"])


def test_a_crash_between_sbatch_and_the_status_write_leaves_exactly_one_job(stack: Stack) -> None:
    stack.operator.stop()
    stack.operator.settings["BBP_FAILPOINTS"] = '["after-sbatch"]'
    stack.operator.start()
    try:
        stack.apply(session("crash"))
        tag = job_name("default", uid_of(stack, "crash"))
        assert stack.operator.process is not None
        wait_for(lambda: stack.operator.process.poll() is not None, 60, "the failpoint to kill it")  # type: ignore[union-attr]
        assert stack.operator.process.returncode == 137
        assert "jobId" not in stack.status("crash"), "the crash happened before the status write"
        assert len(stack.jobs(name=tag)) == 1
    finally:
        stack.operator.settings.pop("BBP_FAILPOINTS")
        stack.operator.start()
    status = stack.wait_phase("crash", {"Ready"})
    jobs = stack.jobs(name=tag)
    assert [j["job_id"] for j in jobs] == [status["jobId"]], jobs
    submitted = {c["type"]: c for c in status["conditions"]}["Submitted"]
    assert submitted["reason"] == "ExistingJobAdopted"
    stack.kubectl("delete", "notebooksession", "crash", "--wait=false")
    stack.wait_gone("crash")


def test_a_session_deleted_while_the_operator_is_down_has_its_job_cancelled(stack: Stack) -> None:
    stack.apply(session("deleted-while-down"))
    status = stack.wait_phase("deleted-while-down", {"Ready"})
    stack.operator.kill()
    assert (
        stack.kubectl("delete", "notebooksession", "deleted-while-down", "--wait=false").returncode
        == 0
    )
    assert stack.get("notebooksession", "deleted-while-down") is not None, "the finalizer holds it"
    running = [j for j in stack.jobs() if j["job_id"] == status["jobId"]]
    assert running[0]["state"] == "RUNNING"
    stack.operator.start()
    stack.wait_gone("deleted-while-down")
    ended = [j for j in stack.jobs() if j["job_id"] == status["jobId"]]
    assert ended[0]["state"] == "CANCELLED"


def _submit_as(stack: Stack, user: str, name: str) -> int:
    argv = ["sbatch", "--parsable", f"--job-name={name}", "--time=10"]
    status, stdout, stderr = stack.ssh_run(user, argv, stdin="#!/bin/bash\nsleep 300\n")
    assert status == 0, stderr
    return int(stdout.strip())


ORPHAN_GRACE_S = 10


def test_an_orphan_is_cancelled_only_after_the_grace_and_foreign_jobs_are_left_alone(
    stack: Stack,
) -> None:
    """The sweep runs every poll (1 s) here, so only the grace setting keeps the orphan alive."""
    stack.operator.stop()
    stack.operator.settings["BBP_ORPHAN_GRACE_SECONDS"] = str(ORPHAN_GRACE_S)
    stack.operator.start()
    spared: list[int] = []
    try:
        submitted = time.monotonic()
        orphan = _submit_as(stack, "bob", job_name("default", str(uuid.uuid4())))
        foreign = _submit_as(stack, "bob", "my-own-analysis")
        other_installation = _submit_as(stack, "bob", job_name("other", str(uuid.uuid4())))
        spared += [foreign, other_installation]

        def state(job_id: int) -> str:
            return str(next(j for j in stack.jobs() if j["job_id"] == job_id)["state"])

        alive = {"RUNNING", "PENDING"}
        # Several sweeps see the orphan inside its grace: it must survive every one of them.
        while time.monotonic() - submitted < ORPHAN_GRACE_S - 2:
            assert state(orphan) in alive, "cancelled inside the orphan grace"
            time.sleep(0.5)
        survived = time.monotonic() - submitted
        wait_for(lambda: state(orphan) == "CANCELLED", 30, "the orphan to be cancelled", 0.2)
        cancelled = time.monotonic() - submitted
        print(
            f"\norphan grace {ORPHAN_GRACE_S} s: alive at {survived:.1f} s, "
            f"seen cancelled at {cancelled:.1f} s after submission"
        )
        assert cancelled >= ORPHAN_GRACE_S
        assert state(foreign) in alive
        assert state(other_installation) in alive
        log = stack.operator.log_path.read_text()
        assert f"cancelled orphan job {orphan} " in log
        assert f"orphan job {other_installation} " not in log
    finally:
        stack.operator.stop()
        stack.operator.settings.pop("BBP_ORPHAN_GRACE_SECONDS")
        stack.operator.start()
        if spared:
            stack.ssh_run("bob", ["scancel", *map(str, spared)])


def test_a_controller_outage_never_fails_sessions_and_they_recover(stack: Stack) -> None:
    stack.apply(session("outage"))
    before = stack.wait_phase("outage", {"Ready"})
    stack.mock.faults("geneva", controller_down=True)
    try:

        def unreachable() -> bool:
            conditions = {c["type"]: c for c in stack.status("outage").get("conditions", [])}
            return conditions["SiteReachable"]["status"] == "False"

        wait_for(unreachable, 30, "SiteReachable=False")
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # the outage lasts 60 s; the session must stay Ready
            assert stack.status("outage")["phase"] == "Ready"
            time.sleep(2)
        site = stack.get("slurmsite", "geneva", namespace="")
        assert site is not None
        reachable = {c["type"]: c for c in site["status"]["conditions"]}["Reachable"]
        assert reachable["status"] == "False"
        assert "Unable to contact slurm controller" in reachable["message"]
    finally:
        stack.mock.faults("geneva", controller_down=False)

    def recovered() -> bool:
        conditions = {c["type"]: c for c in stack.status("outage")["conditions"]}
        return conditions["SiteReachable"]["status"] == "True"

    wait_for(recovered, 30, "SiteReachable=True")
    after = stack.status("outage")
    assert after["phase"] == "Ready" and after["jobId"] == before["jobId"]
    stack.kubectl("delete", "notebooksession", "outage", "--wait=false")
    stack.wait_gone("outage")
