"""Who may run as whom, decided by the real kube-apiserver: the chart's ValidatingAdmissionPolicy
(installed by the control-plane fixture from `helm template`) against real identities — the hub's
ServiceAccount token, a devops ServiceAccount with and without a `runas` grant, another
ServiceAccount, and cluster-admin. Every refusal is checked by the API server's own message.
Run with -s to see the matrix."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from bbp_notebooks.api.constants import (
    API_VERSION,
    CREATED_BY_ANNOTATION,
    GROUP,
    GROUPS_ANNOTATION,
    POSIX_USERS_RESOURCE,
    RUNAS_VERB,
    SESSION_KIND,
    SESSION_PLURAL,
    VERSION,
)
from bbp_notebooks.api.settings import OperatorSettings
from bbp_notebooks.devtools.admission import (
    ADMIN_USER,
    HUB_USERNAME,
    install_hub_identity,
)
from bbp_notebooks.devtools.controlplane import ControlPlane
from bbp_notebooks.devtools.stack import MONITOR_USER, wait_for
from bbp_notebooks.operator.admission import admission_policy_installed, policy_problem
from bbp_notebooks.operator.kube import Kube

pytestmark = pytest.mark.kube

NAMESPACE = "admission-tests"
DEVOPS = ("ops", "dana")
OTHER = ("ops", "intruder")


@dataclass
class Identity:
    username: str
    objects: Any  # CustomObjectsApi


def sa_username(namespace: str, name: str) -> str:
    return f"system:serviceaccount:{namespace}:{name}"


@pytest.fixture(scope="module")
def identities(control_plane: ControlPlane, kube_api: Any) -> Iterator[dict[str, Identity]]:
    control_plane.ensure_namespace(NAMESPACE)
    rbac = client.RbacAuthorizationV1Api(kube_api)
    # Devops and the other ServiceAccount may create and patch sessions (ordinary RBAC): only
    # the admission policy stands between them and spec.user.
    rbac.create_namespaced_role(
        NAMESPACE,
        client.V1Role(
            metadata=client.V1ObjectMeta(name="session-writer"),
            rules=[
                client.V1PolicyRule(
                    api_groups=[GROUP],
                    resources=[SESSION_PLURAL],
                    verbs=["get", "create", "patch", "delete"],
                )
            ],
        ),
    )
    paths: dict[str, Path] = {"hub": install_hub_identity(control_plane, NAMESPACE)}
    for key, (namespace, name) in (("devops", DEVOPS), ("other", OTHER)):
        paths[key] = control_plane.mint_identity(namespace, name)
        rbac.create_namespaced_role_binding(
            NAMESPACE,
            client.V1RoleBinding(
                metadata=client.V1ObjectMeta(name=f"session-writer-{name}"),
                role_ref=client.V1RoleRef(
                    api_group="rbac.authorization.k8s.io", kind="Role", name="session-writer"
                ),
                subjects=[
                    client.RbacV1Subject(kind="ServiceAccount", name=name, namespace=namespace)
                ],
            ),
        )
    apis = {key: control_plane.api_client(path) for key, path in paths.items()}
    found = {key: Identity(whoami(api), client.CustomObjectsApi(api)) for key, api in apis.items()}
    found["admin"] = Identity(ADMIN_USER, client.CustomObjectsApi(kube_api))
    assert found["hub"].username == HUB_USERNAME
    assert found["devops"].username == sa_username(*DEVOPS)
    try:
        yield found
    finally:
        for api in apis.values():
            api.close()
        rbac.delete_namespaced_role("session-writer", NAMESPACE)
        for _, name in (DEVOPS, OTHER):
            rbac.delete_namespaced_role_binding(f"session-writer-{name}", NAMESPACE)


def whoami(api: Any) -> str:
    review = client.AuthenticationV1Api(api).create_self_subject_review(
        client.V1SelfSubjectReview()
    )
    return str(review.status.user_info.username)


@pytest.fixture
def grant_alice_to_devops(kube_api: Any) -> Iterator[None]:
    """What devops are told to do: `runas` on posixusers named alice, through ordinary RBAC."""
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_cluster_role(
        client.V1ClusterRole(
            metadata=client.V1ObjectMeta(name="runas-alice"),
            rules=[
                client.V1PolicyRule(
                    api_groups=[GROUP],
                    resources=[POSIX_USERS_RESOURCE],
                    verbs=[RUNAS_VERB],
                    resource_names=["alice"],
                )
            ],
        )
    )
    rbac.create_cluster_role_binding(
        client.V1ClusterRoleBinding(
            metadata=client.V1ObjectMeta(name="runas-alice-dana"),
            role_ref=client.V1RoleRef(
                api_group="rbac.authorization.k8s.io", kind="ClusterRole", name="runas-alice"
            ),
            subjects=[
                client.RbacV1Subject(kind="ServiceAccount", name=DEVOPS[1], namespace=DEVOPS[0])
            ],
        )
    )
    try:
        yield
    finally:
        rbac.delete_cluster_role_binding("runas-alice-dana")
        rbac.delete_cluster_role("runas-alice")


@pytest.fixture(autouse=True)
def no_leftover_sessions(kube_api: Any) -> Iterator[None]:
    yield
    objects = client.CustomObjectsApi(kube_api)
    for item in objects.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, SESSION_PLURAL)[
        "items"
    ]:
        objects.delete_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, SESSION_PLURAL, item["metadata"]["name"]
        )


def body(name: str, user: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": SESSION_KIND,
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations},
        "spec": {"user": user, "profile": "bluepy", "site": "geneva"},
    }


def created_by(who: Identity, **extra: str) -> dict[str, str]:
    return {CREATED_BY_ANNOTATION: who.username, **extra}


def hub_annotations(hub: Identity) -> dict[str, str]:
    return created_by(hub, **{GROUPS_ANNOTATION: "thalamus,hippocampus"})


def record(case: str, outcome: str) -> None:
    print(f"\n[admission] {case}: {outcome}")


def create(who: Identity, name: str, user: str, annotations: dict[str, str]) -> dict[str, Any]:
    created: dict[str, Any] = who.objects.create_namespaced_custom_object(
        GROUP, VERSION, NAMESPACE, SESSION_PLURAL, body(name, user, annotations)
    )
    return created


def refusal(call: Callable[[], Any]) -> str:
    """The API server's message for a refused request (403 from the policy)."""
    with pytest.raises(ApiException) as refused:
        call()
    assert refused.value.status == 403, refused.value.body
    message = str(json.loads(refused.value.body)["message"])
    assert "ValidatingAdmissionPolicy 'bbp-notebooks-sessions'" in message, message
    return message


def allowed(case: str, call: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    result = call()
    record(case, "allowed")
    return result


def refused(case: str, call: Callable[[], Any], *expected: str) -> str:
    message = refusal(call)
    for part in expected:
        assert part in message, message
    record(case, f"refused: {message}")
    return message


# -- create ------------------------------------------------------------------------------------


def test_the_hub_creates_a_session_for_alice(identities: dict[str, Identity]) -> None:
    hub = identities["hub"]
    created = allowed(
        "hub creates alice", lambda: create(hub, "hub-alice", "alice", hub_annotations(hub))
    )
    assert created["metadata"]["annotations"][CREATED_BY_ANNOTATION] == HUB_USERNAME


@pytest.mark.parametrize("user", ["root", MONITOR_USER, "sshd"])
def test_the_hub_may_not_run_a_protected_user(identities: dict[str, Identity], user: str) -> None:
    hub = identities["hub"]
    refused(
        f"hub creates {user}",
        lambda: create(hub, f"hub-{user}", user, hub_annotations(hub)),
        f"spec.user {user} is a protected POSIX user",
    )


def test_cluster_admin_may_not_run_root_either(identities: dict[str, Identity]) -> None:
    admin = identities["admin"]
    refused(
        "cluster-admin creates root",
        lambda: create(admin, "admin-root", "root", created_by(admin)),
        "spec.user root is a protected POSIX user",
    )


def test_cluster_admin_may_run_alice_with_its_own_name(identities: dict[str, Identity]) -> None:
    admin = identities["admin"]
    allowed(
        "cluster-admin creates alice", lambda: create(admin, "admin-a", "alice", created_by(admin))
    )


def test_devops_without_a_grant_may_not_run_alice(identities: dict[str, Identity]) -> None:
    devops = identities["devops"]
    refused(
        "devops without grant creates alice",
        lambda: create(devops, "ops-alice", "alice", created_by(devops)),
        f"{devops.username} may not run sessions as alice",
        "the verb runas on posixusers.notebooks.bbp.epfl.ch with resourceNames [alice]",
    )


def test_devops_with_a_runas_grant_runs_alice_and_nobody_else(
    control_plane: ControlPlane, identities: dict[str, Identity], grant_alice_to_devops: None
) -> None:
    devops = identities["devops"]

    def attempt() -> dict[str, Any] | None:
        # RBAC changes reach the authorizer through an informer: a moment after the write.
        try:
            return create(devops, "ops-alice", "alice", created_by(devops))
        except ApiException as error:
            if error.status == 403 and "may not run sessions as alice" in error.body:
                return None
            raise

    wait_for(attempt, 10, "the runas grant to take effect", 0.2)
    record("devops with grant for alice creates alice", "allowed")
    # How the chart's README tells devops to check a grant (kubectl auth can-i cannot: it only
    # knows discovered resources, and posixusers is virtual).
    for user, answer in (("alice", "true"), ("bob", "false")):
        review = {
            "apiVersion": "authorization.k8s.io/v1",
            "kind": "SubjectAccessReview",
            "spec": {
                "user": devops.username,
                "resourceAttributes": {
                    "group": GROUP,
                    "resource": POSIX_USERS_RESOURCE,
                    "name": user,
                    "verb": RUNAS_VERB,
                },
            },
        }
        result = subprocess.run(
            ["kubectl", "create", "-o", "jsonpath={.status.allowed}", "-f", "-"],
            input=json.dumps(review), env=control_plane.env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        assert (result.stdout.strip() or "false") == answer, result.stderr
    refused(
        "devops with grant for alice creates bob",
        lambda: create(devops, "ops-bob", "bob", created_by(devops)),
        f"{devops.username} may not run sessions as bob",
    )
    refused(
        "devops with grant creates root",
        lambda: create(devops, "ops-root", "root", created_by(devops)),
        "spec.user root is a protected POSIX user",
    )
    refused(
        "devops with grant sets the groups annotation",
        lambda: create(
            devops, "ops-groups", "alice", created_by(devops, **{GROUPS_ANNOTATION: "admins"})
        ),
        f"only the hub ({HUB_USERNAME}) may set the annotation notebooks.bbp.epfl.ch/groups",
        f"{devops.username} may not",
    )
    refused(
        "devops with grant, no created-by",
        lambda: create(devops, "ops-anon", "alice", {}),
        f"created-by must be the requesting user {devops.username} (it is missing)",
    )
    refused(
        "devops with grant, created-by naming the hub",
        lambda: create(devops, "ops-forged", "alice", {CREATED_BY_ANNOTATION: HUB_USERNAME}),
        f"must be the requesting user {devops.username}, not {HUB_USERNAME}",
    )


def test_another_service_account_may_not_run_alice(identities: dict[str, Identity]) -> None:
    other = identities["other"]
    refused(
        "other SA creates alice",
        lambda: create(other, "other-alice", "alice", created_by(other)),
        f"{other.username} may not run sessions as alice",
    )


def test_the_hub_must_name_itself_as_creator(identities: dict[str, Identity]) -> None:
    hub = identities["hub"]
    refused(
        "hub creates alice with created-by alice",
        lambda: create(
            hub, "hub-forged", "alice", {CREATED_BY_ANNOTATION: "alice", GROUPS_ANNOTATION: "x"}
        ),
        f"must be the requesting user {HUB_USERNAME}, not alice",
    )


def test_cluster_admin_may_not_set_the_groups_annotation(identities: dict[str, Identity]) -> None:
    admin = identities["admin"]
    refused(
        "cluster-admin sets the groups annotation",
        lambda: create(
            admin, "admin-groups", "alice", created_by(admin, **{GROUPS_ANNOTATION: "admins"})
        ),
        f"{ADMIN_USER} may not",
    )


# -- update ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("who", "change"),
    [
        ("admin", {GROUPS_ANNOTATION: "admins"}),
        ("hub", {GROUPS_ANNOTATION: "admins"}),
        ("admin", {CREATED_BY_ANNOTATION: ADMIN_USER}),
        ("admin", {GROUPS_ANNOTATION: None}),
        ("admin", {CREATED_BY_ANNOTATION: None}),
    ],
    ids=["admin-changes-groups", "hub-changes-groups", "admin-changes-created-by",
         "admin-removes-groups", "admin-removes-created-by"],
)  # fmt: skip
def test_the_two_annotations_never_change_after_creation(
    identities: dict[str, Identity], who: str, change: dict[str, str | None]
) -> None:
    hub = identities["hub"]
    create(hub, "hub-update", "alice", hub_annotations(hub))
    patch = {"metadata": {"annotations": change}}
    refused(
        f"{who} patches {change}",
        lambda: identities[who].objects.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, SESSION_PLURAL, "hub-update", patch
        ),
        "cannot be added, changed or removed after a NotebookSession is created",
    )


def test_an_admin_cannot_add_the_groups_annotation_to_its_own_session(
    identities: dict[str, Identity],
) -> None:
    admin = identities["admin"]
    create(admin, "admin-later", "alice", created_by(admin))
    patch = {"metadata": {"annotations": {GROUPS_ANNOTATION: "admins"}}}
    refused(
        "admin adds groups on update",
        lambda: admin.objects.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, SESSION_PLURAL, "admin-later", patch
        ),
        "cannot be added, changed or removed",
    )


def test_the_hub_extends_a_session_and_nobody_changes_its_user(
    identities: dict[str, Identity],
) -> None:
    """The hub's Extend is a patch of spec.resources.timeLimitMinutes (chart RBAC: patch); the
    user stays what admission checked at creation, whoever patches."""
    hub = identities["hub"]
    create(hub, "hub-extend", "alice", hub_annotations(hub))
    extended = allowed(
        "hub raises spec.resources.timeLimitMinutes",
        lambda: hub.objects.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, SESSION_PLURAL, "hub-extend",
            {"spec": {"resources": {"timeLimitMinutes": 120}}},
        ),
    )  # fmt: skip
    assert extended["spec"]["resources"]["timeLimitMinutes"] == 120
    for who in ("hub", "admin"):
        with pytest.raises(ApiException) as changed:
            identities[who].objects.patch_namespaced_custom_object(
                GROUP, VERSION, NAMESPACE, SESSION_PLURAL, "hub-extend",
                {"spec": {"user": "bob"}},
            )  # fmt: skip
        assert changed.value.status in (403, 422), changed.value.body
        record(f"{who} changes spec.user", f"refused: {changed.value.status}")


def test_other_updates_pass(identities: dict[str, Identity]) -> None:
    """The operator's own writes (finalizers, kopf's annotations, status) are not in its way."""
    hub, admin = identities["hub"], identities["admin"]
    create(hub, "hub-finalized", "alice", hub_annotations(hub))
    patch = {
        "metadata": {
            "finalizers": ["notebooks.bbp.epfl.ch/test"],
            "annotations": {"kopf.zalando.org/last-handled-configuration": "{}"},
        }
    }
    allowed(
        "admin patches finalizers and other annotations",
        lambda: admin.objects.patch_namespaced_custom_object(
            GROUP, VERSION, NAMESPACE, SESSION_PLURAL, "hub-finalized", patch
        ),
    )
    allowed(
        "admin patches status",
        lambda: admin.objects.patch_namespaced_custom_object_status(
            GROUP,
            VERSION,
            NAMESPACE,
            SESSION_PLURAL,
            "hub-finalized",
            {"status": {"phase": "Pending"}},
        ),
    )
    admin.objects.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        SESSION_PLURAL,
        "hub-finalized",
        {"metadata": {"finalizers": None}},
    )


# -- the operator's check ----------------------------------------------------------------------


async def operator_check(kubeconfig: Path, name: str) -> bool | None:
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(kubeconfig), client_configuration=configuration
    )
    async with k8s.ApiClient(configuration=configuration) as api:
        return await admission_policy_installed(Kube(api), name)


async def test_the_operator_sees_the_policy_it_may_read_and_never_guesses(
    control_plane: ControlPlane, kube_api: Any
) -> None:
    name = OperatorSettings().admission_policy_name
    # With the chart's rule for the operator: get on that policy and binding, by name only.
    reader = control_plane.mint_identity("ops", "policy-reader")
    rbac = client.RbacAuthorizationV1Api(kube_api)
    rbac.create_cluster_role(
        {
            "metadata": {"name": "admission-policy-reader"},
            "rules": [
                {
                    "apiGroups": ["admissionregistration.k8s.io"],
                    "resources": [
                        "validatingadmissionpolicies",
                        "validatingadmissionpolicybindings",
                    ],
                    "verbs": ["get"],
                    "resourceNames": [name, "absent-policy"],
                }
            ],
        }
    )
    rbac.create_cluster_role_binding(
        {
            "metadata": {"name": "admission-policy-reader"},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "admission-policy-reader",
            },
            "subjects": [{"kind": "ServiceAccount", "name": "policy-reader", "namespace": "ops"}],
        }
    )
    try:

        async def installed() -> bool | None:
            return await operator_check(reader, name)

        # The grant reaches the authorizer a moment after it is written.
        for _ in range(50):
            if (found := await installed()) is not None:
                break
            await asyncio.sleep(0.2)
        assert found is True
        assert await operator_check(reader, "absent-policy") is False
        # Not allowed to look: "could not ask", never "missing".
        assert await operator_check(reader, "another-policy") is None
        assert await operator_check(control_plane.kubeconfig, name) is True
    finally:
        rbac.delete_cluster_role_binding("admission-policy-reader")
        rbac.delete_cluster_role("admission-policy-reader")


def test_a_binding_that_only_warns_or_binds_elsewhere_does_not_count() -> None:
    name = "p"
    policy = {"spec": {"failurePolicy": "Fail"}}
    deny = {"spec": {"policyName": name, "validationActions": ["Deny"]}}
    assert policy_problem(name, policy, deny) is None
    assert policy_problem(name, None, deny) == "ValidatingAdmissionPolicy p does not exist"
    assert policy_problem(name, policy, None) == "ValidatingAdmissionPolicyBinding p does not exist"
    warn = {"spec": {"policyName": name, "validationActions": ["Warn", "Audit"]}}
    assert "does not deny" in str(policy_problem(name, policy, warn))
    other = {"spec": {"policyName": "q", "validationActions": ["Deny"]}}
    assert "binds 'q'" in str(policy_problem(name, policy, other))
    ignore = {"spec": {"failurePolicy": "Ignore"}}
    assert "failurePolicy Fail" in str(policy_problem(name, ignore, deny))
