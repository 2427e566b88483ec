"""The chart's admission policy as helm renders it: named as the operator expects, one list of
protected users for the policy and the operator, the hub's identity, the operator's read access.
What the policy admits and refuses is tested against the API server in tests/kube/test_admission.py.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from bbp_notebooks.api.constants import (
    CREATED_BY_ANNOTATION,
    GROUP,
    GROUPS_ANNOTATION,
    POSIX_USERS_RESOURCE,
    RUNAS_VERB,
)
from bbp_notebooks.api.settings import DEFAULT_PROTECTED_USERS, OperatorSettings
from chart.helmchart import documents, find, template_text, tool_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tool_env(home=tmp_path_factory.mktemp("helm-home"))


def render(env: dict[str, str], values: dict[str, Any]) -> list[dict[str, Any]]:
    return documents(template_text(values, release="bbp", namespace="bbp", env=env))


def variables(policy: dict[str, Any]) -> dict[str, str]:
    return {v["name"]: v["expression"] for v in policy["spec"]["variables"]}


def operator_env(docs: list[dict[str, Any]]) -> dict[str, str]:
    (statefulset,) = find(docs, "StatefulSet")
    container = statefulset["spec"]["template"]["spec"]["containers"][0]
    return {e["name"]: e.get("value", "") for e in container["env"]}


def test_the_policy_and_its_binding_carry_the_name_the_operator_looks_for(
    env: dict[str, str],
) -> None:
    docs = render(env, {})
    name = OperatorSettings().admission_policy_name
    (policy,) = find(docs, "ValidatingAdmissionPolicy", name)
    (binding,) = find(docs, "ValidatingAdmissionPolicyBinding", name)
    assert policy["apiVersion"] == binding["apiVersion"] == "admissionregistration.k8s.io/v1"
    assert policy["spec"]["failurePolicy"] == "Fail"
    (rule,) = policy["spec"]["matchConstraints"]["resourceRules"]
    assert rule["apiGroups"] == [GROUP]
    assert rule["resources"] == ["notebooksessions"]
    assert rule["operations"] == ["CREATE", "UPDATE"]
    assert binding["spec"] == {"policyName": name, "validationActions": ["Deny"]}
    assert operator_env(docs)["BBP_ADMISSION_POLICY_NAME"] == name


def test_a_chosen_name_reaches_the_policy_the_binding_the_operator_and_its_rbac(
    env: dict[str, str],
) -> None:
    docs = render(env, {"operator": {"settings": {"admissionPolicyName": "site-b-sessions"}}})
    assert find(docs, "ValidatingAdmissionPolicy", "site-b-sessions")
    (binding,) = find(docs, "ValidatingAdmissionPolicyBinding", "site-b-sessions")
    assert binding["spec"]["policyName"] == "site-b-sessions"
    assert operator_env(docs)["BBP_ADMISSION_POLICY_NAME"] == "site-b-sessions"
    (role,) = find(docs, "ClusterRole", "bbp-bbp-notebooks-operator")
    (rule,) = [r for r in role["rules"] if r["apiGroups"] == ["admissionregistration.k8s.io"]]
    assert rule == {
        "apiGroups": ["admissionregistration.k8s.io"],
        "resources": ["validatingadmissionpolicies", "validatingadmissionpolicybindings"],
        "verbs": ["get"],
        "resourceNames": ["site-b-sessions"],
    }


def test_one_list_of_protected_users_for_the_policy_and_the_operator(
    env: dict[str, str],
) -> None:
    sites = [
        {"name": site, "spec": spec}
        for site, spec in (("geneva", {"monitorUser": "gvamon"}), ("lugano", {}))
    ]
    docs = render(env, {"admission": {"protectedUsers": ["svc-backup"]}, "slurmSites": sites})
    (policy,) = find(docs, "ValidatingAdmissionPolicy")
    protected = json.loads(variables(policy)["protectedUsers"])
    assert protected == [*DEFAULT_PROTECTED_USERS, "svc-backup", "gvamon"]
    assert json.loads(operator_env(docs)["BBP_PROTECTED_USERS"]) == protected


def test_the_default_sites_monitor_user_is_protected(env: dict[str, str]) -> None:
    (policy,) = find(render(env, {}), "ValidatingAdmissionPolicy")
    assert "bbpmon" in json.loads(variables(policy)["protectedUsers"])


def test_the_hub_is_the_releases_hub_service_account_and_nobody_without_a_hub(
    env: dict[str, str],
) -> None:
    (policy,) = find(render(env, {}), "ValidatingAdmissionPolicy")
    hub = "system:serviceaccount:bbp:bbp-bbp-notebooks-hub"
    assert variables(policy)["hub"] == f'request.userInfo.username == "{hub}"'
    (policy,) = find(
        render(env, {"hub": {"serviceAccount": {"name": "jupyter"}}}), "ValidatingAdmissionPolicy"
    )
    assert variables(policy)["hub"] == (
        'request.userInfo.username == "system:serviceaccount:bbp:jupyter"'
    )
    without_hub = {"hub": {"enabled": False}, "sessions": {"namespace": "science"}}
    (policy,) = find(render(env, without_hub), "ValidatingAdmissionPolicy")
    assert variables(policy)["hub"] == 'request.userInfo.username == ""'


def test_the_policy_names_the_annotations_and_the_grant_the_api_package_defines(
    env: dict[str, str],
) -> None:
    (policy,) = find(render(env, {}), "ValidatingAdmissionPolicy")
    text = json.dumps(policy["spec"]["validations"])
    for constant in (GROUPS_ANNOTATION, CREATED_BY_ANNOTATION):
        assert constant in text
    grant = f"authorizer.group('{GROUP}').resource('{POSIX_USERS_RESOURCE}')"
    assert grant in text and f".check('{RUNAS_VERB}').allowed()" in text


def test_disabling_admission_renders_no_policy(env: dict[str, str]) -> None:
    docs = render(env, {"admission": {"enabled": False}})
    assert not find(docs, "ValidatingAdmissionPolicy")
    assert not find(docs, "ValidatingAdmissionPolicyBinding")
