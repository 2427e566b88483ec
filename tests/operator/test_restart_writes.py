"""A restart writes nothing that did not change: sessions in a steady state keep their
resourceVersion through an operator restart and the polls after it (no status patch, no kopf
annotation churn). Real operator, real apiserver, the emulated site."""

from __future__ import annotations

import time

import pytest

from fixtures.operator import Stack, session

pytestmark = pytest.mark.kube

NAMES = [f"steady-{i}" for i in range(5)]


def versions(stack: Stack) -> dict[str, str]:
    found = {}
    for name in NAMES:
        body = stack.get("notebooksession", name)
        assert body is not None
        found[name] = body["metadata"]["resourceVersion"]
    return found


def session_patches(stack: Stack) -> int:
    """PATCH requests for NotebookSessions (status included) the API server has served, from its
    own metrics: a no-op patch leaves resourceVersion alone but is still counted here."""
    text = stack.kubectl("get", "--raw", "/metrics").stdout
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("apiserver_request_total{")
            and 'resource="notebooksessions"' in line
            and 'verb="PATCH"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return int(total)


def test_a_restart_writes_nothing_for_sessions_that_did_not_change(stack: Stack) -> None:
    for i, name in enumerate(NAMES):
        stack.apply(session(name, user=("alice", "bob")[i % 2]))
    for name in NAMES:
        stack.wait_phase(name, {"Ready"})
    time.sleep(3)  # a few 1 s polls: the steady state
    before, patches = versions(stack), session_patches(stack)
    time.sleep(3)
    assert versions(stack) == before, "steady polls wrote to unchanged sessions"
    assert session_patches(stack) == patches, "steady polls sent patches"

    stack.operator.stop()
    stack.operator.start()
    time.sleep(6)  # resume handlers for every session, then several polls
    after, sent = versions(stack), session_patches(stack) - patches
    changed = [name for name in NAMES if after[name] != before[name]]
    print(f"\nrestart, {len(NAMES)} steady sessions: {len(changed)} changed, {sent} PATCH requests")
    assert changed == [], {n: (before[n], after[n]) for n in changed}
    assert sent == 0
    assert all(stack.status(name)["phase"] == "Ready" for name in NAMES)
    for name in NAMES:
        stack.kubectl("delete", "notebooksession", name, "--wait=false")
    for name in NAMES:
        stack.wait_gone(name)
