"""A restart writes nothing that did not change: sessions in a steady state keep their
resourceVersion through an operator restart and the polls after it (no status patch, no kopf
annotation churn). Real operator, real apiserver, the emulated site."""

# ruff: noqa: E501

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from bbp_notebooks.devtools.stack import wait_for
from fixtures.operator import Stack, session

pytestmark = pytest.mark.kube

NAMES = [f"steady-{i}" for i in range(5)]
NAMESPACE = "steady"


@pytest.fixture
def quiet(stack: Stack) -> Iterator[Stack]:
    """The operator serving only this test's namespace, so that every session PATCH the API
    server counts is one of this test's (other tests' sessions may still be settling)."""
    stack.kubectl("create", "namespace", NAMESPACE)
    stack.operator.stop()
    stack.operator.settings["BBP_WATCH_NAMESPACES"] = f'["{NAMESPACE}"]'
    stack.operator.start()
    try:
        yield stack
    finally:
        stack.operator.stop()
        stack.operator.settings.pop("BBP_WATCH_NAMESPACES")
        stack.operator.start()


def steady(name: str, user: str) -> dict[str, object]:
    body = session(name, user=user)
    body["metadata"]["namespace"] = NAMESPACE  # type: ignore[index]
    return body


def versions(stack: Stack) -> dict[str, str]:
    found = {}
    for name in NAMES:
        body = stack.get("notebooksession", name, NAMESPACE)
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


def test_a_restart_writes_nothing_for_sessions_that_did_not_change(quiet: Stack) -> None:
    stack = quiet
    for i, name in enumerate(NAMES):
        stack.apply(steady(name, ("alice", "bob")[i % 2]))
    for name in NAMES:
        wait_for(
            lambda n=name: stack.status(n, NAMESPACE).get("phase") == "Ready", 60, f"{name} Ready"
        )
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
    assert all(stack.status(name, NAMESPACE)["phase"] == "Ready" for name in NAMES)
    for name in NAMES:
        stack.kubectl("delete", "notebooksession", name, "-n", NAMESPACE, "--wait=false")
    wait_for(
        lambda: (
            not stack.kubectl(
                "get", "notebooksessions", "-n", NAMESPACE, "-o", "name"
            ).stdout.strip()
        ),
        60,
        "the steady sessions to go",
    )
