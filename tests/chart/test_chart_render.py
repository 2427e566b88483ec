"""The chart as helm renders it: lint, values schema, peering, settings, labels, secrets."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from bbp_notebooks.api.settings import OperatorSettings
from bbp_notebooks.mockslurm.config import MockSlurmConfig
from chart.helmchart import (
    CHART,
    combinations,
    documents,
    find,
    run,
    template,
    template_text,
    tool_env,
    write_values,
)

STANDARD_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    return tool_env(home=tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def combos(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Any]]:
    return combinations(tmp_path_factory.mktemp("keys"))


def render(env: dict[str, str], values: dict[str, Any], **kwargs: Any) -> list[dict[str, Any]]:
    return documents(template_text(values, env=env, **kwargs))


def operator_container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (statefulset,) = find(docs, "StatefulSet")
    container: dict[str, Any] = statefulset["spec"]["template"]["spec"]["containers"][0]
    return container


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {item["name"]: item.get("value", item.get("valueFrom")) for item in container["env"]}


@pytest.mark.parametrize(
    "combo",
    [
        "defaults",
        "high-availability",
        "namespaced",
        "kind-with-mock-slurm",
        "oauth-hub",
        "operator-only",
    ],
)
def test_the_chart_lints_strictly_with_each_values_combination(
    env: dict[str, str], combos: dict[str, dict[str, Any]], combo: str, tmp_path: Path
) -> None:
    values = write_values(tmp_path, combo, combos[combo])
    result = run(["helm", "lint", "--strict", str(CHART), "--values", str(values)], env)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    ("values", "complaint"),
    [
        ({"operator": {"replicas": 0}}, "replicas"),
        ({"operator": {"settings": {"gpus": 1}}}, "gpus"),
        ({"operator": {"settings": {"maxChannelsPerConnection": 11}}}, "maxChannelsPerConnection"),
        ({"hub": {"authenticator": {"type": "ldap"}}}, "type"),
        ({"slurmSites": [{"name": "Geneva!", "spec": {}}]}, "name"),
        ({"operatorr": {}}, "operatorr"),
    ],
    ids=[
        "no-replicas",
        "unknown-setting",
        "too-many-channels",
        "unknown-authenticator",
        "bad-site-name",
        "misspelt-section",
    ],
)
def test_the_values_schema_refuses_what_the_operator_would_refuse(
    env: dict[str, str], values: dict[str, Any], complaint: str
) -> None:
    result = template(values, env=env)
    assert result.returncode != 0
    assert "schema" in result.stderr and complaint in result.stderr, result.stderr


def test_one_replica_runs_standalone_without_peering_objects(env: dict[str, str]) -> None:
    docs = render(env, {})
    variables = env_of(operator_container(docs))
    assert variables["BBP_PEERING"] == "false"
    assert "BBP_PRIORITY" not in variables
    assert not find(docs, "ClusterKopfPeering") and not find(docs, "KopfPeering")
    rules = find(docs, "ClusterRole", "bbp-bbp-notebooks-operator")[0]["rules"]
    assert all("kopf.dev" not in rule["apiGroups"] for rule in rules)


def test_several_replicas_peer_with_a_distinct_priority_per_pod(env: dict[str, str]) -> None:
    docs = render(env, {"operator": {"replicas": 3}})
    (statefulset,) = find(docs, "StatefulSet")
    assert statefulset["spec"]["replicas"] == 3
    variables = env_of(operator_container(docs))
    assert variables["BBP_PEERING"] == "true"
    # The pod index is unique per StatefulSet pod, and so then is the priority.
    assert variables["BBP_PRIORITY"] == {
        "fieldRef": {"fieldPath": "metadata.labels['apps.kubernetes.io/pod-index']"}
    }
    # By default the operator serves the session namespace only: its peering is namespaced.
    (peering,) = find(docs, "KopfPeering")
    assert peering["metadata"]["name"] == variables["BBP_PEERING_NAME"] == "bbp-notebooks"
    assert peering["metadata"]["namespace"] == "bbp-sessions"
    assert not find(docs, "ClusterKopfPeering")

    everywhere = render(env, {"operator": {"replicas": 3, "watchAllNamespaces": True}})
    (peering,) = find(everywhere, "ClusterKopfPeering")
    assert peering["metadata"]["name"] == "bbp-notebooks"
    rules = find(everywhere, "ClusterRole", "bbp-bbp-notebooks-operator")[0]["rules"]
    assert {
        "apiGroups": ["kopf.dev"],
        "resources": ["clusterkopfpeerings"],
        "verbs": ["get", "list", "watch", "patch"],
    } in rules


def test_by_default_the_operator_serves_only_the_session_namespace(env: dict[str, str]) -> None:
    variables = env_of(operator_container(render(env, {})))
    assert variables["BBP_WATCH_NAMESPACES"] == '["bbp-sessions"]'
    asked = {"operator": {"settings": {"watchNamespaces": ["team-a"]}}}
    assert env_of(operator_container(render(env, asked)))["BBP_WATCH_NAMESPACES"] == '["team-a"]'
    everywhere = render(env, {"operator": {"watchAllNamespaces": True}})
    assert env_of(operator_container(everywhere))["BBP_WATCH_NAMESPACES"] == "[]"


def test_the_dummy_authenticator_renders_only_with_the_mock_slurm(env: dict[str, str]) -> None:
    refused = template({"hub": {"authenticator": {"type": "dummy"}}}, env=env)
    assert refused.returncode != 0
    assert "dummy lets anyone in" in refused.stderr
    mock = {
        "enabled": True,
        "hostCaPrivateKey": "k",
        "hostCaPublicKey": "ssh-ed25519 AAAA",
        "userCaPublicKey": "ssh-ed25519 AAAA",
    }
    dev = template({"hub": {"authenticator": {"type": "dummy"}}, "mockSlurm": mock}, env=env)
    assert dev.returncode == 0, dev.stderr
    assert template({}, env=env).returncode == 0  # the default (pam) renders


def test_the_operator_reads_secrets_in_its_namespace_by_name_only(env: dict[str, str]) -> None:
    values = {
        "slurmSites": [
            {"name": "a", "spec": {"auth": {"caSecretName": "ca-of-a"}}},
            {"name": "b", "spec": {}},
        ],
        "rbac": {"operatorSecretNames": ["bbp-ssh-key-alice"]},
    }
    docs = render(env, values)
    (role,) = find(docs, "Role", "bbp-bbp-notebooks-operator")
    secret_rules = [r for r in role["rules"] if "secrets" in r["resources"]]
    assert secret_rules == [
        {
            "apiGroups": [""],
            "resources": ["secrets"],
            "verbs": ["get"],
            "resourceNames": ["bbp-user-ca", "ca-of-a", "b-user-ca", "bbp-ssh-key-alice"],
        }
    ]


def test_watching_namespaces_peers_in_each_of_them(env: dict[str, str]) -> None:
    docs = render(
        env, {"operator": {"replicas": 2, "settings": {"watchNamespaces": ["team-a", "team-b"]}}}
    )
    assert sorted(p["metadata"]["namespace"] for p in find(docs, "KopfPeering")) == [
        "team-a",
        "team-b",
    ]
    assert not find(docs, "ClusterKopfPeering")
    peering_roles = [r for r in find(docs, "Role") if r["metadata"]["name"].endswith("-peering")]
    assert sorted(r["metadata"]["namespace"] for r in peering_roles) == ["team-a", "team-b"]


def test_each_shard_is_its_own_peered_statefulset_serving_its_sites(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    shards = [
        {"name": "geneva", "sites": ["geneva"], "placesAuto": True},
        {"name": "lugano", "sites": ["lugano", "lugano-gpu"]},
    ]
    values = {
        "operator": {"replicas": 2, "shards": shards, "podDisruptionBudget": {"enabled": True}}
    }
    docs = render(env, values)
    statefulsets = {s["metadata"]["name"]: s for s in find(docs, "StatefulSet")}
    assert sorted(statefulsets) == [
        "bbp-bbp-notebooks-operator-geneva",
        "bbp-bbp-notebooks-operator-lugano",
    ]
    served = {}
    for name, statefulset in statefulsets.items():
        shard = name.rsplit("-", 1)[1]
        assert statefulset["spec"]["replicas"] == 2
        selector = statefulset["spec"]["selector"]["matchLabels"]
        assert selector["bbp-notebooks/shard"] == shard  # each its own pods
        assert statefulset["spec"]["template"]["metadata"]["labels"]["bbp-notebooks/shard"] == shard
        variables = env_of(statefulset["spec"]["template"]["spec"]["containers"][0])
        for key, value in variables.items():
            if isinstance(value, str):
                monkeypatch.setenv(key, value)
        monkeypatch.delenv("BBP_SETTINGS_FILE", raising=False)
        settings = OperatorSettings()  # the operator accepts what the chart gives each shard
        served[shard] = (settings.sites, settings.places_auto, settings.peering_name)
        monkeypatch.delenv("BBP_PLACES_AUTO", raising=False)
    assert served == {
        "geneva": (["geneva"], True, "bbp-notebooks-geneva"),
        "lugano": (["lugano", "lugano-gpu"], False, "bbp-notebooks-lugano"),
    }
    peerings = sorted(p["metadata"]["name"] for p in find(docs, "KopfPeering"))
    assert peerings == ["bbp-notebooks-geneva", "bbp-notebooks-lugano"]
    budgets = {
        b["metadata"]["name"]: b["spec"]["selector"]["matchLabels"]
        for b in find(docs, "PodDisruptionBudget")
    }
    assert {n: b["bbp-notebooks/shard"] for n, b in budgets.items()} == {
        "bbp-bbp-notebooks-operator-geneva": "geneva",
        "bbp-bbp-notebooks-operator-lugano": "lugano",
    }
    # The Service still selects every operator pod: any replica of any shard records a report.
    services = [
        s
        for s in find(docs, "Service")
        if s["spec"]["selector"].get("app.kubernetes.io/component") == "operator"
    ]
    assert services and all("bbp-notebooks/shard" not in s["spec"]["selector"] for s in services)


def test_the_operator_environment_is_the_settings_asked_for(
    env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked = {
        "watchNamespaces": ["team-a", "team-b"],
        "commandTimeoutSeconds": 45,
        "notebookCommand": ["python3", "-m", "http.server", "--bind", "{host}", "{port}"],
        "orphanGraceSeconds": 600,
    }
    docs = render(env, {"operator": {"settings": asked, "httpPort": 9000}}, namespace="hpc")
    variables = env_of(operator_container(docs))
    assert set(variables) <= {f"BBP_{name.upper()}" for name in OperatorSettings.model_fields}
    for name, value in variables.items():
        if isinstance(value, str):
            monkeypatch.setenv(name, value)
    monkeypatch.delenv("BBP_SETTINGS_FILE", raising=False)
    settings = OperatorSettings()
    assert settings.watch_namespaces == ["team-a", "team-b"]
    assert settings.command_timeout_seconds == 45
    assert settings.notebook_command == asked["notebookCommand"]
    assert settings.orphan_grace_seconds == 600
    assert settings.http_port == 9000
    assert settings.callback_url == "http://bbp-bbp-notebooks-operator.hpc.svc:9000"
    assert variables["BBP_NAMESPACE"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    assert variables["BBP_HTTP_HOST"] == {"fieldRef": {"fieldPath": "status.podIP"}}


@pytest.mark.parametrize(
    "combo", ["defaults", "high-availability", "kind-with-mock-slurm", "oauth-hub"]
)
def test_every_object_carries_the_standard_labels(
    env: dict[str, str], combos: dict[str, dict[str, Any]], combo: str
) -> None:
    for doc in render(env, combos[combo]):
        labels = doc["metadata"].get("labels", {})
        missing = [label for label in STANDARD_LABELS if label not in labels]
        assert missing == [], f"{doc['kind']}/{doc['metadata']['name']} lacks {missing}"
        assert labels["app.kubernetes.io/managed-by"] == "Helm"


def test_secret_values_reach_containers_only_through_secret_references(
    env: dict[str, str], combos: dict[str, dict[str, Any]]
) -> None:
    words = ("TOKEN", "SECRET", "PASSWORD", "KEY", "SEED")
    docs = render(env, combos["kind-with-mock-slurm"]) + render(env, combos["oauth-hub"])
    for doc in docs:
        if doc["kind"] not in ("Deployment", "StatefulSet"):
            continue
        for container in doc["spec"]["template"]["spec"]["containers"]:
            argv = " ".join(container.get("command", []) + container.get("args", []))
            assert not any(word.lower() in argv.lower() for word in ("token=", "secret=")), argv
            for item in container.get("env", []):
                if any(word in item["name"] for word in words):
                    assert "secretKeyRef" in item.get("valueFrom", {}), item["name"]


def test_the_hub_never_shares_a_namespace_with_the_operator_ca(env: dict[str, str]) -> None:
    result = template({"sessions": {"namespace": "bbp"}}, namespace="bbp", env=env)
    assert result.returncode != 0
    assert "must differ from the release namespace" in result.stderr


def test_the_operator_reads_session_secrets_only_where_sessions_live(env: dict[str, str]) -> None:
    docs = render(
        env,
        {
            "operator": {"settings": {"watchNamespaces": ["team-a"]}},
            "rbac": {"sessionSecretNamespaces": ["team-c"]},
        },
    )
    bindings = [
        b for b in find(docs, "RoleBinding") if b["roleRef"]["name"].endswith("-session-secrets")
    ]
    assert sorted(b["metadata"]["namespace"] for b in bindings) == [
        "bbp-sessions",
        "team-a",
        "team-c",
    ]
    (reader,) = [
        r for r in find(docs, "ClusterRole") if r["metadata"]["name"].endswith("-session-secrets")
    ]
    assert reader["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["get"]}]
    # No ClusterRole of the chart grants any Secret access cluster-wide through a binding.
    for binding in find(docs, "ClusterRoleBinding"):
        role = find(docs, "ClusterRole", binding["roleRef"]["name"])[0]
        assert all("secrets" not in rule["resources"] for rule in role["rules"])


def test_mock_slurm_config_is_accepted_by_the_mock_and_sites_point_at_it(
    env: dict[str, str], combos: dict[str, dict[str, Any]]
) -> None:
    values = combos["kind-with-mock-slurm"]
    docs = render(env, values)
    (config_map,) = [
        c for c in find(docs, "ConfigMap") if c["metadata"]["name"].endswith("-mockslurm")
    ]
    config = MockSlurmConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    assert [(s.name, s.port, s.first_job_id, s.require_account) for s in config.sites] == [
        ("geneva", 2222, 1000000, False),
        ("lugano", 2223, 2000000, True),
    ]
    assert config.control is None
    geneva = next(s for s in config.sites if s.name == "geneva")
    assert [p.name for p in geneva.partitions] == ["prod", "debug"]
    assert geneva.user_ca_keys == [values["mockSlurm"]["userCaPublicKey"]]
    site = find(docs, "SlurmSite", "geneva")[0]["spec"]
    assert site["frontend"] == {"host": "bbp-bbp-notebooks-mockslurm.bbp.svc", "port": 2222}
    assert site["hostKeys"] == {"certificateAuthorities": [values["mockSlurm"]["hostCaPublicKey"]]}
    # Its notebooks run in the mock's pod: reached at the headless Service's name.
    assert site["nodeAddressTemplate"] == "bbp-bbp-notebooks-mockslurm-nodes.bbp.svc"
    (nodes,) = find(docs, "Service", "bbp-bbp-notebooks-mockslurm-nodes")
    assert nodes["spec"]["clusterIP"] == "None"
    assert nodes["spec"]["selector"]["app.kubernetes.io/component"] == "mockslurm"
    (deployment,) = [
        d for d in find(docs, "Deployment") if d["metadata"]["name"].endswith("-mockslurm")
    ]
    command = deployment["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:2] == ["bbp-notebooks-mockslurm", "--config"]


def test_every_pod_runs_as_non_root_with_a_read_only_root(
    env: dict[str, str], combos: dict[str, dict[str, Any]]
) -> None:
    for doc in render(env, combos["kind-with-mock-slurm"]):
        if doc["kind"] not in ("Deployment", "StatefulSet", "Job"):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        for container in pod["containers"]:
            context = container["securityContext"]
            assert context["readOnlyRootFilesystem"] is True
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]


def test_the_probes_allow_for_a_loop_busy_resuming_every_session(env: dict[str, str]) -> None:
    """After a restart kopf resumes every session on the loop that answers /healthz: make bench
    saw 3.35 s for one answer at 1,016 sessions. The default 1 s timeout would kill the pod."""
    container = operator_container(render(env, {}))
    assert container["readinessProbe"]["timeoutSeconds"] >= 5
    liveness = container["livenessProbe"]
    assert liveness["timeoutSeconds"] >= 10
    assert liveness["periodSeconds"] * liveness["failureThreshold"] >= 60


def hook_objects(docs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [d for d in docs if "helm.sh/hook" in (d["metadata"].get("annotations") or {})]


def test_uninstall_first_deletes_the_release_sites_while_the_operator_runs(
    env: dict[str, str], combos: dict[str, dict[str, Any]]
) -> None:
    docs = render(env, combos["kind-with-mock-slurm"])
    hooks = hook_objects(docs)
    assert {d["kind"] for d in hooks} == {
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Job",
    }
    for doc in hooks:
        annotations = doc["metadata"]["annotations"]
        assert annotations["helm.sh/hook"] == "pre-delete"
        assert "hook-succeeded" in annotations["helm.sh/hook-delete-policy"]
        # The identity exists before the Job that uses it.
        assert int(annotations["helm.sh/hook-weight"]) < 0 or doc["kind"] == "Job"
    (role,) = find(hooks, "ClusterRole")
    assert role["rules"] == [
        {
            "apiGroups": ["notebooks.bbp.epfl.ch"],
            "resources": ["slurmsites"],
            "verbs": ["list", "delete", "patch"],
        }
    ]
    (job,) = find(hooks, "Job")
    pod = job["spec"]["template"]["spec"]
    (sa,) = find(hooks, "ServiceAccount")
    assert pod["serviceAccountName"] == sa["metadata"]["name"]
    (binding,) = find(hooks, "ClusterRoleBinding")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {
            "kind": "ServiceAccount",
            "name": sa["metadata"]["name"],
            "namespace": sa["metadata"]["namespace"],
        }
    ]
    (container,) = pod["containers"]
    assert container["image"] == operator_container(docs)["image"]
    assert container["command"] == [
        "bbp-notebooks-uninstall", "--release=bbp", "--grace=20", "--timeout=120"
    ]  # fmt: skip
    # The chart's sites carry what the hook selects them by.
    for site in find(docs, "SlurmSite"):
        assert site["metadata"]["labels"]["app.kubernetes.io/instance"] == "bbp"
    # helm gives up on a hook after its --timeout (5 min by default): the Job ends before.
    assert job["spec"]["activeDeadlineSeconds"] < 300
    off = {**combos["kind-with-mock-slurm"], "operator": {"uninstallHook": {"enabled": False}}}
    assert hook_objects(render(env, off)) == []


KERBEROS_HUB = {
    "hub": {"authenticator": {"type": "kerberos"}},
    "kerberos": {"enabled": True, "realm": "EXAMPLE.ORG", "kdcs": ["kdc.example.org"]},
}


def test_the_hub_keytab_checks_the_kdc_and_renewed_tickets_are_granted_only_on_request(
    env: dict[str, str],
) -> None:
    keytab = {"secretName": "hub-keytab", "servicePrincipal": "HTTP/hub.example.org"}
    values = {**KERBEROS_HUB, "kerberos": {**KERBEROS_HUB["kerberos"], "hubKeytab": keytab}}
    docs = render(env, values)
    (hub,) = [d for d in find(docs, "Deployment") if d["metadata"]["name"].endswith("-hub")]
    pod = hub["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "hub-keytab"]
    assert volume["secret"]["secretName"] == "hub-keytab"
    mounts = pod["containers"][0]["volumeMounts"]
    assert {
        "name": "hub-keytab",
        "mountPath": "/etc/bbp-notebooks/hub-keytab",
        "readOnly": True,
    } in mounts
    configmaps = [d for d in find(docs, "ConfigMap") if d["metadata"]["name"].endswith("-hub")]
    assert "HTTP/hub.example.org" in yaml.safe_dump(configmaps)
    # The operator's ticket write-back: a Role in the sessions namespace and its policy.
    roles = [d for d in find(docs, "Role") if d["metadata"]["name"].endswith("kerberos-tickets")]
    assert [r["metadata"]["namespace"] for r in roles] == ["bbp-sessions"]
    assert roles[0]["rules"] == [{"apiGroups": [""], "resources": ["secrets"], "verbs": ["patch"]}]
    assert find(docs, "ValidatingAdmissionPolicy")
    # Without saveRenewedTickets, no write at all; without a principal, no chart.
    off = {**KERBEROS_HUB, "kerberos": {**KERBEROS_HUB["kerberos"], "saveRenewedTickets": False}}
    assert not [d for d in render(env, off) if d["metadata"]["name"].endswith("kerberos-tickets")]
    bad = {**values, "kerberos": {**values["kerberos"], "hubKeytab": {"secretName": "x"}}}
    refused = template(bad, env=env)
    assert refused.returncode != 0 and "servicePrincipal" in refused.stderr
