"""Render, install and inspect the bbp-notebooks Helm chart with the real helm and kubectl.

For tests that need the chart in the local control plane, e.g. the operator run with the token of
the chart's own ServiceAccount:

    release = install(control_plane, "lifecycle", values={...})
    kubeconfig = release.operator_kubeconfig()      # authenticates as the chart's operator SA
    env = {**os.environ, "KUBECONFIG": str(kubeconfig), **release.operator_env()}

Nothing here runs pods (there is no kubelet): the chart's objects are created, validated and
authorised by the API server exactly as in a cluster.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bbp_notebooks.devtools.controlplane import ControlPlane, tools_bin

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "bbp-notebooks"
HELM_TIMEOUT_S = 180.0


def _kube_version() -> str:
    text = (REPO / "scripts" / "tools.env").read_text()
    match = re.search(r"^KUBERNETES_VERSION=(\S+)$", text, re.MULTILINE)
    assert match, "scripts/tools.env names no KUBERNETES_VERSION"
    return match.group(1)


KUBE_VERSION = _kube_version()


def tool_env(control_plane: ControlPlane | None = None, home: Path | None = None) -> dict[str, str]:
    """Environment with helm/kubectl on PATH (and KUBECONFIG when a control plane is given).
    Helm's caches go under `home` (never the developer's own ~/.config/helm)."""
    env = dict(control_plane.env) if control_plane is not None else dict(os.environ)
    if control_plane is None:
        env["PATH"] = os.pathsep.join([str(tools_bin()), env.get("PATH", os.defpath)])
        env.pop("KUBECONFIG", None)
    base = home or Path(os.environ.get("TMPDIR", "/tmp")) / "bbp-notebooks-helm"
    for var, sub in (
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ):
        env[var] = str(base / sub)
    return env


def run(
    argv: list[str],
    env: Mapping[str, str],
    *,
    stdin: str | None = None,
    timeout: float = HELM_TIMEOUT_S,
) -> subprocess.CompletedProcess[str]:
    """Run helm or kubectl; the caller decides what a non-zero exit means."""
    return subprocess.run(
        argv,
        input=stdin,
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def checked(argv: list[str], env: Mapping[str, str], **kwargs: Any) -> str:
    result = run(argv, env, **kwargs)
    assert result.returncode == 0, f"{' '.join(argv[:3])}... failed:\n{result.stderr}"
    return result.stdout


def write_values(directory: Path, name: str, values: Mapping[str, Any]) -> Path:
    """Values go in a file, never on the command line (they may hold keys)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.values.yaml"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        yaml.safe_dump(dict(values), stream)
    return path


def template_text(
    values: Mapping[str, Any],
    *,
    release: str = "bbp",
    namespace: str = "bbp",
    include_crds: bool = False,
    env: Mapping[str, str] | None = None,
    workdir: Path | None = None,
) -> str:
    """`helm template` output. Fails the test if rendering fails."""
    result = template(
        values,
        release=release,
        namespace=namespace,
        include_crds=include_crds,
        env=env,
        workdir=workdir,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def template(
    values: Mapping[str, Any],
    *,
    release: str = "bbp",
    namespace: str = "bbp",
    include_crds: bool = False,
    env: Mapping[str, str] | None = None,
    workdir: Path | None = None,
) -> subprocess.CompletedProcess[str]:
    env = env or tool_env()
    directory = workdir or Path(env["HELM_CACHE_HOME"]).parent / "values"
    path = write_values(directory, f"{release}-{namespace}", values)
    argv = [
        "helm",
        "template",
        release,
        str(CHART),
        "--namespace",
        namespace,
        "--kube-version",
        KUBE_VERSION,
        "--values",
        str(path),
    ]
    if include_crds:
        argv.append("--include-crds")
    return run(argv, env)


def documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(text) if doc]


def find(
    docs: Iterable[dict[str, Any]], kind: str, name: str | None = None
) -> list[dict[str, Any]]:
    return [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]


@dataclass
class Release:
    """A helm release of the chart in the local control plane."""

    control_plane: ControlPlane
    name: str
    namespace: str
    values: dict[str, Any]
    workdir: Path
    env: dict[str, str] = field(repr=False)

    @property
    def fullname(self) -> str:
        return self.name if "bbp-notebooks" in self.name else f"{self.name}-bbp-notebooks"

    @property
    def operator_service_account(self) -> str:
        return f"{self.fullname}-operator"

    @property
    def hub_service_account(self) -> str:
        return f"{self.fullname}-hub"

    @property
    def session_namespace(self) -> str:
        configured: str = self.values.get("sessions", {}).get("namespace", "")
        return configured or f"{self.namespace}-sessions"

    def operator_kubeconfig(self) -> Path:
        """A kubeconfig holding a TokenRequest token of the chart's operator ServiceAccount."""
        return self.control_plane.mint_identity(self.namespace, self.operator_service_account)

    def hub_kubeconfig(self) -> Path:
        return self.control_plane.mint_identity(self.namespace, self.hub_service_account)

    def operator_env(self) -> dict[str, str]:
        """The BBP_* settings of the chart's operator container, with what the kubelet would
        resolve (namespace, pod IP, the token key Secret) filled in for a process on loopback."""
        docs = self.manifest()
        statefulset = find(docs, "StatefulSet", f"{self.fullname}-operator")[0]
        container = statefulset["spec"]["template"]["spec"]["containers"][0]
        env: dict[str, str] = {}
        for item in container["env"]:
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            source = item["valueFrom"]
            if "fieldRef" in source:
                path = source["fieldRef"]["fieldPath"]
                env[item["name"]] = {
                    "metadata.namespace": self.namespace,
                    "status.podIP": "127.0.0.1",
                }.get(path, "0")
            else:
                ref = source["secretKeyRef"]
                env[item["name"]] = self.kubectl(
                    "get",
                    "secret",
                    ref["name"],
                    "-n",
                    self.namespace,
                    "-o",
                    f'go-template={{{{index .data "{ref["key"]}" | base64decode}}}}',
                )
        return env

    def manifest(self) -> list[dict[str, Any]]:
        return documents(self.helm("get", "manifest", self.name))

    def helm(self, *args: str) -> str:
        return checked(["helm", *args, "--namespace", self.namespace], self.env)

    def kubectl(self, *args: str, stdin: str | None = None) -> str:
        return checked(["kubectl", *args], self.env, stdin=stdin)

    def upgrade(self, values: Mapping[str, Any]) -> None:
        path = write_values(self.workdir, f"{self.name}-upgrade", values)
        self.helm("upgrade", self.name, str(CHART), "--take-ownership", "--values", str(path))
        self.values = dict(values)

    def uninstall(self) -> None:
        # No kubelet here to run the pre-delete hook's Job (tests/node runs it on a node).
        self.helm("uninstall", self.name, "--no-hooks", "--wait", "--timeout", "60s")

    def remove(self) -> None:
        """Uninstall (when still installed) and delete the sessions left in the session
        namespace, finalizers and all, so later tests sharing the control plane see nothing of
        this release. The namespaces stay: without a controller manager they never finish
        terminating."""
        namespace = self.session_namespace
        names = self.kubectl("get", "notebooksessions", "-n", namespace, "-o", "name").split()
        for name in names:
            self.kubectl(
                "patch",
                name,
                "-n",
                namespace,
                "--type=merge",
                "-p",
                '{"metadata":{"finalizers":null}}',
            )
        if names:
            self.kubectl("delete", "notebooksessions", "--all", "-n", namespace, "--wait=false")
        status = run(["helm", "status", self.name, "--namespace", self.namespace], self.env)
        if status.returncode == 0:
            # An operator that ran against this release left its daemon finalizer on the sites.
            selector = f"app.kubernetes.io/instance={self.name}"
            for site in self.kubectl("get", "slurmsites", "-l", selector, "-o", "name").split():
                self.kubectl(
                    "patch", site, "--type=merge", "-p", '{"metadata":{"finalizers":null}}'
                )
            self.uninstall()


def install(
    control_plane: ControlPlane,
    name: str,
    *,
    namespace: str | None = None,
    values: Mapping[str, Any] | None = None,
) -> Release:
    """`helm install` the chart into `namespace` (default: the release name), taking over objects
    an earlier test applied without helm (e.g. the example SlurmSites)."""
    namespace = namespace or name
    workdir = control_plane.workdir / "helm" / name
    env = tool_env(control_plane, home=control_plane.workdir / "helm-home")
    values = dict(values or {})
    # The control-plane fixture already installed the chart's admission policy (one per cluster,
    # cluster-scoped, trusting one hub): a release that brought its own would take it over
    # (--take-ownership) and remove it on uninstall. A test that wants it says so in its values.
    values.setdefault("admission", {"enabled": False})
    path = write_values(workdir, name, values)
    checked(
        [
            "helm",
            "install",
            name,
            str(CHART),
            "--namespace",
            namespace,
            "--create-namespace",
            "--take-ownership",
            "--values",
            str(path),
            "--timeout",
            "120s",
        ],
        env,
    )
    # What a controller manager would have done for a new namespace.
    control_plane.ensure_namespace(namespace)
    return Release(control_plane, name, namespace, values, workdir, env)


# -- values combinations the tests render, apply and install ----------------------------------


@dataclass(frozen=True)
class KeyPair:
    private: str
    public: str


def ssh_keypair(directory: Path, name: str) -> KeyPair:
    """A fresh ed25519 key pair made by the real ssh-keygen (for CA keys in test values)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
            check=True,
            capture_output=True,
            timeout=30,
        )
    return KeyPair(path.read_text(), (directory / f"{name}.pub").read_text().strip())


def combinations(keys_dir: Path) -> dict[str, dict[str, Any]]:
    """Values a deployer would plausibly use, each exercising different templates."""
    host_ca, user_ca = ssh_keypair(keys_dir, "host_ca"), ssh_keypair(keys_dir, "user_ca")
    return {
        "defaults": {},
        "high-availability": {
            "operator": {
                "replicas": 3,
                "podDisruptionBudget": {"enabled": True},
                "serviceMonitor": {"enabled": True, "labels": {"release": "prom"}},
            },
            "networkPolicies": {"enabled": True, "callbackFrom": ["127.0.0.0/8"]},
        },
        "namespaced": {
            "operator": {"replicas": 2, "settings": {"watchNamespaces": ["team-a", "team-b"]}},
            "rbac": {"sessionSecretNamespaces": ["team-c"]},
        },
        "kind-with-mock-slurm": {
            "mockSlurm": {
                "enabled": True,
                "hostCaPrivateKey": host_ca.private,
                "hostCaPublicKey": host_ca.public,
                "userCaPublicKey": user_ca.public,
            },
            "userCa": {"create": True, "privateKey": user_ca.private},
            "networkPolicies": {"enabled": True},
            "operator": {
                "settings": {
                    "notebookCommand": [
                        "python3",
                        "-m",
                        "http.server",
                        "--bind",
                        "{host}",
                        "{port}",
                    ]
                }
            },
        },
        "oauth-hub": {
            "hub": {
                "authenticator": {
                    "type": "generic-oauth",
                    "genericOAuth": {
                        "clientId": "bbp-notebooks",
                        "clientSecretName": "hub-oauth",
                        "authorizeUrl": "https://sso.example.org/auth",
                        "tokenUrl": "https://sso.example.org/token",
                        "userdataUrl": "https://sso.example.org/userinfo",
                        "callbackUrl": "https://notebooks.example.org/hub/oauth_callback",
                    },
                    "allowedUsers": ["alice", "bob"],
                    "adminUsers": ["alice"],
                },
                "db": {"persistence": {"enabled": True}},
            },
            "proxy": {"service": {"type": "NodePort", "nodePort": 30080}},
        },
        "operator-only": {
            "hub": {"enabled": False},
            "sessions": {"createNamespace": False, "namespace": "science"},
        },
    }


# Namespaces that combinations refer to and that must exist before their objects can be applied.
REFERENCED_NAMESPACES = ("team-a", "team-b", "team-c", "science")
