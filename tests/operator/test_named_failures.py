"""More failures with names, as processes: a job hidden from the monitor (PrivateData) is asked
about as its owner and never ends for it; many hidden at once trip the site's breaker; a changed
host key and an unreadable CA each get their own reason, once, with no retry storm.
Real operator, real apiserver, the emulated site."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from bbp_notebooks.devtools.stack import wait_for
from fixtures.operator import Stack, condition, session

pytestmark = pytest.mark.kube

GRACE_S = 4


@pytest.fixture(scope="module")
def short_grace(stack: Stack) -> Iterator[Stack]:
    stack.operator.stop()
    stack.operator.settings["BBP_MISSING_JOB_GRACE_SECONDS"] = str(GRACE_S)
    stack.operator.start()
    try:
        yield stack
    finally:
        stack.mock.faults("geneva", private_jobs=False, private_job_ids=[])
        stack.operator.stop()
        stack.operator.settings.pop("BBP_MISSING_JOB_GRACE_SECONDS")
        stack.operator.start()


def site(stack: Stack, name: str) -> dict[str, Any]:
    found = stack.get("slurmsite", name, namespace="")
    assert found is not None
    return found


def site_condition(stack: Stack, name: str, type_: str) -> dict[str, Any] | None:
    conditions = site(stack, name).get("status", {}).get("conditions", [])
    return next((c for c in conditions if c["type"] == type_), None)


def finish(stack: Stack, *names: str) -> None:
    for name in names:
        stack.kubectl("delete", "notebooksession", name, "--wait=false")
    for name in names:
        stack.wait_gone(name, timeout=60)


def test_a_job_hidden_from_the_monitor_is_confirmed_by_its_owner_and_keeps_running(
    short_grace: Stack,
) -> None:
    stack = short_grace
    stack.apply(session("hidden"))
    job_id = stack.wait_phase("hidden", {"Ready"})["jobId"]
    stack.mock.faults("geneva", private_job_ids=[job_id])  # the monitor no longer sees it
    try:
        commands_before = stack.mock.commands("geneva").get("squeue", 0)
        deadline = time.monotonic() + GRACE_S + 8  # well past the grace: it was looked for
        while time.monotonic() < deadline:
            assert stack.status("hidden")["phase"] == "Ready", stack.status("hidden")
            time.sleep(0.5)
        asked = stack.mock.commands("geneva").get("squeue", 0) - commands_before
        visible = site_condition(stack, "geneva", "JobsVisible")
        assert visible is not None and visible["status"] == "True", visible  # one: no breaker
        assert asked > 0
        log = stack.operator.log_path.read_text(errors="replace")
        assert "owner could not be asked" not in log
    finally:
        stack.mock.faults("geneva", private_job_ids=[])
    finish(stack, "hidden")


def test_many_jobs_hidden_at_once_mark_the_site_not_the_sessions(short_grace: Stack) -> None:
    stack = short_grace
    names = ["blind-0", "blind-1", "blind-2"]
    for i, name in enumerate(names):
        stack.apply(session(name, user=("alice", "bob")[i % 2]))
    for name in names:
        stack.wait_phase(name, {"Ready"})
    stack.mock.faults("geneva", private_jobs=True)
    try:

        def tripped() -> dict[str, Any] | None:
            found = site_condition(stack, "geneva", "JobsVisible")
            return found if found and found["status"] == "False" else None

        visible = wait_for(tripped, GRACE_S + 20, "the JobsVisible=False breaker")
        assert visible["reason"] == "ManyJobsMissing", visible
        assert int(visible["message"].split(" sessions")[0]) >= 3, visible  # others' may be too
        time.sleep(3)
        assert [stack.status(n)["phase"] for n in names] == ["Ready"] * 3
    finally:
        stack.mock.faults("geneva", private_jobs=False)
    recovered = wait_for(
        lambda: (c := site_condition(stack, "geneva", "JobsVisible")) and c["status"] == "True",
        20,
        "JobsVisible to recover",
    )
    assert recovered
    finish(stack, *names)


def patch_site(stack: Stack, name: str, patch: dict[str, Any]) -> None:
    result = stack.kubectl("patch", "slurmsite", name, "--type=merge", "-p", json.dumps(patch))
    assert result.returncode == 0, result.stderr


def test_a_changed_host_key_is_named_warned_once_and_not_retried_like_an_outage(
    stack: Stack,
) -> None:
    original = site(stack, "lugano")["spec"]["hostKeys"]
    forged = (
        "127.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFvY3xV3TjCkEpeNZXJtYKtAPTPE8Jo3o8C9zvJ0wWtB"
    )
    patch_site(stack, "lugano", {"spec": {"hostKeys": {"knownHosts": [forged]}}})
    try:
        stack.apply(session("mitm", site="lugano", account="proj-a"))

        def mismatch() -> dict[str, Any] | None:
            status = stack.status("mitm")
            reachable = [c for c in status.get("conditions", []) if c["type"] == "SiteReachable"]
            return status if reachable and reachable[0]["reason"] == "HostKeyMismatch" else None

        status = wait_for(mismatch, 30, "the HostKeyMismatch condition")
        assert status["phase"] == "Pending" and "jobId" not in status
        time.sleep(16)  # an unreachable site is retried every 15 s; this waits 15 min
        attempts = stack.operator.log_path.read_text(errors="replace").count(
            "HostKeyMismatch: lugano"
        )
        assert attempts == 1, f"{attempts} attempts in 16 s"
        (event,) = stack.warnings("mitm", "HostKeyMismatch")
        assert "lugano" in event["message"]
    finally:
        patch_site(stack, "lugano", {"spec": {"hostKeys": original}})
    finish(stack, "mitm")


def test_an_unreadable_ca_is_its_own_reason_on_the_session_and_the_site(stack: Stack) -> None:
    original = site(stack, "lugano")["spec"]["auth"]["caSecretName"]
    patch_site(stack, "lugano", {"spec": {"auth": {"caSecretName": "no-such-ca"}}})
    try:
        stack.apply(session("no-ca", site="lugano", account="proj-a"))

        def named() -> dict[str, Any] | None:
            status = stack.status("no-ca")
            found = [c for c in status.get("conditions", []) if c["type"] == "SiteReachable"]
            return status if found and found[0]["reason"] == "CredentialsUnavailable" else None

        status = wait_for(named, 30, "SiteReachable=False CredentialsUnavailable")
        assert "no-such-ca" in condition(status, "SiteReachable")["message"]
        assert status["phase"] == "Pending"
        reachable = wait_for(
            lambda: (
                (c := site_condition(stack, "lugano", "Reachable"))
                and c["reason"] == "CredentialsUnavailable"
                and c
            ),
            30,
            "the SlurmSite to name it",
        )
        assert reachable["status"] == "False"
        log = stack.operator.log_path.read_text(errors="replace")
        assert "site lugano: the operator's credentials are unusable" in log
    finally:
        patch_site(stack, "lugano", {"spec": {"auth": {"caSecretName": original}}})
    stack.wait_phase("no-ca", {"Ready"}, timeout=90)  # heals by itself once the CA is readable
    finish(stack, "no-ca")
