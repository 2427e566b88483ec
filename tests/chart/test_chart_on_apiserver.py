"""The chart in a real kube-apiserver: every rendering applies, install and upgrade keep sessions,
and the operator's ServiceAccount can do its work and nothing it must not.

There is no kubelet or controller manager: pods never run, so these tests check objects and
authorisation, never pods.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bbp_notebooks.api.constants import CREATED_BY_ANNOTATION
from bbp_notebooks.api.settings import OperatorSettings
from bbp_notebooks.devtools.admission import ADMIN_USER
from bbp_notebooks.devtools.controlplane import ControlPlane
from bbp_notebooks.devtools.stack import wait_for
from chart.helmchart import (
    REFERENCED_NAMESPACES,
    Release,
    combinations,
    documents,
    find,
    install,
    run,
    ssh_keypair,
    template_text,
    tool_env,
)

pytestmark = pytest.mark.kube
HERE = Path(__file__).resolve().parent
GROUP = "notebooks.bbp.epfl.ch"


def kubectl(
    env: dict[str, str], *args: str, stdin: str | None = None, kubeconfig: Path | None = None
) -> subprocess.CompletedProcess[str]:
    config = ["--kubeconfig", str(kubeconfig)] if kubeconfig else []
    return run(["kubectl", *config, *args], env, stdin=stdin, timeout=60)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def session_manifest(
    name: str, namespace: str, user: str = "alice", created_by: str = ADMIN_USER
) -> str:
    """A session as `created_by` creates it (the admission policy wants the creator's name)."""
    return yaml.safe_dump(
        {
            "apiVersion": f"{GROUP}/v1alpha1",
            "kind": "NotebookSession",
            "metadata": {
                "name": name,
                "namespace": namespace,
                "annotations": {CREATED_BY_ANNOTATION: created_by},
            },
            "spec": {"user": user, "profile": "bluepy", "site": "geneva"},
        }
    )


@pytest.fixture(scope="module")
def env(control_plane: ControlPlane) -> dict[str, str]:
    return tool_env(control_plane, home=control_plane.workdir / "helm-home")


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("keys")


# -- helm template | kubectl apply ----------------------------------------------------------


@pytest.fixture(scope="module")
def prepared(control_plane: ControlPlane, env: dict[str, str]) -> dict[str, str]:
    """The CRDs the renderings need (ServiceMonitor's stand-in; ours are installed by the
    control-plane fixture) and the namespaces they refer to."""
    control_plane.install_crds(HERE, timeout=60)  # servicemonitor-crd.yaml
    for namespace in REFERENCED_NAMESPACES:
        control_plane.ensure_namespace(namespace)
    return env


CLUSTER_SCOPED = {
    "Namespace",
    "ClusterRole",
    "ClusterRoleBinding",
    "CustomResourceDefinition",
    "SlurmSite",
    "NotebookProfile",
    "ClusterKopfPeering",
}


def in_namespace(doc: dict[str, Any], namespace: str) -> dict[str, Any]:
    """What helm does on install: a namespaced object without a namespace goes in the release's."""
    if doc["kind"] not in CLUSTER_SCOPED:
        doc["metadata"].setdefault("namespace", namespace)
    return doc


COMBOS = [
    "defaults",
    "high-availability",
    "namespaced",
    "kind-with-mock-slurm",
    "oauth-hub",
    "operator-only",
]


@pytest.mark.parametrize("combo", COMBOS)
def test_each_rendering_is_accepted_by_the_api_server_dry_run_then_for_real(
    control_plane: ControlPlane, prepared: dict[str, str], keys: Path, combo: str
) -> None:
    env = prepared
    namespace = f"tpl-{combo}"
    values = combinations(keys)[combo]
    # Its own admission policy name: applying over the control-plane fixture's policy would
    # change whom the cluster trusts as the hub. Removed again below, for the same reason.
    policy = f"tpl-{combo}-sessions"
    operator_values = values.setdefault("operator", {})
    operator_values["settings"] = {
        **operator_values.get("settings", {}),
        "admissionPolicyName": policy,
    }
    text = template_text(
        values,
        release=combo,
        namespace=namespace,
        include_crds=True,
        env=env,
        workdir=control_plane.workdir / "values",
    )
    docs = documents(text)
    crds = [d for d in docs if d["kind"] == "CustomResourceDefinition"]
    assert {c["metadata"]["name"] for c in crds} >= {
        f"notebooksessions.{GROUP}",
        f"slurmsites.{GROUP}",
        f"notebookprofiles.{GROUP}",
        "clusterkopfpeerings.kopf.dev",
        "kopfpeerings.kopf.dev",
    }
    # CRDs first, as helm does: the objects of their kinds are only known once they are served.
    crd_dir = control_plane.workdir / "crds" / combo
    crd_dir.mkdir(parents=True, exist_ok=True)
    (crd_dir / "crds.yaml").write_text(yaml.safe_dump_all(crds))
    control_plane.install_crds(crd_dir)
    control_plane.ensure_namespace(namespace)
    control_plane.ensure_namespace(
        values.get("sessions", {}).get("namespace") or f"{namespace}-sessions"
    )
    rest = yaml.safe_dump_all(
        [in_namespace(d, namespace) for d in docs if d["kind"] != "CustomResourceDefinition"]
    )
    apply = [
        "apply",
        "--server-side",
        "--field-manager",
        f"chart-test-{combo}",
        "--force-conflicts",
        "-f",
        "-",
    ]
    dry = kubectl(env, *apply, "--dry-run=server", stdin=rest)
    assert dry.returncode == 0, dry.stderr
    assert "serverside-applied (server dry run)" in dry.stdout
    try:
        ok(kubectl(env, *apply, stdin=rest))
    finally:
        kubectl(
            env,
            "delete",
            "--ignore-not-found",
            f"validatingadmissionpolicybinding/{policy}",
            f"validatingadmissionpolicy/{policy}",
        )
    assert {d["metadata"]["name"] for d in find(docs, "ValidatingAdmissionPolicy")} == {policy}
    applied = ok(
        kubectl(
            env,
            "get",
            "statefulset,deployment,service,secret,configmap",
            "-n",
            namespace,
            "-o",
            "name",
        )
    )
    assert f"statefulset.apps/{combo}-bbp-notebooks-operator" in applied
    if values.get("hub", {}).get("enabled", True):
        assert f"deployment.apps/{combo}-bbp-notebooks-hub" in applied
        assert f"deployment.apps/{combo}-bbp-notebooks-proxy" in applied


def test_the_api_server_refuses_a_chart_object_it_would_refuse_from_anyone(
    prepared: dict[str, str],
) -> None:
    """The dry run is a real check: a SlurmSite without host-key trust fails it."""
    values = {
        "slurmSites": [
            {
                "name": "no-trust",
                "spec": {
                    "displayName": "No trust",
                    "frontend": {"host": "127.0.0.21"},
                    "hostKeys": {},
                    "partitions": [{"name": "prod"}],
                    "monitorUser": "bbpmon",
                },
            }
        ]
    }
    text = template_text(values, release="refused", namespace="default", env=prepared)
    site = yaml.safe_dump(find(documents(text), "SlurmSite", "no-trust")[0])
    result = kubectl(prepared, "apply", "--server-side", "--dry-run=server", "-f", "-", stdin=site)
    assert result.returncode != 0
    assert "host key checking cannot be disabled" in result.stderr


# -- helm install, upgrade, uninstall ---------------------------------------------------------


@pytest.fixture(scope="module")
def installed(control_plane: ControlPlane, keys: Path) -> Iterator[Release]:
    user_ca = ssh_keypair(keys, "user_ca")
    release = install(
        control_plane,
        "bbp",
        namespace="bbp-notebooks",
        values={"userCa": {"create": True, "privateKey": user_ca.private}},
    )
    yield release
    release.remove()


def secret_data(release: Release, name: str) -> dict[str, str]:
    raw = release.kubectl("get", "secret", name, "-n", release.namespace, "-o", "json")
    data: dict[str, str] = json.loads(raw)["data"]
    return data


def test_after_install_sessions_and_both_sites_list_with_their_columns(installed: Release) -> None:
    installed.kubectl(
        "create", "-f", "-", stdin=session_manifest("alice-default", installed.session_namespace)
    )
    sessions = installed.kubectl("get", "notebooksessions", "-A")
    header = sessions.splitlines()[0].split()
    assert header == [
        "NAMESPACE",
        "NAME",
        "USER",
        "PROFILE",
        "SITE",
        "PHASE",
        "JOBID",
        "NODE",
        "URL",
        "ENDS",
        "AGE",
    ]
    assert installed.session_namespace in sessions and "alice-default" in sessions
    sites = installed.kubectl("get", "slurmsites")
    assert sites.splitlines()[0].split() == ["NAME", "REACHABLE", "IDLE", "NODES", "PENDING", "AGE"]
    assert {line.split()[0] for line in sites.splitlines()[1:]} >= {"geneva", "lugano"}
    names = installed.kubectl("get", "slurmsites", "-o", "jsonpath={.items[*].spec.displayName}")
    assert {"Geneva", "Lugano"} <= set(names.split())
    profiles = installed.kubectl("get", "notebookprofiles")
    assert {"bluepy", "synthesis", "pyspark"} <= {
        line.split()[0] for line in profiles.splitlines()[1:]
    }
    notes = installed.helm("status", installed.name)
    assert "kubectl get slurmsites" in notes and "STATUS: deployed" in notes


def test_upgrade_keeps_sessions_their_status_and_every_generated_secret(
    installed: Release,
) -> None:
    namespace = installed.session_namespace
    installed.kubectl("apply", "-f", "-", stdin=session_manifest("bob-running", namespace, "bob"))
    installed.kubectl(
        "patch",
        "notebooksession",
        "bob-running",
        "-n",
        namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps(
            {"status": {"phase": "Running", "jobId": 1000042, "site": "geneva", "node": "gva-cn01"}}
        ),
    )
    before = json.loads(
        installed.kubectl("get", "notebooksession", "bob-running", "-n", namespace, "-o", "json")
    )
    secrets = {
        name: secret_data(installed, name)
        for name in (
            "bbp-bbp-notebooks-proxy-token",
            "bbp-bbp-notebooks-hub",
        )
    }

    installed.upgrade(
        {
            **installed.values,
            "operator": {"replicas": 2, "podDisruptionBudget": {"enabled": True}},
            "networkPolicies": {"enabled": True},
        }
    )

    after = json.loads(
        installed.kubectl("get", "notebooksession", "bob-running", "-n", namespace, "-o", "json")
    )
    assert after["metadata"]["uid"] == before["metadata"]["uid"]
    assert after["status"] == before["status"]
    assert after["spec"] == before["spec"]
    for name, data in secrets.items():
        assert secret_data(installed, name) == data, f"{name} changed in the upgrade"
    statefulset = json.loads(
        installed.kubectl(
            "get",
            "statefulset",
            "bbp-bbp-notebooks-operator",
            "-n",
            installed.namespace,
            "-o",
            "json",
        )
    )
    assert statefulset["spec"]["replicas"] == 2
    variables = {
        e["name"]: e for e in statefulset["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert variables["BBP_PEERING"]["value"] == "true"
    # The operator serves the session namespace only, so its peering object lives there.
    assert "kopfpeering.kopf.dev/bbp-notebooks" in installed.kubectl(
        "get", "kopfpeerings", "-n", installed.session_namespace, "-o", "name"
    )
    assert "networkpolicy" in installed.kubectl(
        "get", "networkpolicy", "-n", installed.namespace, "-o", "name"
    )
    history = installed.helm("history", installed.name, "-o", "json")
    assert [(r["revision"], r["status"]) for r in json.loads(history)] == [
        (1, "superseded"),
        (2, "deployed"),
    ]


def test_the_operator_environment_from_the_release_makes_valid_settings(
    installed: Release, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a test running the real operator with the chart's identity starts it with."""
    variables = installed.operator_env()
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    settings = OperatorSettings()
    assert settings.namespace == installed.namespace


def test_uninstall_leaves_the_session_namespace_and_its_sessions(installed: Release) -> None:
    installed.uninstall()
    sessions = installed.kubectl(
        "get", "notebooksessions", "-n", installed.session_namespace, "-o", "name"
    )
    assert "alice-default" in sessions and "bob-running" in sessions
    assert "bbp-bbp-notebooks-operator" not in installed.kubectl(
        "get", "statefulsets", "-n", installed.namespace, "-o", "name"
    )


# -- RBAC: what the chart's operator identity may and may not do ------------------------------


@pytest.fixture(scope="module")
def rbac(control_plane: ControlPlane, keys: Path) -> Iterator[Release]:
    user_ca = ssh_keypair(keys, "user_ca")
    release = install(
        control_plane,
        "rbac",
        namespace="bbp-rbac",
        values={
            # Cluster-wide, the widest the operator's identity gets (the default is namespaced).
            "operator": {"replicas": 2, "watchAllNamespaces": True},
            "userCa": {"create": True, "privateKey": user_ca.private},
            "rbac": {"sessionSecretNamespaces": ["team-c"]},
            "slurmSites": [],
            "notebookProfiles": [],
        },
    )
    for namespace in ("team-c", "elsewhere"):
        control_plane.ensure_namespace(namespace)
    yield release
    release.remove()


@pytest.fixture(scope="module")
def operator_config(rbac: Release) -> Path:
    return rbac.operator_kubeconfig()


def can_i(env: dict[str, str], kubeconfig: Path, verb: str, resource: str, *scope: str) -> bool:
    result = kubectl(env, "auth", "can-i", verb, resource, *scope, kubeconfig=kubeconfig)
    assert result.stdout.strip() in ("yes", "no"), result.stderr
    # A misspelt resource would be a vacuous "no".
    assert "doesn't have a resource type" not in result.stderr, result.stderr
    return result.stdout.strip() == "yes"


OPERATOR_MAY = [
    ("list", f"notebooksessions.{GROUP}", "-A"),
    ("watch", f"notebooksessions.{GROUP}", "-A"),
    ("patch", f"notebooksessions.{GROUP}", "-n", "{sessions}"),
    ("patch", f"notebooksessions.{GROUP}", "--subresource=status", "-n", "{sessions}"),
    ("patch", f"notebooksessions.{GROUP}", "--subresource=status", "-n", "team-c"),
    ("watch", f"slurmsites.{GROUP}"),
    ("patch", f"slurmsites.{GROUP}"),
    ("patch", f"slurmsites.{GROUP}", "--subresource=status"),
    ("list", f"notebookprofiles.{GROUP}"),
    ("create", "events", "-n", "{sessions}"),
    ("create", "events", "-n", "{release}"),
    ("create", "events", "-n", "default"),
    ("get", "secrets/bbp-user-ca", "-n", "{release}"),
    ("get", "secrets/any-env-secret", "-n", "{sessions}"),
    ("get", "secrets/any-env-secret", "-n", "team-c"),
    ("watch", "customresourcedefinitions.apiextensions.k8s.io"),
    ("patch", "clusterkopfpeerings.kopf.dev/bbp-notebooks"),
    ("watch", "clusterkopfpeerings.kopf.dev"),
]
OPERATOR_MUST_NOT = [
    ("get", "secrets", "-n", "default"),
    ("get", "secrets", "-n", "kube-system"),
    ("get", "secrets", "-n", "elsewhere"),
    ("list", "secrets", "-A"),
    ("list", "secrets", "-n", "{release}"),
    ("list", "secrets", "-n", "{sessions}"),
    ("watch", "secrets", "-n", "{sessions}"),
    ("create", "secrets", "-n", "{release}"),
    ("update", "secrets/bbp-user-ca", "-n", "{release}"),
    ("delete", "secrets/bbp-user-ca", "-n", "{release}"),
    ("delete", "customresourcedefinitions.apiextensions.k8s.io"),
    ("update", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", "customresourcedefinitions.apiextensions.k8s.io"),
    ("create", f"notebooksessions.{GROUP}", "-n", "{sessions}"),
    ("delete", f"notebooksessions.{GROUP}", "-n", "{sessions}"),
    ("delete", f"slurmsites.{GROUP}"),
    ("patch", f"notebookprofiles.{GROUP}"),
    ("create", "pods", "-n", "{release}"),
    ("create", "serviceaccounts/token", "-n", "{release}"),
    ("create", "rolebindings.rbac.authorization.k8s.io", "-n", "{release}"),
    ("escalate", "clusterroles.rbac.authorization.k8s.io"),
    ("impersonate", "serviceaccounts"),
]


def _scope(rbac: Release, args: tuple[str, ...]) -> list[str]:
    return [a.format(sessions=rbac.session_namespace, release=rbac.namespace) for a in args]


@pytest.mark.parametrize("check", OPERATOR_MAY, ids=lambda c: " ".join(c))
def test_the_operator_identity_may(
    rbac: Release, operator_config: Path, check: tuple[str, ...]
) -> None:
    assert can_i(rbac.env, operator_config, *_scope(rbac, check))


@pytest.mark.parametrize("check", OPERATOR_MUST_NOT, ids=lambda c: " ".join(c))
def test_the_operator_identity_must_not(
    rbac: Release, operator_config: Path, check: tuple[str, ...]
) -> None:
    assert not can_i(rbac.env, operator_config, *_scope(rbac, check))


def test_real_requests_as_the_operator_succeed_where_it_works_and_fail_elsewhere(
    rbac: Release, operator_config: Path
) -> None:
    env, sessions = rbac.env, rbac.session_namespace
    # Its CA Secret: readable, and the key is the one installed.
    ca = ok(
        kubectl(
            env,
            "get",
            "secret",
            "bbp-user-ca",
            "-n",
            rbac.namespace,
            "-o",
            "jsonpath={.data.ca}",
            kubeconfig=operator_config,
        )
    )
    assert ca == secret_data(rbac, "bbp-user-ca")["ca"]
    # A session's environment Secret where sessions live: readable. The same elsewhere: refused.
    for namespace in (sessions, "elsewhere"):
        rbac.kubectl(
            "create",
            "secret",
            "generic",
            "env-of-alice",
            "-n",
            namespace,
            "--from-literal=JUPYTERHUB_API_TOKEN=not-a-real-token",
        )
    ok(kubectl(env, "get", "secret", "env-of-alice", "-n", sessions, kubeconfig=operator_config))
    refused = kubectl(
        env, "get", "secret", "env-of-alice", "-n", "elsewhere", kubeconfig=operator_config
    )
    assert refused.returncode != 0 and "Forbidden" in refused.stderr
    # Session status: written through the status subresource.
    rbac.kubectl("create", "-f", "-", stdin=session_manifest("rbac-probe", sessions))
    ok(
        kubectl(
            env,
            "patch",
            "notebooksession",
            "rbac-probe",
            "-n",
            sessions,
            "--subresource=status",
            "--type=merge",
            "-p",
            '{"status":{"phase":"Queued"}}',
            kubeconfig=operator_config,
        )
    )
    assert "Queued" in rbac.kubectl("get", "notebooksession", "rbac-probe", "-n", sessions)
    # Deleting a CRD: refused, and the CRD is still served.
    refused = kubectl(
        env,
        "delete",
        "crd",
        f"notebooksessions.{GROUP}",
        "--wait=false",
        kubeconfig=operator_config,
    )
    assert refused.returncode != 0 and "Forbidden" in refused.stderr
    assert "notebooksessions" in rbac.kubectl("get", "crd", f"notebooksessions.{GROUP}")


def test_the_hub_identity_manages_sessions_but_never_sees_the_operator_secrets(
    rbac: Release,
) -> None:
    hub = rbac.hub_kubeconfig()
    env, sessions = rbac.env, rbac.session_namespace
    assert can_i(env, hub, "create", f"notebooksessions.{GROUP}", "-n", sessions)
    assert can_i(env, hub, "delete", f"notebooksessions.{GROUP}", "-n", sessions)
    assert can_i(env, hub, "create", "secrets", "-n", sessions)
    assert can_i(env, hub, "list", f"notebookprofiles.{GROUP}")
    assert not can_i(env, hub, "get", "secrets/bbp-user-ca", "-n", rbac.namespace)
    assert not can_i(
        env, hub, "patch", f"notebooksessions.{GROUP}", "--subresource=status", "-n", sessions
    )
    assert not can_i(env, hub, "create", f"notebooksessions.{GROUP}", "-n", "default")
    # The cluster's admission policy trusts the control-plane fixture's hub, not this release's:
    # like any other principal, this one needs a runas grant (what a second installation in one
    # cluster would need too).
    username = f"system:serviceaccount:{rbac.namespace}:{rbac.hub_service_account}"
    grant = [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "rbac-hub-runas-alice"},
            "rules": [
                {
                    "apiGroups": [GROUP],
                    "resources": ["posixusers"],
                    "verbs": ["runas"],
                    "resourceNames": ["alice"],
                }
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": "rbac-hub-runas-alice"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "rbac-hub-runas-alice",
            },
            "subjects": [
                {
                    "kind": "ServiceAccount",
                    "name": rbac.hub_service_account,
                    "namespace": rbac.namespace,
                }
            ],
        },
    ]
    ok(kubectl(env, "apply", "-f", "-", stdin=yaml.safe_dump_all(grant)))

    def created() -> bool:
        result = kubectl(
            env,
            "create",
            "-f",
            "-",
            stdin=session_manifest("from-the-hub", sessions, created_by=username),
            kubeconfig=hub,
        )
        # The grant reaches the authorizer a moment after it is written.
        assert result.returncode == 0 or "may not run sessions as alice" in result.stderr, (
            result.stderr
        )
        return result.returncode == 0

    try:
        wait_for(created, 10, "the hub's runas grant to take effect", 0.2)
    finally:
        kubectl(env, "delete", "-f", "-", stdin=yaml.safe_dump_all(grant))
