"""No second job: an sbatch whose answer was lost (the connection dropped, or the controller
registered the job only after our deadline) is looked for by its tag after the settle time and
adopted, never submitted twice; a second job carrying a live session's tag is cancelled by the
poll once it is older than the grace. Real operator, real apiserver, the emulated site."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest

from bbp_notebooks.devtools.stack import wait_for
from bbp_notebooks.operator.planning import companion_job_name, job_name
from fixtures.operator import Stack, condition, session

pytestmark = pytest.mark.kube

COMMAND_TIMEOUT_S = 2
SETTLE_S = 6
GRACE_S = 8
SETTINGS = {
    "BBP_COMMAND_TIMEOUT_SECONDS": str(COMMAND_TIMEOUT_S),
    "BBP_SUBMISSION_SETTLE_SECONDS": str(SETTLE_S),
    "BBP_ORPHAN_GRACE_SECONDS": str(GRACE_S),
}


@pytest.fixture(scope="module")
def tight(stack: Stack) -> Iterator[Stack]:
    """The stack's operator with short deadlines, restored afterwards."""
    stack.operator.stop()
    stack.operator.settings.update(SETTINGS)
    stack.operator.start()
    try:
        yield stack
    finally:
        stack.mock.faults(
            "geneva", sbatch_latency=0.0, sbatch_response_lost=False, stuck_pending=False
        )
        stack.operator.stop()
        for key in SETTINGS:
            stack.operator.settings.pop(key)
        stack.operator.start()


def tag_of(stack: Stack, name: str) -> str:
    found = stack.get("notebooksession", name)
    assert found is not None
    return job_name("default", found["metadata"]["uid"])


def unconfirmed(stack: Stack, name: str) -> dict[str, Any] | None:
    status = stack.status(name)
    submitted = [c for c in status.get("conditions", []) if c["type"] == "Submitted"]
    return status if submitted and submitted[0]["reason"] == "SubmissionUnconfirmed" else None


def finish(stack: Stack, name: str) -> None:
    stack.kubectl("delete", "notebooksession", name, "--wait=false")
    stack.wait_gone(name, timeout=30)


def test_an_answer_lost_beyond_the_command_timeout_is_adopted_not_resubmitted(
    tight: Stack,
) -> None:
    """slurmctld registers the job 4 s after sbatch started; we give up after 2 s. A look right
    then finds nothing: only the settle time keeps a second sbatch from going out."""
    tight.mock.faults("geneva", sbatch_latency=COMMAND_TIMEOUT_S + 2.0)
    started = time.monotonic()
    tight.apply(session("late-answer"))
    status = wait_for(lambda: unconfirmed(tight, "late-answer"), 30, "SubmissionUnconfirmed")
    tight.mock.faults("geneva", sbatch_latency=0.0)  # a second sbatch would now be instant
    assert condition(status, "Submitted")["status"] == "Unknown"
    assert "timed out" in condition(status, "Submitted")["message"]
    tag = tag_of(tight, "late-answer")
    status = tight.wait_phase("late-answer", {"Ready", "Failed"}, timeout=60)
    jobs = tight.jobs(name=tag)
    print(f"\nlost sbatch answer -> job adopted, Ready in {time.monotonic() - started:.1f} s")
    assert [j["job_id"] for j in jobs] == [status["jobId"]], jobs  # exactly one job
    assert condition(status, "Submitted")["reason"] == "ExistingJobAdopted"
    finish(tight, "late-answer")


def test_a_lost_answer_to_the_spark_clusters_sbatch_is_said_and_adopted_not_resubmitted(
    tight: Stack,
) -> None:
    """The second sbatch (the Spark cluster's) loses its answer too: SparkReady says so
    (Unknown, SubmissionUnconfirmed, so a replica taking over waits the settle time before it
    looks), then the job is found by its tag: one cluster job, never two. Jobs are held pending
    (the emulator runs no Spark)."""
    tight.mock.faults("geneva", stuck_pending=True, sbatch_latency=COMMAND_TIMEOUT_S + 2.0)
    tight.apply(session("late-spark", profile="pyspark"))

    def spark_unconfirmed() -> dict[str, Any] | None:
        status = tight.status("late-spark")
        spark = [c for c in status.get("conditions", []) if c["type"] == "SparkReady"]
        return status if spark and spark[0]["reason"] == "SubmissionUnconfirmed" else None

    status = wait_for(spark_unconfirmed, 60, "SparkReady SubmissionUnconfirmed")
    tight.mock.faults("geneva", sbatch_latency=0.0)  # a second sbatch would now be instant
    assert condition(status, "SparkReady")["status"] == "Unknown"
    assert "Spark cluster job" in condition(status, "SparkReady")["message"]
    found = tight.get("notebooksession", "late-spark")
    assert found is not None
    tag = companion_job_name("default", found["metadata"]["uid"])
    status = wait_for(
        lambda: (s := tight.status("late-spark")).get("spark", {}).get("jobId") and s,
        60, "the cluster job to be adopted", 0.5,
    )  # fmt: skip
    time.sleep(SETTLE_S)  # a resubmission would have happened by now
    assert [j["job_id"] for j in tight.jobs(name=tag)] == [status["spark"]["jobId"]]
    assert condition(status, "SparkReady")["reason"] != "SubmissionUnconfirmed"
    tight.mock.faults("geneva", stuck_pending=False)
    finish(tight, "late-spark")


def test_a_dropped_connection_during_sbatch_is_adopted_not_resubmitted(tight: Stack) -> None:
    tight.mock.faults("geneva", sbatch_response_lost=True)
    tight.apply(session("dropped-answer"))
    wait_for(lambda: unconfirmed(tight, "dropped-answer"), 30, "SubmissionUnconfirmed")
    tight.mock.faults("geneva", sbatch_response_lost=False)
    tag = tag_of(tight, "dropped-answer")
    status = tight.wait_phase("dropped-answer", {"Ready", "Failed"}, timeout=60)
    assert [j["job_id"] for j in tight.jobs(name=tag)] == [status["jobId"]]
    assert condition(status, "Submitted")["reason"] == "ExistingJobAdopted"
    finish(tight, "dropped-answer")


def test_a_second_job_with_a_live_sessions_tag_is_cancelled_after_the_grace(tight: Stack) -> None:
    tight.apply(session("twice"))
    status = tight.wait_phase("twice", {"Ready"})
    tag = tag_of(tight, "twice")
    argv = ["sbatch", "--parsable", f"--job-name={tag}", "--time=10"]
    code, out, err = tight.ssh_run("alice", argv, stdin="#!/bin/bash\nsleep 300\n")
    assert code == 0, err
    second = int(out.strip())
    submitted = time.monotonic()

    def state(job_id: int) -> str:
        return next(j["state"] for j in tight.jobs(name=tag) if j["job_id"] == job_id)

    time.sleep(GRACE_S / 2)
    assert state(second) == "RUNNING", "cancelled inside the grace"
    wait_for(lambda: state(second) == "CANCELLED", GRACE_S + 20, "the second job to be cancelled")
    print(f"\nsecond tagged job cancelled {time.monotonic() - submitted:.1f} s after sbatch")
    assert time.monotonic() - submitted >= GRACE_S
    assert state(status["jobId"]) == "RUNNING"  # the session's own job is untouched
    assert tight.status("twice")["phase"] == "Ready"
    (event,) = tight.warnings("twice", "DuplicateJobCancelled")
    assert str(second) in event["message"]
    finish(tight, "twice")
