"""A NotebookSession becomes a Slurm job at the right site; status and endpoint come back."""

from __future__ import annotations

import urllib.request

import pytest

from bbp_notebooks.operator.planning import job_name
from fixtures.operator import Stack, session

pytestmark = pytest.mark.kube


def test_a_session_goes_queued_running_ready_and_its_notebook_answers(stack: Stack) -> None:
    log_start = stack.operator.log_path.stat().st_size
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
    assert seen[-1] == "Ready" and {"Queued", "Running"} & set(seen[:-1]), seen
    with urllib.request.urlopen(status["endpoint"]["url"], timeout=5) as response:  # noqa: S310
        assert response.status == 200

    job = stack.jobs(
        name=job_name("default", stack.get("notebooksession", "lifecycle")["metadata"]["uid"])
    )
    assert [j["job_id"] for j in job] == [status["jobId"]]
    assert stack.kubectl("delete", "notebooksession", "lifecycle", "--wait=false").returncode == 0
    stack.wait_gone("lifecycle")
    ended = [j for j in stack.jobs() if j["job_id"] == status["jobId"]]
    assert ended and ended[0]["state"] == "CANCELLED", ended
    # A normal start and stop is no failure: not one ERROR line (waiting for Slurm is progress).
    with stack.operator.log_path.open("rb") as log:
        log.seek(log_start)
        errors = [
            line for line in log.read().decode(errors="replace").splitlines() if "[ERROR" in line
        ]
    assert errors == [], errors


def test_site_status_reports_availability_version_and_users_accounts(stack: Stack) -> None:
    from bbp_notebooks.devtools.stack import wait_for

    def polled() -> dict[str, object] | None:
        site = stack.get("slurmsite", "lugano", namespace="")
        status = (site or {}).get("status", {})
        return status if status.get("userAccounts") else None

    status = wait_for(polled, 30, "lugano's status")
    assert {c["type"]: c["status"] for c in status["conditions"]} == {
        "Reachable": "True",
        "JobsVisible": "True",
    }
    assert status["slurmVersion"].startswith("22.05")
    assert status["partitions"][0]["totalNodes"] == 4 and status["idleNodes"] <= 4
    accounts = {entry["user"]: entry["accounts"] for entry in status["userAccounts"]}
    assert accounts["alice"] == ["proj-a", "proj-b"] and accounts["bob"] == ["proj-b"]
    geneva = stack.get("slurmsite", "geneva", namespace="")
    assert geneva is not None
    # prod and debug share geneva's 8 nodes: the site's idle count must not add them up.
    assert geneva["status"]["idleNodes"] <= 8
    listing = stack.kubectl("get", "slurmsites")
    assert "lugano" in listing.stdout and "True" in listing.stdout
