"""The chart's admission policy and the hub's own identity in a local control plane, for `make dev`
and the tests: both are rendered from the chart by the pinned helm (never a second copy), so the
local system refuses exactly what a deployment refuses.

The local system plays a release named RELEASE in RELEASE_NAMESPACE: the hub is the chart's hub
ServiceAccount there, with the chart's hub RBAC for the session namespace, and an admin (the
control plane's client certificate) creates sessions only with the created-by annotation.
"""

from __future__ import annotations

import datetime
import json
import re
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from bbp_notebooks.api.constants import API_VERSION, CREATED_BY_ANNOTATION, SESSION_KIND
from bbp_notebooks.devtools._certs import ADMIN_USER
from bbp_notebooks.devtools.controlplane import ControlPlane, ControlPlaneError, repo_root
from bbp_notebooks.devtools.waiting import wait_until

RELEASE = "bbp-notebooks"
RELEASE_NAMESPACE = "bbp-notebooks"
# The chart's default names for a release called RELEASE (fullname == RELEASE).
HUB_SERVICE_ACCOUNT = f"{RELEASE}-hub"
HUB_USERNAME = f"system:serviceaccount:{RELEASE_NAMESPACE}:{HUB_SERVICE_ACCOUNT}"
POLICY_TEMPLATE = "templates/admission-policy.yaml"
HUB_RBAC_TEMPLATE = "templates/hub-rbac.yaml"
# The API server starts enforcing a new policy once its informers have seen it (about a second).
POLICY_ACTIVE_TIMEOUT_S = 30.0

__all__ = [
    "ADMIN_USER",
    "HUB_SERVICE_ACCOUNT",
    "HUB_USERNAME",
    "RELEASE_NAMESPACE",
    "admin_annotations",
    "install_admission_policy",
    "install_hub_identity",
    "render_chart",
]


def admin_annotations() -> dict[str, str]:
    """What an admin's session must carry to pass the policy (created-by: the admin's name)."""
    return {CREATED_BY_ANNOTATION: ADMIN_USER}


def _kube_version(root: Path) -> str:
    text = (root / "scripts" / "tools.env").read_text()
    match = re.search(r"^KUBERNETES_VERSION=(\S+)$", text, re.MULTILINE)
    if not match:
        raise ControlPlaneError("scripts/tools.env names no KUBERNETES_VERSION")
    return match.group(1)


def render_chart(
    plane: ControlPlane, template: str, values: Mapping[str, Any]
) -> list[dict[str, Any]]:
    """The objects of one chart template (`helm template --show-only`) for the local release."""
    root = repo_root()
    workdir = plane.workdir / "helm"
    workdir.mkdir(parents=True, exist_ok=True)
    values_path = workdir / f"{Path(template).stem}.values.yaml"
    values_path.write_text(yaml.safe_dump(dict(values)))
    env = dict(plane.env)
    for var, sub in (
        ("HELM_CACHE_HOME", "cache"),
        ("HELM_CONFIG_HOME", "config"),
        ("HELM_DATA_HOME", "data"),
    ):
        env[var] = str(workdir / sub)
    argv = [
        str(plane.bin_dir / "helm"),
        "template",
        RELEASE,
        str(root / "charts" / "bbp-notebooks"),
        "--namespace",
        RELEASE_NAMESPACE,
        "--kube-version",
        _kube_version(root),
        "--values",
        str(values_path),
        "--show-only",
        template,
    ]
    result = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        raise ControlPlaneError(f"helm template --show-only {template}: {result.stderr.strip()}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def _apply(plane: ControlPlane, docs: Sequence[Mapping[str, Any]], manager: str) -> None:
    manifest = "\n---\n".join(json.dumps(doc) for doc in docs)
    path = plane.workdir / "helm" / f"{manager}.json"
    path.write_text(manifest)
    plane.kubectl(
        [
            "apply",
            "--server-side",
            "--force-conflicts",
            f"--field-manager={manager}",
            "-f",
            str(path),
        ]
    )


def install_admission_policy(
    plane: ControlPlane,
    *,
    protected_users: Sequence[str] = (),
    probe_namespace: str = "default",
    timeout: float = POLICY_ACTIVE_TIMEOUT_S,
) -> str:
    """Install the chart's ValidatingAdmissionPolicy and binding (extra ``protected_users``, e.g.
    the sites' monitor user) and return once the API server enforces it. Returns its name."""
    values = {"admission": {"enabled": True, "protectedUsers": list(protected_users)}}
    docs = render_chart(plane, POLICY_TEMPLATE, values)
    kinds = sorted(doc["kind"] for doc in docs)
    if kinds != ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]:
        raise ControlPlaneError(f"{POLICY_TEMPLATE} rendered {kinds}")
    _apply(plane, docs, "bbp-notebooks-admission")
    _wait_enforced(plane, probe_namespace, timeout)
    return str(docs[0]["metadata"]["name"])


def _wait_enforced(plane: ControlPlane, namespace: str, timeout: float) -> None:
    """Until a server-side dry run of a session as root is refused by the policy."""
    probe = {
        "apiVersion": API_VERSION,
        "kind": SESSION_KIND,
        "metadata": {
            "name": "admission-probe",
            "namespace": namespace,
            "annotations": admin_annotations(),
        },
        "spec": {"user": "root", "profile": "probe", "site": "probe"},
    }
    path = plane.workdir / "helm" / "admission-probe.json"
    path.write_text(json.dumps(probe))

    def refused() -> bool:
        result = subprocess.run(
            [str(plane.bin_dir / "kubectl"), "create", "--dry-run=server", "-f", str(path)],
            env=plane.env, capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if result.returncode != 0 and "protected POSIX user" in result.stderr:
            return True
        if result.returncode != 0 and "ValidatingAdmissionPolicy" not in result.stderr:
            raise ControlPlaneError(f"admission probe failed: {result.stderr.strip()}")
        return False

    try:
        wait_until(refused, timeout, "the admission policy to be enforced", 0.2)
    except TimeoutError as error:
        raise ControlPlaneError(str(error)) from None


def install_hub_identity(
    plane: ControlPlane,
    session_namespace: str,
    *,
    expiration: datetime.timedelta = datetime.timedelta(hours=1),
) -> Path:
    """The chart's hub ServiceAccount with the chart's hub RBAC (templates/hub-rbac.yaml) for
    ``session_namespace``; returns a kubeconfig holding a TokenRequest token of it, valid for
    ``expiration``."""
    plane.ensure_namespace(session_namespace)
    plane.ensure_namespace(RELEASE_NAMESPACE)
    values = {"sessions": {"namespace": session_namespace, "createNamespace": False}}
    docs = render_chart(plane, HUB_RBAC_TEMPLATE, values)
    for doc in docs:
        if doc["kind"] in ("Role", "RoleBinding"):
            doc["metadata"].setdefault("namespace", RELEASE_NAMESPACE)
    # Several session namespaces share the ClusterRole and its binding; the Role is per namespace.
    _apply(plane, docs, f"bbp-notebooks-hub-rbac-{session_namespace}")
    return plane.mint_identity(RELEASE_NAMESPACE, HUB_SERVICE_ACCOUNT, expiration=expiration)
