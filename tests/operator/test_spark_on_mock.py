"""The sample PySpark profile (examples/profiles.yaml, as in `make dev`) on the Slurm emulator: its
Spark cluster job starts the master and the workers through the emulator's srun (real processes,
real pyspark), the session goes Ready with both, and deleting it ends both jobs."""

from __future__ import annotations

import json
import urllib.request

import pytest

from fixtures.operator import Stack, session

pytestmark = pytest.mark.kube


def test_the_sample_pyspark_profile_runs_its_cluster_on_the_emulator(stack: Stack) -> None:
    stack.apply(session("mock-spark", profile="pyspark"))
    try:
        status = stack.wait_phase("mock-spark", {"Ready"}, timeout=240)
    except TimeoutError as error:
        raise AssertionError(f"{error}: {stack.status('mock-spark')}") from None
    spark = status["spark"]
    assert spark["workersRegistered"] == 2
    with urllib.request.urlopen(spark["uiURL"] + "/json/", timeout=10) as answer:  # noqa: S310
        view = json.loads(answer.read())
    assert len([w for w in view["workers"] if w["state"] == "ALIVE"]) == 2, view
    by_id = {j["job_id"]: j for j in stack.jobs()}
    assert by_id[status["jobId"]]["state"] == by_id[spark["jobId"]]["state"] == "RUNNING"
    assert stack.kubectl("delete", "notebooksession", "mock-spark", "--wait=false").returncode == 0
    stack.wait_gone("mock-spark", timeout=90)
    by_id = {j["job_id"]: j for j in stack.jobs()}
    assert by_id[status["jobId"]]["state"] == by_id[spark["jobId"]]["state"] == "CANCELLED"
