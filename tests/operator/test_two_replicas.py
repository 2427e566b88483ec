"""Two replicas with kopf peering, the active one SIGKILLed in the middle of a 200-session burst:
the standby takes over, every session gets exactly one job (duplicates = 0), endpoint reports
sent to the standby are recorded (status is the only shared memory), and after the sessions are
deleted no tagged job is left (orphans = 0). Real operators, real apiserver, the emulated site."""
# ruff: noqa: E501

from __future__ import annotations

import json
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bbp_notebooks.devtools.admission import admin_annotations
from bbp_notebooks.devtools.controlplane import repo_root
from bbp_notebooks.devtools.stack import Operator, free_port, wait_for
from bbp_notebooks.operator.planning import job_name
from fixtures.operator import Stack, session

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

NAMESPACE = "burst"
BURST = 200
LIFETIME_S = 10
PEERING_CRDS = repo_root() / "charts/bbp-notebooks/charts/kopf-peering/crds/kopf-peering.yaml"
PEERING = {"apiVersion": "kopf.dev/v1", "kind": "ClusterKopfPeering",
           "metadata": {"name": "bbp-notebooks"}}  # fmt: skip


def burst_sessions() -> str:
    items = [
        {
            "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
            "kind": "NotebookSession",
            "metadata": {"name": f"b{i:03d}", "namespace": NAMESPACE,
                         "annotations": admin_annotations()},
            "spec": {"user": ("alice", "bob")[i % 2], "profile": "bluepy", "site": "geneva"},
        }  # fmt: skip
        for i in range(BURST)
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def listed(stack: Stack) -> list[dict[str, Any]]:
    result = stack.kubectl("get", "notebooksessions", "-n", NAMESPACE, "-o", "json")
    assert result.returncode == 0, result.stderr
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def with_job(stack: Stack) -> int:
    """Sessions with a job id in status (a light query: it is polled during the burst)."""
    jsonpath = "jsonpath={.items[*].status.jobId}"
    result = stack.kubectl("get", "notebooksessions", "-n", NAMESPACE, "-o", jsonpath)
    return len(result.stdout.split())


@pytest.fixture(scope="module")
def replicas(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Operator, Operator]]:  # fmt: skip
    """The stack's operator replaced by an active (priority 200) and a standby (100) replica.
    Every job's callback URL names the standby, as a Service would pick either."""
    assert stack.kubectl("apply", "-f", str(PEERING_CRDS)).returncode == 0
    stack.apply(PEERING)
    stack.kubectl("create", "namespace", NAMESPACE)  # kept: namespaces never finish deleting here
    stack.operator.stop()
    workdir = Path(tmp_path_factory.mktemp("replicas"))
    standby = Operator(workdir / "standby", stack.cp.kubeconfig, http_port=free_port())
    peering = {"BBP_PEERING": "true", "BBP_PEERING_LIFETIME_SECONDS": str(LIFETIME_S),
               "BBP_CALLBACK_URL": standby.url}  # fmt: skip
    standby.settings = {**stack.operator.settings, **peering, "BBP_PRIORITY": "100"}
    active = Operator(
        workdir / "active",
        stack.cp.kubeconfig,
        settings={**stack.operator.settings, **peering, "BBP_PRIORITY": "200"},
    )
    active.start()
    time.sleep(2)  # the active replica's peering record exists before the standby looks
    standby.start()
    try:
        yield active, standby
    finally:
        stack.mock.faults("geneva", stuck_pending=False, sbatch_latency=0.0)
        active.stop()
        standby.stop()
        stack.kubectl("delete", "clusterkopfpeering", "bbp-notebooks")
        stack.operator.start()


def test_the_active_replica_killed_during_a_burst_leaves_no_duplicate_and_no_orphan(
    stack: Stack, replicas: tuple[Operator, Operator]
) -> None:
    active, standby = replicas
    stack.apply(session("via-standby"))  # a live one, its report sent to the standby
    ready = stack.wait_phase("via-standby", {"Ready"})
    uid = stack.get("notebooksession", "via-standby")["metadata"]["uid"]  # type: ignore[index]
    # The standby, paused by peering, received the report and recorded it in status.
    assert f"session {uid}: job {ready['jobId']} reported" in standby.log_path.read_text()
    # 200 queued jobs, no 200 notebooks; each sbatch takes 2 s, so that when the active
    # replica dies some of its sbatches are still in flight: their jobs appear after its death,
    # with no status recording them, and the standby must adopt, not resubmit, them.
    stack.mock.faults("geneva", stuck_pending=True, sbatch_latency=2.0)
    started = time.monotonic()
    # Created in the background (200 admissions take a while here), watched meanwhile.
    creating = subprocess.Popen(
        ["kubectl", "apply", "--server-side", "-f", "-"], stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL, env=stack.cp.env, text=True,
    )  # fmt: skip
    assert creating.stdin is not None
    creating.stdin.write(burst_sessions())
    creating.stdin.close()
    wait_for(lambda: with_job(stack) >= BURST // 4, 120, "a quarter of the burst submitted", 0.1)
    active.kill()
    assert creating.wait(timeout=120) == 0
    killed_at, submitted_at_kill = time.monotonic(), with_job(stack)
    wait_for(lambda: with_job(stack) >= BURST, 240, "every session submitted", 1.0)
    done = time.monotonic()

    items = listed(stack)
    tags = {job_name("default", i["metadata"]["uid"]): i["status"]["jobId"] for i in items}
    jobs = [j for j in stack.jobs("geneva") if j["name"] in tags]
    per_tag = Counter(j["name"] for j in jobs)
    duplicates = sum(n - 1 for n in per_tag.values())
    wrong = [j for j in jobs if tags[j["name"]] != j["job_id"]]
    print(
        f"\ntwo replicas, {BURST}-session burst: active SIGKILLed with {submitted_at_kill} "
        f"submitted ({killed_at - started:.1f} s in); all submitted {done - started:.1f} s after "
        f"the burst, {done - killed_at:.1f} s after the kill (peering lifetime {LIFETIME_S} s); "
        f"jobs {len(jobs)}, duplicates {duplicates}"
    )
    assert duplicates == 0 and not wrong and len(jobs) == BURST, (per_tag, wrong)
    adopted = standby.log_path.read_text(errors="replace").count("adopted existing job")
    print(f"jobs the dead replica had submitted without recording, adopted by the standby: {adopted}")
    assert adopted >= 1, "no sbatch was in flight at the kill: the test did not test adoption"

    stack.kubectl("delete", "notebooksessions", "--all", "-n", NAMESPACE, "--wait=false")
    stack.kubectl("delete", "notebooksession", "via-standby", "--wait=false")
    wait_for(lambda: not listed(stack), 300, "the burst's sessions to be deleted", 1.0)
    stack.wait_gone("via-standby")
    left = [j for j in stack.jobs("geneva") if j["name"] in tags and j["state"] != "CANCELLED"]
    print(f"orphans after deleting every session: {len(left)}")
    assert left == []
    log = standby.log_path.read_text(errors="replace")
    assert "Traceback" not in log, log[-3000:]
