"""The container images as written (Docker does not run here) and the hub configuration they run.

The Dockerfiles are checked for what a reviewer would: pinned bases, non-root final stages without
build tools, entry points that exist; the hub's configuration file from the chart is loaded by
traitlets exactly as JupyterHub loads it, against the real spawner class.
"""

from __future__ import annotations

import re
import tomllib
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from traitlets.config.loader import PyFileConfigLoader

from bbp_notebooks.hub.spawner import NotebookSessionSpawner
from chart.helmchart import REPO, documents, find, template_text, tool_env

DOCKER = REPO / "docker"
IMAGES = ("operator", "hub", "mockslurm")
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
# What the kubelet would put in the hub's environment from its Secrets.
HUB_ENV = {
    "CONFIGPROXY_AUTH_TOKEN": "proxy-token",
    "BBP_HUB_COOKIE_SEED": "seed",
    "BBP_HUB_OAUTH_CLIENT_SECRET": "client-secret",
}
SSO = "https://sso.example.org"


def stages(name: str) -> list[list[str]]:
    """The Dockerfile's instructions (continuations joined), split into build stages."""
    text = re.sub(r"\\\n", " ", (DOCKER / f"{name}.Dockerfile").read_text())
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    result: list[list[str]] = [[]]
    for line in lines:
        if (
            line.upper().startswith("FROM ")
            and result[-1]
            and any(x.upper().startswith("FROM ") for x in result[-1])
        ):
            result.append([])
        result[-1].append(line)
    return result


@pytest.mark.parametrize("name", IMAGES)
def test_every_image_builds_on_a_base_pinned_by_tag_and_digest(name: str) -> None:
    (preamble, *_) = stages(name)
    (arg,) = [line for line in preamble if line.startswith("ARG PYTHON_IMAGE=")]
    assert re.fullmatch(r"ARG PYTHON_IMAGE=python:3\.11-slim-bookworm@sha256:[0-9a-f]{64}", arg)
    froms = [line for stage in stages(name) for line in stage if line.startswith("FROM")]
    assert all(line.startswith("FROM ${PYTHON_IMAGE}") for line in froms), froms


# What a final stage may install from Debian: runtime pieces its process uses, never a toolchain.
RUNTIME_PACKAGES = {
    "operator": {"krb5-user"},  # kinit -R renews users' tickets (ssh/kerberos.py)
    "hub": {"libgssapi-krb5-2"},  # python-gssapi's library (Kerberos login)
    "mockslurm": set(),
}


def apt_installs(stage: list[str]) -> set[str]:
    runs = " ".join(line for line in stage if line.startswith("RUN"))
    packages: set[str] = set()
    for command in re.findall(r"apt-get install ([^&]*)", runs):
        packages |= {word for word in command.split() if not word.startswith("-")}
    return packages


@pytest.mark.parametrize("name", [*IMAGES, "proxy"])
def test_no_dockerfile_needs_a_frontend_from_a_registry(name: str) -> None:
    text = (DOCKER / f"{name}.Dockerfile").read_text()
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE)


@pytest.mark.parametrize("name", IMAGES)
def test_package_downloads_may_trust_a_ca_bundle_that_is_kept_out_of_the_image(name: str) -> None:
    (build, *_) = stages(name)
    pip_runs = [line for line in build if line.startswith("RUN") and "pip install" in line]
    assert pip_runs
    for line in pip_runs:
        assert line.startswith("RUN --mount=type=secret,id=ca-bundle "), line
        assert "PIP_CERT=/run/secrets/ca-bundle" in line
    assert not any("ca-bundle" in line for line in stages(name)[-1])


@pytest.mark.parametrize("name", IMAGES)
def test_the_final_stage_is_non_root_and_carries_no_build_tools(name: str) -> None:
    all_stages = stages(name)
    assert len(all_stages) >= 2, "multi-stage: the build happens in a stage of its own"
    final = all_stages[-1]
    runs = " ".join(line for line in final if line.startswith("RUN"))
    for tool in ("pip install", "gcc", "build-essential", "-dev"):
        assert tool not in runs
    assert apt_installs(final) == RUNTIME_PACKAGES[name]
    (user,) = [line for line in final if line.startswith("USER")]
    uid, _, gid = user.split()[1].partition(":")
    assert int(uid) >= 1000 and int(gid) >= 1000
    assert any(line.startswith("COPY --from=build /opt/bbp /opt/bbp") for line in final)
    assert (DOCKER / f"{name}.Dockerfile.dockerignore").is_file()


@pytest.mark.parametrize("name", IMAGES)
def test_the_entry_point_of_every_image_is_a_command_it_installs(name: str) -> None:
    final = stages(name)[-1]
    (entry,) = [line for line in final if line.startswith("ENTRYPOINT")]
    command = re.fullmatch(r'ENTRYPOINT \["([^"]+)"\]', entry)
    assert command, entry
    assert command[1] in {*PYPROJECT["project"]["scripts"], "jupyterhub"}


def test_the_constraints_pin_every_dependency_within_its_declared_range() -> None:
    pins: dict[str, str] = {}
    for line in (DOCKER / "constraints.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.lower().replace("_", "-")] = version
    extras = PYPROJECT["project"]["optional-dependencies"]
    declared = [
        *PYPROJECT["project"]["dependencies"],
        *(text for name in (*IMAGES, "dev") for text in extras[name]),
        *PYPROJECT["build-system"]["requires"],
    ]
    for text in declared:
        requirement = Requirement(text)
        if requirement.name == PYPROJECT["project"]["name"]:
            continue
        name = requirement.name.lower().replace("_", "-")
        assert name in pins, f"{name} is not pinned in docker/constraints.txt"
        assert requirement.specifier.contains(pins[name]), f"{name}=={pins[name]} vs {text}"


@pytest.mark.parametrize("name", IMAGES)
def test_each_image_installs_its_own_extra_and_the_hub_has_no_ssh_or_kopf(name: str) -> None:
    (build, *_) = stages(name)
    assert any(f"optional-dependencies\"][sys.argv[1]]))' {name} " in line for line in build)
    extras = PYPROJECT["project"]["optional-dependencies"]
    core = {Requirement(text).name for text in PYPROJECT["project"]["dependencies"]}
    hub = core | {Requirement(text).name for text in extras["hub"]}
    mock = core | {Requirement(text).name for text in extras["mockslurm"]}
    assert not {"kopf", "asyncssh", "kubernetes"} & hub
    assert not {"kopf", "kubernetes", "kubernetes_asyncio", "jupyterhub"} & mock
    assert "kubernetes" not in core | {Requirement(text).name for text in extras["operator"]}


def test_the_proxy_image_is_built_here_from_debian_and_runs_as_a_user() -> None:
    (stage,) = stages("proxy")
    assert stage[0].startswith("ARG PYTHON_IMAGE=")
    assert stage[0] == stages("operator")[0][0], "the same pinned base as the other images"
    assert apt_installs(stage) == {"node-configurable-http-proxy"}
    (user,) = [line for line in stage if line.startswith("USER")]
    assert int(user.split()[1].partition(":")[0]) >= 1000
    assert 'ENTRYPOINT ["configurable-http-proxy"]' in stage


def test_the_chart_runs_the_commands_the_images_install() -> None:
    docs = documents(
        template_text(
            {
                "mockSlurm": {
                    "enabled": True,
                    "hostCaPrivateKey": "k",
                    "hostCaPublicKey": "ssh-ed25519 AAAA",
                    "userCaPublicKey": "ssh-ed25519 AAAA",
                }
            },
            env=tool_env(),
        )
    )
    workloads = find(docs, "StatefulSet") + find(docs, "Deployment")
    commands = {
        w["metadata"]["name"]: w["spec"]["template"]["spec"]["containers"][0]["command"][0]
        for w in workloads
    }
    assert commands == {
        "bbp-bbp-notebooks-operator": "bbp-notebooks-operator",
        "bbp-bbp-notebooks-hub": "jupyterhub",
        "bbp-bbp-notebooks-proxy": "configurable-http-proxy",
        "bbp-bbp-notebooks-mockslurm": "bbp-notebooks-mockslurm",
    }


def load_hub_config(tmp_path: Path, values: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Any:
    docs = documents(template_text(values, env=tool_env()))
    (config_map,) = [c for c in find(docs, "ConfigMap") if c["metadata"]["name"].endswith("-hub")]
    for name, text in config_map["data"].items():
        (tmp_path / name).write_text(text)
    for name, value in HUB_ENV.items():
        monkeypatch.setenv(name, value)
    return PyFileConfigLoader("jupyterhub_config.py", path=str(tmp_path)).load_config()


def test_the_hub_configuration_loads_and_configures_our_spawner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_hub_config(
        tmp_path,
        {
            "hub": {
                "spawner": {"start_timeout": 300},
                "extraConfig": "c.JupyterHub.log_level = 'DEBUG'",
            }
        },
        monkeypatch,
    )
    assert config.JupyterHub.spawner_class == "notebooksession"
    (spawner,) = entry_points(group="jupyterhub.spawners", name="notebooksession")
    assert spawner.load() is NotebookSessionSpawner
    assert config.NotebookSessionSpawner.namespace == "bbp-sessions"
    assert config.NotebookSessionSpawner.start_timeout == 300
    unknown = set(config.NotebookSessionSpawner) - set(NotebookSessionSpawner.class_trait_names())
    assert unknown == set(), f"traits the spawner does not have: {unknown}"
    assert config.ConfigurableHTTPProxy.should_start is False
    assert config.ConfigurableHTTPProxy.api_url == "http://bbp-bbp-notebooks-proxy-api.bbp.svc:8001"
    assert config.ConfigurableHTTPProxy.auth_token == HUB_ENV["CONFIGPROXY_AUTH_TOKEN"]
    assert config.JupyterHub.cleanup_servers is False
    assert config.JupyterHub.authenticator_class == "pam"
    assert config.Authenticator.allow_all is True
    assert config.JupyterHub.log_level == "DEBUG"
    assert len(config.JupyterHub.cookie_secret) == 32


def test_the_hub_configuration_for_oauth_takes_the_client_secret_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_hub_config(
        tmp_path,
        {
            "hub": {
                "authenticator": {
                    "type": "generic-oauth",
                    "allowedUsers": ["alice"],
                    "adminUsers": ["alice"],
                    "genericOAuth": {
                        "clientId": "bbp",
                        "clientSecretName": "oauth",
                        "tokenUrl": f"{SSO}/token",
                    },
                }
            }
        },
        monkeypatch,
    )
    assert config.JupyterHub.authenticator_class == "generic-oauth"
    assert config.GenericOAuthenticator.client_id == "bbp"
    assert config.GenericOAuthenticator.client_secret == HUB_ENV["BBP_HUB_OAUTH_CLIENT_SECRET"]
    assert config.GenericOAuthenticator.token_url == f"{SSO}/token"
    assert config.Authenticator.allowed_users == {"alice"}
    assert "allow_all" not in config.Authenticator


def test_notebooks_reach_the_hub_api_at_the_connect_url_and_the_proxy_keeps_the_service(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    public = "https://notebooks.example.org"
    config = load_hub_config(tmp_path, {"hub": {"connectUrl": public}}, monkeypatch)
    assert config.Spawner.hub_connect_url == public
    assert config.JupyterHub.hub_connect_url == "http://bbp-bbp-notebooks-hub.bbp.svc:8081"
    (tmp_path / "default").mkdir()
    default = load_hub_config(tmp_path / "default", {}, monkeypatch)
    assert "hub_connect_url" not in default.Spawner


def test_the_hub_shows_sessions_lets_users_share_and_culls_idle_servers_only_when_asked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bbp_notebooks.hub import handlers

    default = load_hub_config(tmp_path, {}, monkeypatch)
    assert default.JupyterHub.template_paths == [handlers.TEMPLATES]
    assert (Path(handlers.TEMPLATES) / "home.html").is_file()
    assert [path for path, _ in default.JupyterHub.extra_handlers] == [
        "/api/bbp/sessions",
        "/api/bbp/sessions/([^/]+)",
        "/api/bbp/extend/([^/]*)",
    ]
    (user_role,) = default.JupyterHub.load_roles
    assert user_role["name"] == "user"
    assert {"self", "shares!user", "read:users:name"} <= set(user_role["scopes"])
    assert "services" not in default.JupyterHub  # production default: no culler

    (tmp_path / "culling").mkdir()
    culling = load_hub_config(
        tmp_path / "culling",
        {
            "hub": {
                "idleCulling": {"enabled": True, "timeoutSeconds": 1200, "cullEverySeconds": 60},
                "sharing": {"enabled": False},
                "formTemplatePaths": ["/etc/bbp-notebooks/templates"],
            }
        },
        monkeypatch,
    )
    (service,) = culling.JupyterHub.services
    assert service["command"][1:] == [
        "-m", "jupyterhub_idle_culler", "--timeout=1200", "--cull-every=60",
    ]  # fmt: skip
    (role,) = culling.JupyterHub.load_roles  # sharing off: the stock user role
    assert role["services"] == ["idle-culler"]
    assert set(role["scopes"]) == {
        "list:users", "read:users:activity", "read:servers", "delete:servers",
    }  # fmt: skip
    assert culling.NotebookSessionSpawner.form_template_paths == ["/etc/bbp-notebooks/templates"]
