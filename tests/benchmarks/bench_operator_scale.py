"""Slurm commands per poll interval against the number of sessions: must stay a small constant.

Run: python -m pytest tests/benchmarks/bench_operator_scale.py -s
Sessions are created in steps (10, 100, 1000) at Geneva with the queue stuck pending (no job
processes); after each step the mock's command counters are read over several intervals.
"""

from __future__ import annotations

import json
import time

import pytest

from bbp_notebooks.devtools.admission import admin_annotations
from bbp_notebooks.devtools.stack import wait_for
from fixtures.operator import Stack

pytestmark = [pytest.mark.kube, pytest.mark.benchmark, pytest.mark.timeout(1200)]
NAMESPACE = "scale"
STEPS = (10, 100, 1000)
INTERVALS = 10
POLL_SECONDS = 1


def _sessions(start: int, stop: int) -> str:
    items = [
        {
            "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
            "kind": "NotebookSession",
            "metadata": {
                "name": f"s{i:04d}",
                "namespace": NAMESPACE,
                "annotations": admin_annotations(),
            },
            "spec": {"user": ("alice", "bob")[i % 2], "profile": "bluepy", "site": "geneva"},
        }
        for i in range(start, stop)
    ]
    return json.dumps({"apiVersion": "v1", "kind": "List", "items": items})


def _poll_seconds(stack: Stack) -> float:
    """Mean duration of geneva's polls so far, from the operator's own histogram."""
    values = {}
    for line in stack.operator.metrics().splitlines():
        for key in ("sum", "count"):
            if line.startswith(f'bbp_notebooks_site_poll_seconds_{key}{{site="geneva"}}'):
                values[key] = float(line.split()[-1])
    return values["sum"] / max(values["count"], 1)


def _delete_all(stack: Stack) -> None:
    """Delete every scale session (a few in parallel); the operator's finalizers cancel the jobs."""
    from concurrent.futures import ThreadPoolExecutor

    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    api = stack.cp.api_client()
    custom = client.CustomObjectsApi(api)

    def delete(name: str) -> None:
        try:
            custom.delete_namespaced_custom_object(
                "notebooks.bbp.epfl.ch", "v1alpha1", NAMESPACE, "notebooksessions", name
            )
        except ApiException as error:
            if error.status != 404:
                raise

    try:
        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(delete, [f"s{i:04d}" for i in range(STEPS[-1])]))
    finally:
        api.close()


def _observed(stack: Stack) -> int:
    """Sessions whose job the site poller has seen in the queue (status.queue is set)."""
    result = stack.kubectl("get", "notebooksessions", "-n", NAMESPACE, "-o", "json")
    items = json.loads(result.stdout)["items"]
    return sum(1 for item in items if item.get("status", {}).get("queue"))


def test_slurm_commands_per_interval_do_not_grow_with_sessions(stack: Stack) -> None:
    stack.kubectl("create", "namespace", NAMESPACE)
    stack.mock.faults("geneva", stuck_pending=True)
    rows = []
    created = 0
    try:
        for target in STEPS:
            started = time.monotonic()
            result = stack.kubectl(
                "apply", "--server-side", "-f", "-", stdin=_sessions(created, target)
            )
            assert result.returncode == 0, result.stderr
            created = target
            wait_for(
                lambda n=created: _observed(stack) >= n, 600, f"{created} sessions queued", 1.0
            )
            submit_seconds = time.monotonic() - started
            stack.mock.reset_commands("geneva")
            time.sleep(INTERVALS * POLL_SECONDS)
            counts = stack.mock.commands("geneva")
            per_interval = sum(counts.values()) / INTERVALS
            rows.append((created, per_interval, dict(counts), submit_seconds, _poll_seconds(stack)))
    finally:
        delete_started = time.monotonic()
        try:
            _delete_all(stack)
        except Exception as error:  # never hide the measurement's own failure behind cleanup's
            print(f"cleanup failed: {error}")

    print(
        "\nsessions | Slurm commands per poll interval (geneva)"
        f" | commands over {INTERVALS} intervals"
        " | time to submit and observe the step | mean poll duration so far"
    )
    for sessions, per_interval, counts, seconds, poll in rows:
        print(f"{sessions:8d} | {per_interval:6.1f} | {counts} | {seconds:.1f} s | {poll:.2f} s")
    # Commands per poll are constant (sinfo + squeue, sacct only for jobs that left the queue);
    # when a poll takes longer than the interval there are fewer polls, never more commands.
    assert all(per_interval <= 6 for _, per_interval, _, _, _ in rows), rows
    assert rows[-1][1] <= rows[0][1] + 2, rows

    def drained() -> bool:
        result = stack.kubectl("get", "notebooksessions", "-n", NAMESPACE, "-o", "name")
        return result.returncode == 0 and not result.stdout.strip()

    try:
        wait_for(drained, 900, "the scale sessions to be deleted (jobs cancelled)", 2.0)
    finally:
        # Only now may the queue move: releasing it earlier would start 1000 notebooks.
        stack.mock.faults("geneva", stuck_pending=False)
    print(
        f"deleting {STEPS[-1]} sessions (cancel + confirm each job): "
        f"{time.monotonic() - delete_started:.0f} s"
    )
