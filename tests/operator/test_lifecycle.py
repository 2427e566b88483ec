"""A NotebookSession becomes a Slurm job at the right site; status and endpoint come back."""

from __future__ import annotations

import urllib.request

import pytest

from fixtures.operator import Stack, session

pytestmark = pytest.mark.kube


def test_a_session_goes_queued_running_ready_and_its_notebook_answers(stack: Stack) -> None:
    stack.apply(session("lifecycle"))
    seen: list[str] = []

    def record() -> bool:
        phase = stack.status("lifecycle").get("phase")
        if phase and (not seen or seen[-1] != phase):
            seen.append(phase)
        return phase == "Ready"

    from bbp_notebooks.devtools.stack import wait_for

    wait_for(record, 60, "Ready", 0.05)
    status = stack.status("lifecycle")
    assert status["site"] == "geneva" and status["jobId"] >= 1000000
    assert status["endpoint"]["host"] == "127.0.0.1"
    conditions = {c["type"]: c for c in status["conditions"]}
    assert {
        t: conditions[t]["status"] for t in ("Submitted", "Running", "Ready", "SiteReachable")
    } == {"Submitted": "True", "Running": "True", "Ready": "True", "SiteReachable": "True"}
    assert seen[-1] == "Ready" and "Queued" in seen or "Running" in seen, seen
    with urllib.request.urlopen(status["endpoint"]["url"], timeout=5) as response:  # noqa: S310
        assert response.status == 200

    job = stack.jobs(name=f"bbpnb-{stack.get('notebooksession', 'lifecycle')['metadata']['uid']}")
    assert [j["job_id"] for j in job] == [status["jobId"]]
    assert stack.kubectl("delete", "notebooksession", "lifecycle", "--wait=false").returncode == 0
    stack.wait_gone("lifecycle")
    ended = [j for j in stack.jobs() if j["job_id"] == status["jobId"]]
    assert ended and ended[0]["state"] == "CANCELLED", ended
