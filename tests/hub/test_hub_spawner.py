"""NotebookSessionSpawner against the real kube-apiserver. The operator is not running: the test
plays it by patching session status and holding a finalizer, as the operator does."""

from __future__ import annotations

import asyncio
import datetime as dt
import html
import json
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from jupyterhub.objects import Hub, Server
from kubernetes import client as sync_client
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from tornado import web

from bbp_notebooks.api.constants import (
    CREATED_BY_ANNOTATION,
    GROUP,
    GROUPS_ANNOTATION,
    PROFILE_PLURAL,
    SESSION_PLURAL,
    SITE_PLURAL,
    VERSION,
)
from bbp_notebooks.api.models import (
    Condition,
    ConditionStatus,
    Endpoint,
    NotebookSessionStatus,
    QueueInfo,
    SessionPhase,
    dump,
)
from bbp_notebooks.devtools.admission import HUB_USERNAME, install_hub_identity
from bbp_notebooks.devtools.waiting import wait_until_async
from bbp_notebooks.hub import naming, options
from bbp_notebooks.hub.kube import HubKube, close_api_clients
from bbp_notebooks.hub.spawner import NotebookSessionSpawner, SessionFailed

pytestmark = pytest.mark.kube

NAMESPACE = "hub-tests"
TOKEN = "hub-api-token-4b1d"  # noqa: S105 (a test value whose leak the tests look for)
FINALIZER = f"{GROUP}/cancel-slurm-job"

PROFILES: dict[str, dict[str, Any]] = {
    "hubt-open": {"displayName": "HubTest Open", "cores": 1, "memoryMiB": 1024},
    "hubt-geneva-only": {
        "displayName": "HubTest Geneva only",
        "cores": 1,
        "memoryMiB": 1024,
        "allowedSites": ["hubt-geneva"],
    },
    "hubt-thalamus": {
        "displayName": "HubTest Thalamus",
        "cores": 1,
        "memoryMiB": 1024,
        "allowedGroups": ["thalamus"],
    },
}


def site_spec(display: str, policy: str) -> dict[str, Any]:
    return {
        "displayName": display,
        "frontend": {"host": "127.0.0.21", "port": 2222},
        "hostKeys": {"knownHosts": ["[127.0.0.21]:2222 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAA"]},
        "partitions": [{"name": "prod", "default": True}],
        "accountPolicy": policy,
        "monitorUser": "bbpmon",
        "pollIntervalSeconds": 10,
    }


SITES = {
    "hubt-geneva": site_spec("HubTest Geneva", "Optional"),
    "hubt-lugano": site_spec("HubTest Lugano", "Required"),
}


def condition(type_: str, status: str, reason: str, message: str = "") -> Condition:
    return Condition(
        type=type_,
        status=ConditionStatus(status),
        reason=reason,
        message=message,
        lastTransitionTime=dt.datetime.now(dt.UTC).replace(microsecond=0),
    )


# Fixtures ----------


@pytest.fixture(scope="module")
def catalogue(control_plane: Any, kube_api: Any) -> Iterator[None]:
    """Test profiles and sites (cluster-scoped, so prefixed hubt-), and the session namespace."""
    control_plane.ensure_namespace(NAMESPACE)
    custom = sync_client.CustomObjectsApi(kube_api)
    for plural, objects in ((PROFILE_PLURAL, PROFILES), (SITE_PLURAL, SITES)):
        kind = "NotebookProfile" if plural == PROFILE_PLURAL else "SlurmSite"
        for name, spec in objects.items():
            body = {
                "apiVersion": f"{GROUP}/{VERSION}",
                "kind": kind,
                "metadata": {"name": name},
                "spec": spec,
            }
            try:
                custom.create_cluster_custom_object(GROUP, VERSION, plural, body)
            except sync_client.ApiException as error:
                if error.status != 409:
                    raise
    yield
    for plural, objects in ((PROFILE_PLURAL, PROFILES), (SITE_PLURAL, SITES)):
        for name in objects:
            custom.delete_cluster_custom_object(GROUP, VERSION, plural, name)


@pytest.fixture
async def kube(control_plane: Any, catalogue: None) -> AsyncIterator[HubKube]:
    """The test's own client (it plays the operator); closes the spawners' clients afterwards."""
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    api = k8s.ApiClient(configuration=configuration)
    try:
        yield HubKube(api)
    finally:
        await api.close()
        await close_api_clients()


@pytest.fixture(autouse=True)
def no_leftover_sessions(kube_api: Any) -> Iterator[None]:
    yield
    custom = sync_client.CustomObjectsApi(kube_api)
    core = sync_client.CoreV1Api(kube_api)
    for item in custom.list_namespaced_custom_object(GROUP, VERSION, NAMESPACE, SESSION_PLURAL)[
        "items"
    ]:
        name = item["metadata"]["name"]
        for call, args in (
            (custom.patch_namespaced_custom_object, ({"metadata": {"finalizers": None}},)),
            (custom.delete_namespaced_custom_object, ()),
        ):
            try:
                call(GROUP, VERSION, NAMESPACE, SESSION_PLURAL, name, *args)
            except sync_client.ApiException as error:  # a session held for deletion goes at once
                if error.status != 404:
                    raise
    for secret in core.list_namespaced_secret(NAMESPACE).items:
        core.delete_namespaced_secret(secret.metadata.name, NAMESPACE)


class FakeUser:
    """What a Spawner uses of jupyterhub.user.User (as JupyterHub's and KubeSpawner's tests do)."""

    def __init__(self, name: str, groups: tuple[str, ...] = ()) -> None:
        self.name = name
        self.groups = [SimpleNamespace(name=group) for group in groups]
        self.server = Server()

    @property
    def escaped_name(self) -> str:
        return self.name

    @property
    def url(self) -> str:
        return f"/user/{self.name}/"


_hub_kubeconfigs: dict[Path, str] = {}


def hub_kubeconfig(control_plane: Any) -> str:
    """A token of the chart's hub ServiceAccount with the chart's hub RBAC for NAMESPACE."""
    if control_plane.workdir not in _hub_kubeconfigs:
        path = install_hub_identity(control_plane, NAMESPACE)
        _hub_kubeconfigs[control_plane.workdir] = str(path)
    return _hub_kubeconfigs[control_plane.workdir]


def make_spawner(
    control_plane: Any,
    user: str = "alice",
    *,
    groups: tuple[str, ...] = (),
    server: str = "",
    **traits: Any,
) -> NotebookSessionSpawner:
    settings: dict[str, Any] = {
        "namespace": NAMESPACE,
        # As deployed: the hub's own ServiceAccount, never the admin (the admission policy lets
        # only the hub set the groups annotation).
        "kubeconfig": hub_kubeconfig(control_plane),
        "status_poll_interval": 0.1,
        "stop_timeout": 20,
        "start_timeout": 30,
        **traits,
    }
    return NotebookSessionSpawner(
        user=FakeUser(user, groups),
        hub=Hub(),
        orm_spawner=SimpleNamespace(name=server, server=None, display_name=server),
        api_token=TOKEN,
        oauth_client_id=f"jupyterhub-user-{user}",
        **settings,
    )


async def patch_status(kube: HubKube, name: str, status: NotebookSessionStatus) -> None:
    await kube.custom.patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        NAMESPACE,
        SESSION_PLURAL,
        name,
        {"status": dump(status)},
        _content_type="application/merge-patch+json",
    )


async def patch_site_status(kube: HubKube, name: str, status: dict[str, Any]) -> None:
    await kube.custom.patch_cluster_custom_object_status(
        GROUP,
        VERSION,
        SITE_PLURAL,
        name,
        {"status": status},
        _content_type="application/merge-patch+json",
    )


async def set_finalizer(kube: HubKube, name: str, present: bool) -> None:
    await kube.custom.patch_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        SESSION_PLURAL,
        name,
        {"metadata": {"finalizers": [FINALIZER] if present else None}},
        _content_type="application/merge-patch+json",
    )


async def live_sites(kube: HubKube) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat()
    up = condition("Reachable", "True", "Polled").model_dump(mode="json", by_alias=True)
    down = condition("Reachable", "False", "SiteUnavailable", "ssh: timeout").model_dump(
        mode="json", by_alias=True
    )
    await patch_site_status(
        kube, "hubt-geneva", {"conditions": [up], "idleNodes": 8, "lastPollTime": now}
    )
    await patch_site_status(kube, "hubt-lugano", {"conditions": [down]})


READY = NotebookSessionStatus(
    phase=SessionPhase.READY,
    site="hubt-geneva",
    jobId=1000007,
    node="node-1",
    endpoint=Endpoint(host="127.0.0.1", port=43210, url="http://127.0.0.1:43210"),
)


async def start_until_created(
    spawner: NotebookSessionSpawner, kube: HubKube
) -> tuple[asyncio.Task[str], dict[str, Any]]:
    """start() in a task, and the session once the API server has it."""
    task = asyncio.create_task(spawner.start())
    name = naming.session_name(spawner.user.name, spawner.name)

    async def created() -> dict[str, Any] | None:
        if task.done():
            task.result()  # surface the start() error instead of timing out
        return await kube.read_session(NAMESPACE, name)

    return task, await wait_until_async(created, 10, f"session {name}", 0.05)


async def start_ready(spawner: NotebookSessionSpawner, kube: HubKube) -> str:
    task, session = await start_until_created(spawner, kube)
    await patch_status(kube, session["metadata"]["name"], READY)
    return await asyncio.wait_for(task, timeout=10)


# The form ----------


async def test_form_lists_only_the_profiles_the_users_groups_allow(
    control_plane: Any, kube: HubKube
) -> None:
    alice = await make_spawner(control_plane, "alice").get_options_form()
    bob = await make_spawner(control_plane, "bob", groups=("thalamus",)).get_options_form()
    assert "HubTest Open" in alice and "HubTest Geneva only" in alice
    assert "hubt-thalamus" not in alice and "HubTest Thalamus" not in alice
    assert 'value="hubt-thalamus"' in bob


async def test_form_shows_live_availability_of_each_site(control_plane: Any, kube: HubKube) -> None:
    await live_sites(kube)
    form = html.unescape(await make_spawner(control_plane).get_options_form())
    assert "HubTest Geneva — 8 nodes available" in form
    assert "HubTest Lugano — unreachable" in form
    assert 'name="account-hubt-lugano"' in form  # Lugano requires a project


async def test_form_offers_the_accounts_a_site_lists_for_the_user(
    control_plane: Any, kube: HubKube
) -> None:
    annotation = json.dumps([{"user": "alice", "accounts": ["proj1", "proj2"]}])
    await kube.custom.patch_cluster_custom_object(
        GROUP,
        VERSION,
        SITE_PLURAL,
        "hubt-lugano",
        {"metadata": {"annotations": {options.USER_ACCOUNTS_ANNOTATION: annotation}}},
        _content_type="application/merge-patch+json",
    )
    try:
        spawner = make_spawner(control_plane)
        form = await spawner.get_options_form()
        assert '<option value="proj2">proj2</option>' in form
        accepted = await spawner.run_options_from_form(
            {"profile": ["hubt-open"], "site": ["hubt-lugano"], "account-hubt-lugano": ["proj2"]}
        )
        assert accepted == {"profile": "hubt-open", "site": "hubt-lugano", "account": "proj2"}
        with pytest.raises(ValueError, match="'proj3' is not one of your projects"):
            await spawner.run_options_from_form(
                {
                    "profile": ["hubt-open"],
                    "site": ["hubt-lugano"],
                    "account-hubt-lugano": ["proj3"],
                }
            )
    finally:
        await kube.custom.patch_cluster_custom_object(
            GROUP,
            VERSION,
            SITE_PLURAL,
            "hubt-lugano",
            {"metadata": {"annotations": {options.USER_ACCOUNTS_ANNOTATION: None}}},
            _content_type="application/merge-patch+json",
        )


@pytest.mark.parametrize(
    ("form", "message"),
    [
        ({"profile": ["hubt-nope"], "site": ["hubt-geneva"]}, "does not exist or is not available"),
        ({"profile": ["hubt-thalamus"], "site": ["hubt-geneva"]}, "is not available to you"),
        ({"profile": ["hubt-open"], "site": ["hubt-basel"]}, "cluster 'hubt-basel' does not exist"),
        (
            {"profile": ["hubt-geneva-only"], "site": ["hubt-lugano"]},
            "cannot run at HubTest Lugano",
        ),
        ({"profile": ["hubt-open"], "site": ["hubt-lugano"]}, "HubTest Lugano requires a project"),
        (
            {"profile": ["hubt-open"], "site": ["hubt-lugano"], "account-hubt-lugano": ["$(id)"]},
            "not a valid Slurm account",
        ),
    ],
)
async def test_unknown_or_forbidden_form_values_are_rejected(
    control_plane: Any, kube: HubKube, form: dict[str, list[str]], message: str
) -> None:
    spawner = make_spawner(control_plane)
    with pytest.raises(ValueError, match=message):
        await spawner.run_options_from_form(form)


async def test_options_from_the_rest_api_are_checked_before_start(
    control_plane: Any, kube: HubKube
) -> None:
    spawner = make_spawner(control_plane)
    with pytest.raises(web.HTTPError) as refused:
        await spawner._run_apply_user_options({"profile": "hubt-open", "site": "elsewhere"})
    assert refused.value.status_code == 400
    assert "cluster 'elsewhere' does not exist" in (refused.value.log_message or "")
    spawner.user_options = {"profile": "hubt-thalamus"}
    with pytest.raises(ValueError, match="not available to you"):
        await spawner.start()
    assert (
        await kube.read_secret(NAMESPACE, naming.secret_name(naming.session_name("alice", "")))
        is None
    )


# start / progress ----------


async def test_start_creates_the_secret_and_session_and_returns_the_url_once_ready(
    control_plane: Any, kube: HubKube
) -> None:
    spawner = make_spawner(control_plane, groups=("thalamus", "bad,group"))
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    task, session = await start_until_created(spawner, kube)
    name = session["metadata"]["name"]
    secret_name = naming.secret_name(name)

    assert name == naming.session_name("alice", "")
    assert session["spec"] == {
        "user": "alice",
        "profile": "hubt-open",
        "site": "hubt-geneva",
        "serverName": "",
        "environmentSecretRef": {"name": secret_name},
    }
    meta = session["metadata"]
    assert meta["annotations"][GROUPS_ANNOTATION] == "thalamus"  # "bad,group" refused
    # Who created it, as the API server authenticated the hub (the admission policy checks it).
    assert meta["annotations"][CREATED_BY_ANNOTATION] == HUB_USERNAME
    assert meta["labels"][naming.HUB_USER_LABEL] == "alice"
    assert meta["labels"][naming.SERVER_NAME_LABEL] == ""

    async def owners() -> list[Any] | None:
        # The spawner makes the session the Secret's owner right after creating the session.
        secret = await kube.core.read_namespaced_secret(secret_name, NAMESPACE)
        found: list[Any] | None = secret.metadata.owner_references
        return found

    found = await wait_until_async(owners, 10, "the Secret's owner reference", 0.05)
    assert [(o.kind, o.name, o.uid) for o in found] == [("NotebookSession", name, meta["uid"])]
    env = await kube.read_secret(NAMESPACE, secret_name)
    assert env is not None
    assert env["JUPYTERHUB_API_TOKEN"] == TOKEN
    assert (
        env["JUPYTERHUB_USER"] == "alice" and env["JUPYTERHUB_CLIENT_ID"] == "jupyterhub-user-alice"
    )
    assert "JUPYTERHUB_API_URL" in env and "JUPYTERHUB_OAUTH_CALLBACK_URL" in env

    assert not task.done()  # still waiting: nothing says Ready yet
    await patch_status(kube, name, READY)
    assert await asyncio.wait_for(task, timeout=10) == "http://127.0.0.1:43210"
    assert spawner.get_state()["session"] == {
        "namespace": NAMESPACE,
        "name": name,
        "uid": meta["uid"],
    }


async def test_the_token_is_in_the_secret_and_nowhere_in_the_session(
    control_plane: Any, kube: HubKube
) -> None:
    spawner = make_spawner(control_plane, server="gpu")
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-lugano", "account": "proj1"}
    await start_ready(spawner, kube)
    session = await kube.read_session(NAMESPACE, naming.session_name("alice", "gpu"))
    assert session is not None and session["spec"]["account"] == "proj1"
    assert TOKEN not in json.dumps(session)
    raw = await kube.core.read_namespaced_secret(
        naming.secret_name(session["metadata"]["name"]), NAMESPACE
    )
    assert TOKEN not in json.dumps(raw.metadata.to_dict(), default=str)  # only in data


async def test_progress_streams_queue_node_and_ready_messages(
    control_plane: Any, kube: HubKube
) -> None:
    spawner = make_spawner(control_plane)
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    await live_sites(kube)
    task, session = await start_until_created(spawner, kube)
    name = session["metadata"]["name"]
    messages: list[str] = []

    async def follow() -> None:
        async for event in spawner.progress():
            messages.append(str(event["message"]))

    follower = asyncio.create_task(follow())
    start = dt.datetime(2026, 11, 26, 9, 30, tzinfo=dt.UTC)
    steps = [
        NotebookSessionStatus(
            phase=SessionPhase.QUEUED,
            site="hubt-geneva",
            jobId=1000007,
            queue=QueueInfo(reason="Resources", estimatedStart=start),
        ),
        NotebookSessionStatus(phase=SessionPhase.RUNNING, node="node-1", queue=None),
        READY,
    ]
    for step in steps:
        await patch_status(kube, name, step)
        count = len(messages)
        await wait_until_async(lambda c=count: len(messages) > c, 10, "a progress message", 0.05)
    await asyncio.wait_for(task, timeout=10)
    await asyncio.wait_for(follower, timeout=10)
    assert messages[-3:] == [
        "Queued at HubTest Geneva (Slurm job 1000007): Resources, "
        "expected to start around 2026-11-26 09:30 UTC",
        "Starting the notebook on node-1 at HubTest Geneva (Slurm job 1000007)",
        "Notebook ready on node-1 at HubTest Geneva (Slurm job 1000007)",
    ]


@pytest.mark.parametrize(
    ("phase", "message"),
    [
        (SessionPhase.INVALID_SPEC, "user 'alice' is in none of the groups"),
        (SessionPhase.FAILED, "Slurm job 1000007 ended FAILED (exit code 2)"),
        (SessionPhase.CANCELLED, "Slurm job 1000007 ended CANCELLED"),
        (SessionPhase.TIMEOUT, "Slurm job 1000007 ended TIMEOUT"),
    ],
)
async def test_start_fails_with_the_operators_message_when_the_session_ends(
    control_plane: Any, kube: HubKube, phase: SessionPhase, message: str
) -> None:
    spawner = make_spawner(control_plane)
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    task, session = await start_until_created(spawner, kube)
    await patch_status(
        kube, session["metadata"]["name"], NotebookSessionStatus(phase=phase, message=message)
    )
    with pytest.raises(SessionFailed, match=re.escape(f"{phase.value}: {message}")):
        await asyncio.wait_for(task, timeout=10)


async def test_start_gives_up_at_its_deadline_naming_the_last_known_state(
    control_plane: Any, kube: HubKube
) -> None:
    spawner = make_spawner(control_plane, start_timeout=2)
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    task, session = await start_until_created(spawner, kube)
    await patch_status(
        kube,
        session["metadata"]["name"],
        NotebookSessionStatus(
            phase=SessionPhase.QUEUED,
            site="hubt-geneva",
            jobId=5,
            queue=QueueInfo(reason="Priority"),
        ),
    )
    with pytest.raises(TimeoutError, match="last: Queued at HubTest Geneva .*Priority"):
        await asyncio.wait_for(task, timeout=10)


async def test_a_failed_session_creation_leaves_no_secret_behind(
    control_plane: Any, kube: HubKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def refuse(*_: Any, **__: Any) -> dict[str, Any]:
        raise k8s.ApiException(status=500, reason="etcd is sad")

    monkeypatch.setattr(HubKube, "create_session", refuse)
    spawner = make_spawner(control_plane)
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    with pytest.raises(k8s.ApiException):
        await spawner.start()
    assert (
        await kube.read_secret(NAMESPACE, naming.secret_name(naming.session_name("alice", "")))
        is None
    )
    assert spawner.get_state().get("session") is None


async def test_starting_again_replaces_a_leftover_session_of_the_same_server(
    control_plane: Any, kube: HubKube
) -> None:
    first = make_spawner(control_plane)
    first.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    _, old = await start_until_created(first, kube)
    await patch_status(
        kube,
        old["metadata"]["name"],
        NotebookSessionStatus(phase=SessionPhase.FAILED, message="node died"),
    )
    second = make_spawner(control_plane)  # a hub that lost the first one's state
    second.user_options = {"profile": "hubt-geneva-only", "site": "hubt-geneva"}
    task, new = await start_until_created_after(second, kube, old["metadata"]["uid"])
    assert new["spec"]["profile"] == "hubt-geneva-only"
    await patch_status(kube, new["metadata"]["name"], READY)
    assert await asyncio.wait_for(task, timeout=10) == READY.endpoint.url  # type: ignore[union-attr]


async def start_until_created_after(
    spawner: NotebookSessionSpawner, kube: HubKube, old_uid: str
) -> tuple[asyncio.Task[str], dict[str, Any]]:
    task = asyncio.create_task(spawner.start())
    name = naming.session_name(spawner.user.name, spawner.name)

    async def replaced() -> dict[str, Any] | None:
        if task.done():
            task.result()
        current = await kube.read_session(NAMESPACE, name)
        return current if current and current["metadata"]["uid"] != old_uid else None

    return task, await wait_until_async(replaced, 10, "the replacement session", 0.05)


async def test_named_servers_get_one_session_each(control_plane: Any, kube: HubKube) -> None:
    urls = []
    for server in ("", "gpu", "big-memory"):
        spawner = make_spawner(control_plane, server=server)
        spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
        urls.append(await start_ready(spawner, kube))
    listing = await kube.custom.list_namespaced_custom_object(
        GROUP,
        VERSION,
        NAMESPACE,
        SESSION_PLURAL,
        label_selector=f"{naming.HUB_USER_LABEL}=alice",
    )
    servers = sorted(item["spec"]["serverName"] for item in listing["items"])
    assert servers == ["", "big-memory", "gpu"]


async def test_a_server_name_the_session_cannot_carry_is_refused_before_anything_is_created(
    control_plane: Any, kube: HubKube
) -> None:
    spawner = make_spawner(control_plane, server="my server!")
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    with pytest.raises(ValueError, match="server name 'my server!' cannot be used"):
        await spawner.start()


# poll / stop / state ----------


async def test_poll_follows_the_session_and_never_reads_unreachable_as_stopped(
    control_plane: Any, kube: HubKube
) -> None:
    spawner = make_spawner(control_plane)
    assert await spawner.poll() == 0  # never started
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    task, session = await start_until_created(spawner, kube)
    name = session["metadata"]["name"]
    assert await spawner.poll() is None  # Pending: no status yet

    queued = NotebookSessionStatus(phase=SessionPhase.QUEUED, site="hubt-geneva", jobId=9)
    await patch_status(kube, name, queued)
    assert await spawner.poll() is None

    await patch_status(kube, name, READY)
    await asyncio.wait_for(task, timeout=10)
    assert await spawner.poll() is None

    unreachable = READY.model_copy(
        update={"conditions": [condition("SiteReachable", "False", "SiteUnavailable", "timeout")]}
    )
    await patch_status(kube, name, unreachable)
    assert await spawner.poll() is None

    await patch_status(kube, name, NotebookSessionStatus(phase=SessionPhase.COMPLETED))
    assert await spawner.poll() == 0
    await patch_status(kube, name, NotebookSessionStatus(phase=SessionPhase.FAILED))
    assert await spawner.poll() == 1

    await kube.delete_session(NAMESPACE, name)
    await wait_until_async(lambda: _gone(kube, name), 10, "session deleted", 0.05)
    assert await spawner.poll() == 1


async def _gone(kube: HubKube, name: str) -> bool:
    return await kube.read_session(NAMESPACE, name) is None


async def test_poll_keeps_the_server_when_the_api_server_cannot_be_asked(
    control_plane: Any, kube: HubKube, monkeypatch: pytest.MonkeyPatch
) -> None:
    spawner = make_spawner(control_plane)
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    await start_ready(spawner, kube)

    async def unavailable(*_: Any, **__: Any) -> dict[str, Any]:
        raise k8s.ApiException(status=503, reason="Service Unavailable")

    monkeypatch.setattr(HubKube, "read_session", unavailable)
    assert await spawner.poll() is None


async def test_stop_deletes_the_session_and_waits_until_the_operator_lets_it_go(
    control_plane: Any, kube: HubKube
) -> None:
    spawner = make_spawner(control_plane)
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    await start_ready(spawner, kube)
    name = naming.session_name("alice", "")
    await set_finalizer(kube, name, True)  # what the operator's finalizer does: hold the session

    stopping = asyncio.create_task(spawner.stop())

    async def deleting() -> bool:
        session = await kube.read_session(NAMESPACE, name)
        return session is not None and "deletionTimestamp" in session["metadata"]

    await wait_until_async(deleting, 10, "deletion requested", 0.05)
    await asyncio.sleep(0.5)
    assert not stopping.done()  # the job is not confirmed gone yet
    await set_finalizer(kube, name, False)  # the operator: job cancelled
    await asyncio.wait_for(stopping, timeout=10)
    assert await kube.read_session(NAMESPACE, name) is None
    assert await kube.read_secret(NAMESPACE, naming.secret_name(name)) is None


async def test_stop_gives_up_at_its_deadline_with_a_clear_error(
    control_plane: Any, kube: HubKube
) -> None:
    spawner = make_spawner(control_plane, stop_timeout=1)
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    await start_ready(spawner, kube)
    name = naming.session_name("alice", "")
    await set_finalizer(kube, name, True)
    began = time.monotonic()
    with pytest.raises(TimeoutError, match="has not confirmed that its Slurm job ended"):
        await spawner.stop()
    assert time.monotonic() - began < 5


async def test_a_restarted_hub_readopts_the_running_session_from_saved_state(
    control_plane: Any, kube: HubKube
) -> None:
    before = make_spawner(control_plane, server="gpu")
    before.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    await start_ready(before, kube)
    state = json.loads(json.dumps(before.get_state()))  # as the hub database stores it

    after = make_spawner(control_plane, server="gpu")  # a new hub process
    after.load_state(state)
    assert after.get_state() == state
    assert await after.poll() is None
    await after.stop()
    assert await kube.read_session(NAMESPACE, naming.session_name("alice", "gpu")) is None

    after.clear_state()
    assert "session" not in after.get_state()
    assert await after.poll() == 0


async def test_saved_state_does_not_adopt_a_different_session_of_the_same_name(
    control_plane: Any, kube: HubKube
) -> None:
    spawner = make_spawner(control_plane)
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    await start_ready(spawner, kube)
    state = spawner.get_state()
    state["session"]["uid"] = "00000000-0000-0000-0000-000000000000"
    stale = make_spawner(control_plane)
    stale.load_state(state)
    assert await stale.poll() == 1
    await stale.stop()  # must not delete the session it does not own
    name = naming.session_name("alice", "")
    assert await kube.read_session(NAMESPACE, name) is not None
    assert await kube.read_secret(NAMESPACE, naming.secret_name(name)) is not None


# Least privilege -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def hub_identity(control_plane: Any, catalogue: None) -> str:
    """The chart's hub ServiceAccount with exactly the chart's hub RBAC (templates/hub-rbac.yaml):
    the identity every spawner here runs as, the only one the admission policy lets set groups."""
    return hub_kubeconfig(control_plane)


async def test_the_spawner_works_with_only_the_hubs_rbac_rights(
    control_plane: Any, kube: HubKube, hub_identity: str
) -> None:
    spawner = make_spawner(control_plane, kubeconfig=hub_identity)
    assert 'value="hubt-open"' in await spawner.get_options_form()
    spawner.user_options = {"profile": "hubt-open", "site": "hubt-geneva"}
    await start_ready(spawner, kube)
    assert await spawner.poll() is None
    await spawner.stop()
    name = naming.session_name("alice", "")
    assert await kube.read_session(NAMESPACE, name) is None
    assert await kube.read_secret(NAMESPACE, naming.secret_name(name)) is None
