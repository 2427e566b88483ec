"""kerberos.saveRenewedTickets on the API server, with the chart's own operator token: the operator
writes a renewed ticket (the very patch operator/kerberos.py sends) into a user's ticket Secret in
the sessions namespace, and nothing else — no other Secret there (the admission policy: RBAC
cannot select by label), no other change to a ticket Secret, no Secret in another namespace, no
create, delete or list."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bbp_notebooks.api.kerberos import (
    TICKET_EXPIRY_ANNOTATION,
    TICKET_LABEL,
    TICKET_USER_ANNOTATION,
    Ticket,
    ticket_secret_name,
)
from bbp_notebooks.devtools.controlplane import ControlPlane
from bbp_notebooks.devtools.stack import wait_for
from bbp_notebooks.operator.kerberos import renewed_ticket_patch
from chart.helmchart import Release, install, run

pytestmark = pytest.mark.kube

TICKET = ticket_secret_name("alice")
ENV_SECRET = "alice-notebook-env"  # noqa: S105  (a Secret name)


def secret(name: str, namespace: str, *, ticket: bool) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if ticket:
        metadata["labels"] = {TICKET_LABEL: "true"}
        metadata["annotations"] = {TICKET_USER_ANNOTATION: "alice"}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": metadata,
        "data": {"ccache" if ticket else "TOKEN": base64.b64encode(b"before").decode()},
    }


@pytest.fixture(scope="module")
def release(control_plane: ControlPlane) -> Iterator[Release]:
    release = install(
        control_plane,
        "krbtickets",
        namespace="bbp-krbtickets",
        values={
            "hub": {"enabled": False},
            "sessions": {"namespace": "krbtickets-sessions"},
            "kerberos": {"enabled": True, "realm": "EXAMPLE.ORG", "kdcs": ["192.0.2.10"]},
            "slurmSites": [],
            "notebookProfiles": [],
        },
    )
    control_plane.ensure_namespace("krbtickets-elsewhere")
    objects = [
        secret(TICKET, release.session_namespace, ticket=True),
        secret(ENV_SECRET, release.session_namespace, ticket=False),
        secret(TICKET, "krbtickets-elsewhere", ticket=True),
    ]
    release.kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))
    yield release
    release.remove()


@pytest.fixture(scope="module")
def as_operator(release: Release) -> Iterator[Any]:
    kubeconfig: Path = release.operator_kubeconfig()

    def kubectl(*args: str) -> subprocess.CompletedProcess[str]:
        return run(["kubectl", "--kubeconfig", str(kubeconfig), *args], release.env, timeout=60)

    # The policy is enforced a moment after it is created: until then a write it forbids passes.
    # Wait for its first refusal before any test trusts a refusal or an acceptance.
    def enforced() -> bool:
        result = kubectl(
            "patch", "secret", ENV_SECRET, "-n", release.session_namespace, "--type=merge",
            "-p", json.dumps({"metadata": {"annotations": {"probe": "x"}}}),
        )  # fmt: skip
        return result.returncode != 0 and "may write only Kerberos ticket Secrets" in result.stderr

    wait_for(enforced, 60, "the ticket Secret policy to be enforced", 0.5)
    yield kubectl


def _renewed() -> Ticket:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    return Ticket(
        principal="alice@EXAMPLE.ORG", realm="EXAMPLE.ORG", start=now,
        end=now + dt.timedelta(hours=10), renew_until=now + dt.timedelta(days=7),
        forwardable=True, data=b"renewed ccache bytes",
    )  # fmt: skip


def _patch(kubectl: Any, namespace: str, name: str, body: dict[str, Any]) -> Any:
    return kubectl("patch", "secret", name, "-n", namespace, "--type=merge", "-p", json.dumps(body))


def test_the_operator_writes_a_renewed_ticket_into_the_users_ticket_secret(
    release: Release, as_operator: Any
) -> None:
    ticket = _renewed()
    result = _patch(as_operator, release.session_namespace, TICKET, renewed_ticket_patch(ticket))
    assert result.returncode == 0, result.stderr
    stored = json.loads(
        release.kubectl("get", "secret", TICKET, "-n", release.session_namespace, "-o", "json")
    )
    assert base64.b64decode(stored["data"]["ccache"]) == ticket.data
    assert stored["metadata"]["annotations"][TICKET_EXPIRY_ANNOTATION] == ticket.end.isoformat()
    assert stored["metadata"]["labels"] == {TICKET_LABEL: "true"}


REFUSED_PATCHES = {
    "another data key": ({"data": {"stolen": "eA=="}}, "nothing else"),
    "the label removed": ({"metadata": {"labels": {TICKET_LABEL: None}}}, "labels"),
    "another label": ({"metadata": {"labels": {"x": "y"}}}, "labels"),
    "whose ticket": ({"metadata": {"annotations": {TICKET_USER_ANNOTATION: "bob"}}}, "whose"),
    "an owner": (
        {
            "metadata": {
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "name": "x",
                        "uid": "00000000-0000-0000-0000-000000000001",
                    }
                ]
            }
        },
        "owners",
    ),  # fmt: skip
}


@pytest.mark.parametrize("change", sorted(REFUSED_PATCHES))
def test_nothing_but_the_ticket_may_change(release: Release, as_operator: Any, change: str) -> None:
    body, words = REFUSED_PATCHES[change]
    result = _patch(as_operator, release.session_namespace, TICKET, body)
    assert result.returncode != 0 and words in result.stderr, (result.returncode, result.stderr)


def test_no_other_secret_in_the_sessions_namespace(release: Release, as_operator: Any) -> None:
    result = _patch(
        as_operator, release.session_namespace, ENV_SECRET, renewed_ticket_patch(_renewed())
    )
    assert result.returncode != 0
    assert "may write only Kerberos ticket Secrets" in result.stderr, result.stderr
    stored = json.loads(
        release.kubectl("get", "secret", ENV_SECRET, "-n", release.session_namespace, "-o", "json")
    )
    assert "ccache" not in stored["data"]


@pytest.mark.parametrize(
    "verb",
    [
        ("patch", "secrets/" + TICKET, "-n", "krbtickets-elsewhere"),
        ("update", "secrets/" + TICKET, "-n", "{sessions}"),
        ("create", "secrets", "-n", "{sessions}"),
        ("delete", "secrets/" + TICKET, "-n", "{sessions}"),
        ("list", "secrets", "-n", "{sessions}"),
        ("patch", "secrets/bbp-user-ca", "-n", "{release}"),
    ],
    ids=lambda v: " ".join(v),
)
def test_rbac_grants_patch_in_the_sessions_namespace_only(
    release: Release, as_operator: Any, verb: tuple[str, ...]
) -> None:
    scope = [a.format(sessions=release.session_namespace, release=release.namespace) for a in verb]
    result = as_operator("auth", "can-i", *scope)
    assert result.stdout.strip() == "no", (scope, result.stdout, result.stderr)
    assert (
        as_operator(
            "auth", "can-i", "patch", "secrets/" + TICKET, "-n", release.session_namespace
        ).stdout.strip()
        == "yes"
    )
