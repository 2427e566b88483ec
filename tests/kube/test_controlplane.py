"""The local control plane itself: a real API server that serves installed CRDs, enforces RBAC on
minted identities, and leaves no process behind when stopped."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from bbp_notebooks.devtools.controlplane import ControlPlane, repo_root
from bbp_notebooks.devtools.waiting import wait_until

pytestmark = pytest.mark.kube


WIDGET_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.controlplane-test.bbp.local"},
    "spec": {
        "group": "controlplane-test.bbp.local",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {"size": {"type": "integer", "minimum": 1}},
                            }
                        },
                    }
                },
            }
        ],
    },
}


def status_of(call: Callable[[], object]) -> int:
    try:
        call()
    except ApiException as error:
        return int(error.status)
    return 200


def pinned(name: str) -> str:
    for line in (repo_root() / "scripts" / "tools.env").read_text().splitlines():
        if line.startswith(f"{name}="):
            return line.split("=", 1)[1]
    raise AssertionError(f"{name} is not pinned in scripts/tools.env")


def process_exists(pid: int) -> bool:
    """True while the PID names a process that has not exited (a zombie has exited)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat[stat.rindex(")") + 2] not in "ZX"


def test_the_api_server_runs_the_pinned_kubernetes_version(kube_api: Any) -> None:
    assert client.VersionApi(kube_api).get_code().git_version == pinned("KUBERNETES_VERSION")


def test_install_crds_waits_until_the_api_server_serves_the_new_kind(
    control_plane: ControlPlane, kube_api: Any, tmp_path: Path
) -> None:
    (tmp_path / "widgets.yaml").write_text(yaml.safe_dump(WIDGET_CRD))
    (tmp_path / "notes.txt").write_text("not a manifest: ignored")

    assert control_plane.install_crds(tmp_path) == ["widgets.controlplane-test.bbp.local"]

    # No retry here: install_crds returned, so the kind must be served right away.
    objects = client.CustomObjectsApi(kube_api)
    group, version, plural = "controlplane-test.bbp.local", "v1", "widgets"
    objects.create_namespaced_custom_object(
        group,
        version,
        "default",
        plural,
        {
            "apiVersion": f"{group}/{version}",
            "kind": "Widget",
            "metadata": {"name": "w1"},
            "spec": {"size": 3},
        },
    )
    stored = objects.get_namespaced_custom_object(group, version, "default", plural, "w1")
    assert isinstance(stored, dict)
    assert stored["spec"] == {"size": 3}
    with pytest.raises(ApiException) as refused:
        objects.create_namespaced_custom_object(
            group,
            version,
            "default",
            plural,
            {
                "apiVersion": f"{group}/{version}",
                "kind": "Widget",
                "metadata": {"name": "w2"},
                "spec": {"size": 0},
            },
        )
    assert refused.value.status == 422  # the schema is enforced: a real API server


def test_a_minted_identity_gets_exactly_what_its_role_grants(
    control_plane: ControlPlane, kube_api: Any
) -> None:
    namespace = "rbac-probe"
    kubeconfig = control_plane.mint_identity(namespace, "reader")
    identity = control_plane.api_client(kubeconfig)
    try:
        review = client.AuthenticationV1Api(identity).create_self_subject_review(
            client.V1SelfSubjectReview()
        )
        assert review.status and review.status.user_info
        assert review.status.user_info.username == f"system:serviceaccount:{namespace}:reader"

        core = client.CoreV1Api(identity)
        assert status_of(lambda: core.list_namespaced_config_map(namespace)) == 403

        rbac = client.RbacAuthorizationV1Api(kube_api)
        rbac.create_namespaced_role(
            namespace,
            client.V1Role(
                metadata=client.V1ObjectMeta(name="configmap-reader"),
                rules=[
                    client.V1PolicyRule(
                        api_groups=[""], resources=["configmaps"], verbs=["get", "list"]
                    )
                ],
            ),
        )
        rbac.create_namespaced_role_binding(
            namespace,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name="reader-reads-configmaps"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="configmap-reader"
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name="reader", namespace=namespace)
                ],
            ),
        )
        # The authoriser reads RBAC objects from a watch cache: the grant lands within moments.
        wait_until(
            lambda: core.list_namespaced_config_map(namespace),
            10,
            "the Role granting configmap reads to take effect",
            retry_on=(ApiException,),
        )

        assert status_of(lambda: core.list_namespaced_secret(namespace)) == 403
        assert status_of(lambda: core.list_namespaced_config_map("default")) == 403
        assert (
            status_of(
                lambda: core.create_namespaced_config_map(
                    namespace, client.V1ConfigMap(metadata=client.V1ObjectMeta(name="nope"))
                )
            )
            == 403
        )
    finally:
        identity.close()


def test_stop_leaves_no_process_behind(tmp_path: Path) -> None:
    plane = ControlPlane(tmp_path / "plane")
    plane.start()
    try:
        started = plane.processes()
        assert sorted(p.name for p in started) == ["etcd", "kube-apiserver"]
        assert all(process_exists(p.pid) for p in started)
    finally:
        plane.stop()

    # Reaped, not merely exited: no zombie either.
    assert [p for p in started if Path(f"/proc/{p.pid}").exists()] == []
    assert plane.processes() == []


def test_cli_up_detach_then_down_stops_what_up_started(tmp_path: Path) -> None:
    workdir, empty_crds = tmp_path / "plane", tmp_path / "crds"
    empty_crds.mkdir()
    cli = [sys.executable, "-m", "bbp_notebooks.devtools.controlplane", "--workdir", str(workdir)]

    up = subprocess.run(
        [*cli, "up", "--detach", "--crds", str(empty_crds)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    assert f"export KUBECONFIG={workdir / 'kubeconfig'}" in up.stdout
    plane = ControlPlane(workdir)
    started = plane.processes()
    try:
        assert all(process_exists(p.pid) for p in started)
        get = subprocess.run(
            ["kubectl", "get", "namespace", "default", "-o", "name"],
            env=plane.env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert get.stdout.strip() == "namespace/default", get.stderr
    finally:
        down = subprocess.run(
            [*cli, "down"], capture_output=True, text=True, timeout=60, check=False, env=os.environ
        )
    assert down.returncode == 0, down.stderr
    # These were children of the `up` process, which has exited; init reaps them.
    assert [p for p in started if process_exists(p.pid)] == []
