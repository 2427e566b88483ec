"""Failures with names at submission: Slurm refusing the job ends the session at once with
Slurm's words; a refused login is its own reason, warned once and retried with backoff, never
read as an unreachable site. Real operator, real apiserver, the emulated site."""

from __future__ import annotations

import time
from typing import Any

from bbp_notebooks.devtools.stack import wait_for
from fixtures.operator import Stack, condition, session


def test_a_job_slurm_refuses_fails_the_session_at_once_with_slurms_message(stack: Stack) -> None:
    started = time.monotonic()
    stack.apply(session("refused", site="lugano", account="no-such-project"))
    status = stack.wait_phase("refused", {"Failed", "Queued", "Running", "Ready"}, timeout=30)
    elapsed = time.monotonic() - started
    assert status["phase"] == "Failed", status
    submitted = condition(status, "Submitted")
    assert submitted["reason"] == "SubmissionRejected"
    assert "Invalid account" in submitted["message"], submitted
    assert "Invalid account" in status["message"]  # what the hub shows the user
    assert condition(status, "SiteReachable")["status"] == "True"
    assert "jobId" not in status
    (event,) = stack.warnings("refused", "SubmissionRejected")
    assert "Invalid account" in event["message"]
    print(f"\nsbatch refusal -> session Failed with Slurm's message: {elapsed:.1f} s")
    stack.kubectl("delete", "notebooksession", "refused", "--wait=false")
    stack.wait_gone("refused", timeout=20)


def test_a_refused_login_is_named_warned_once_and_backed_off(stack: Stack) -> None:
    stack.apply(session("no-login", user="nosuchuser9"))

    def refused() -> dict[str, Any] | None:
        status = stack.status("no-login")
        reachable = [c for c in status.get("conditions", []) if c["type"] == "SiteReachable"]
        return status if reachable and reachable[0]["reason"] == "LoginRefused" else None

    status = wait_for(refused, 30, "the LoginRefused condition")
    assert status["phase"] == "Pending"
    assert condition(status, "Submitted")["reason"] == "LoginRefused"
    assert "Permission denied for user nosuchuser9" in condition(status, "SiteReachable")["message"]
    time.sleep(15)  # a site-unavailable retry would have come every 15 s; this one waits 60
    attempts = stack.operator.log_path.read_text(errors="replace").count("LoginRefused: geneva")
    assert attempts == 1, f"{attempts} login attempts in 15 s"
    warnings = stack.warnings("no-login", "LoginRefused")
    assert len(warnings) == 1 and warnings[0].get("count", 1) == 1, warnings
    stack.kubectl("delete", "notebooksession", "no-login", "--wait=false")
    stack.wait_gone("no-login", timeout=20)
