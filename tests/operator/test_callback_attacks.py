"""Endpoint callbacks cannot be hijacked: each attack gets its own status code and leaves the
session's status as it was; the job's own first report wins. Real operator, real apiserver, the
emulated site (its notebooks are reached at notebookHost 127.0.0.1)."""
# ruff: noqa: E501  (the attack table reads best one row per line)

from __future__ import annotations

import http.client
import json
import secrets
import urllib.parse
from typing import Any

import pytest

from bbp_notebooks.devtools.stack import free_port, wait_for
from bbp_notebooks.operator.tokens import digest
from fixtures.operator import Stack, session

# The job runs, but its kernel setup never finishes: the notebook never reports by itself, so
# the test is the only one who speaks for it.
STALLED_PROFILE = {
    "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
    "kind": "NotebookProfile",
    "metadata": {"name": "stalled"},
    "spec": {"displayName": "Stalled", "cores": 1, "memoryMiB": 512, "kernelSetup": "sleep 600\n"},
}


def post(
    stack: Stack, uid: str, body: bytes, authorization: bytes | None, path: str | None = None
) -> tuple[int, dict[str, Any]]:
    """A raw POST (headers as bytes, so that non-ASCII reaches the server as it is)."""
    url = urllib.parse.urlsplit(stack.operator.url)
    connection = http.client.HTTPConnection(url.hostname or "127.0.0.1", url.port, timeout=30)
    try:
        connection.putrequest("POST", path or f"/v1/sessions/{uid}/endpoint")
        connection.putheader("Content-Type", "application/json")
        connection.putheader("Content-Length", str(len(body)))
        if authorization is not None:
            connection.putheader("Authorization", authorization)
        connection.endheaders(body)
        response = connection.getresponse()
        text = response.read()
    finally:
        connection.close()
    try:
        answer: dict[str, Any] = json.loads(text)
    except ValueError:
        answer = {"raw": text.decode(errors="replace")}
    return response.status, answer


def report(host: str, port: int, job_id: int) -> bytes:
    return json.dumps({"host": host, "port": port, "jobId": job_id}).encode()


@pytest.fixture(scope="module")
def sessions(stack: Stack) -> Any:
    stack.apply(STALLED_PROFILE)
    stack.apply(session("cb-victim", profile="stalled"))
    stack.apply(session("cb-other", user="bob"))

    def running_on_a_node() -> bool:
        status = stack.status("cb-victim")
        return status.get("phase") == "Running" and bool(status.get("node"))

    stack.wait_phase("cb-victim", {"Running"})
    wait_for(running_on_a_node, 30, "cb-victim running with its node known")
    other = stack.wait_phase("cb-other", {"Ready"})
    yield stack, other
    for name in ("cb-victim", "cb-other"):
        stack.kubectl("delete", "notebooksession", name, "--wait=false")
    for name in ("cb-victim", "cb-other"):
        stack.wait_gone(name)
    stack.kubectl("delete", "notebookprofile", "stalled")


def test_callback_attacks_are_refused_and_the_first_true_report_wins(sessions: Any) -> None:
    stack, other = sessions
    victim = stack.get("notebooksession", "cb-victim")
    uid, status = victim["metadata"]["uid"], victim["status"]
    job_id = status["jobId"]
    token = stack.callback_token(job_id)
    other_token = stack.callback_token(other["jobId"])
    assert digest(token) == status["callbackTokenSHA256"]
    assert token not in json.dumps(victim)

    port = free_port()
    good = report("127.0.0.1", port, job_id)
    bearer = f"Bearer {token}".encode()
    attacks: list[tuple[str, bytes, bytes | None, int, str | None]] = [
        ("no Authorization header", good, None, 403, None),
        ("a random token", good, f"Bearer {secrets.token_urlsafe(32)}".encode(), 403, None),
        ("another session's token", good, f"Bearer {other_token}".encode(), 403, "InvalidToken"),
        ("the callback token of bob's job", report("127.0.0.1", port, other["jobId"]), f"Bearer {other_token}".encode(), 403, "InvalidToken"),
        ("the right token, another job id", report("127.0.0.1", port, other["jobId"]), bearer, 403, "WrongJob"),
        ("a foreign host", report("evil.example.org", port, job_id), bearer, 403, "ForeignHost"),
        ("another node's name", report("gva-cn04", port, job_id), bearer, 403, "ForeignHost"),
        ("a privileged port", report("127.0.0.1", 22, job_id), bearer, 422, "PrivilegedPort"),
        ("a non-ASCII Authorization header", good, "Bearer caf\u00e9".encode("latin-1"), 403, None),
        ("a UTF-8 Authorization header", good, f"Bearer {token}\u202e".encode(), 403, None),
        ("another scheme", good, f"Basic {token}".encode(), 403, None),
        ("malformed JSON", b"{not json", bearer, 400, None),
        ("a report with extra nonsense", b'{"host": "127.0.0.1\\n", "port": 1, "jobId": 1}', bearer, 400, None),
        ("an oversized body", b'{"host": "' + b"a" * 20000 + b'"}', bearer, 413, None),
    ]  # fmt: skip
    other_uid = stack.get("notebooksession", "cb-other")["metadata"]["uid"]  # type: ignore[index]
    named = "/v1/namespaces/default/sessions/{}/{}/endpoint".format
    # The namespaced URL (any replica reads the session it names): the name must hold the uid.
    wrong_places = [
        ("the victim's name with bob's uid", named("cb-victim", other_uid), 403, "InvalidToken"),
        ("bob's name with the victim's uid", named("cb-other", uid), 403, "InvalidToken"),
        ("a session that does not exist", named("cb-nobody", uid), 403, "InvalidToken"),
        ("another namespace", f"/v1/namespaces/kube-system/sessions/cb-victim/{uid}/endpoint", 403, "InvalidToken"),
    ]  # fmt: skip
    results = []
    for case, path, expected, reason in wrong_places:
        code, answer = post(stack, uid, good, bearer, path)
        results.append((case, code, answer.get("reason")))
        assert (code, answer.get("reason")) == (expected, reason), f"{case}: {code} {answer}"
        assert stack.status("cb-victim") == status, f"{case} changed the session's status"
    for case, body, authorization, expected, reason in attacks:
        code, answer = post(stack, uid, body, authorization)
        results.append((case, code, answer.get("reason")))
        assert code == expected, f"{case}: {code} {answer}"
        if reason is not None:
            assert answer.get("reason") == reason, f"{case}: {answer}"
        after = stack.status("cb-victim")
        assert after == status, f"{case} changed the session's status"
    assert stack.status("cb-victim").get("endpoint") is None

    code, answer = post(stack, uid, good, bearer, named("cb-victim", uid))
    results.append(("the job's true report (namespaced URL)", code, answer.get("reason")))
    assert code == 200, answer
    ready = stack.wait_phase("cb-victim", {"Ready"})
    assert ready["endpoint"] == {
        "host": "127.0.0.1",
        "port": port,
        "url": f"http://127.0.0.1:{port}",
    }

    for case, body in (
        ("a replay of that report", good),
        ("a second, different report", report("127.0.0.1", port + 1, job_id)),
    ):
        code, answer = post(stack, uid, body, bearer)
        results.append((case, code, answer.get("reason")))
        assert (code, answer.get("reason")) == (409, "AlreadyReported"), f"{case}: {answer}"
        assert stack.status("cb-victim")["endpoint"] == ready["endpoint"]

    print("\ncallback attacks (case -> HTTP status, reason):")
    for case, code, reason in results:
        print(f"  {case:40s} {code} {reason or ''}")
