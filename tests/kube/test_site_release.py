"""A stopping operator lets the SlurmSites go (kube.release_sites), against the real API server:
a site deleted before or after it stopped is not held by it; only our finalizer is dropped. The
chart's uninstall hook (operator/uninstall.py) deletes only its release's sites, and releases
them itself only when no operator did within the grace."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import pytest
from kubernetes import client
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from bbp_notebooks.api.constants import (
    API_VERSION,
    FINALIZER,
    GROUP,
    SITE_KIND,
    SITE_PLURAL,
    VERSION,
)
from bbp_notebooks.devtools.controlplane import ControlPlane
from bbp_notebooks.operator.kube import Kube
from bbp_notebooks.operator.uninstall import end_sites

pytestmark = pytest.mark.kube
OTHER = "example.org/keep-me"
GENEVA_SHARD, LUGANO_SHARD = f"{FINALIZER}.geneva", f"{FINALIZER}.lugano"  # shards.py


def site(name: str, finalizers: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": SITE_KIND,
        "metadata": {"name": name, "finalizers": finalizers},
        "spec": {
            "displayName": name,
            "frontend": {"host": "127.0.0.21", "port": 2222},
            "hostKeys": {"knownHosts": ["127.0.0.21 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1o"]},
            "partitions": [{"name": "prod", "default": True}],
            "monitorUser": "bbpmon",
        },
    }


async def test_only_our_finalizer_is_released_and_deleted_sites_go(
    control_plane: ControlPlane, kube_api: Any
) -> None:
    objects = client.CustomObjectsApi(kube_api)
    for name, finalizers in (
        ("going", [OTHER, FINALIZER]),
        ("staying", [FINALIZER]),
        ("going-not-ours", [OTHER]),
    ):
        objects.create_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, site(name, finalizers))
    objects.delete_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, "going")
    objects.delete_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, "going-not-ours")

    def finalizers(name: str) -> list[str]:
        body = objects.get_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, name)
        return list(body["metadata"].get("finalizers") or [])

    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    try:
        async with k8s.ApiClient(configuration=configuration) as api:
            released = await Kube(api).release_sites(FINALIZER)
            assert sorted(released) == ["going", "staying"]
            assert finalizers("going") == [OTHER]  # someone else's stays, and holds it
            assert finalizers("staying") == []  # deleted after the operator stopped: not held
            assert finalizers("going-not-ours") == [OTHER]
            assert await Kube(api).release_sites(FINALIZER) == []  # nothing left
    finally:
        for name in ("going", "staying", "going-not-ours"):
            objects.patch_cluster_custom_object(
                GROUP, VERSION, SITE_PLURAL, name, {"metadata": {"finalizers": None}}
            )
            if name == "staying":
                objects.delete_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, name)


async def test_a_stopping_shard_releases_only_its_own_finalizer(
    control_plane: ControlPlane, kube_api: Any
) -> None:
    """Each shard's kopf puts its own finalizer on the sites it polls; a stopping shard drops
    its own, never another shard's (that one still polls its site)."""
    objects = client.CustomObjectsApi(kube_api)
    body = site("sharded", [GENEVA_SHARD, OTHER, LUGANO_SHARD, FINALIZER])
    objects.create_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, body)
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    try:
        async with k8s.ApiClient(configuration=configuration) as api:
            assert await Kube(api).release_sites(LUGANO_SHARD) == ["sharded"]
            held = objects.get_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, "sharded")
            assert held["metadata"]["finalizers"] == [GENEVA_SHARD, OTHER, FINALIZER]
    finally:
        unhold = {"metadata": {"finalizers": None}}
        objects.patch_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, "sharded", unhold)
        objects.delete_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, "sharded")


def labelled(name: str, release: str | None, finalizers: list[str]) -> dict[str, Any]:
    body = site(name, finalizers)
    if release:
        body["metadata"]["labels"] = {"app.kubernetes.io/instance": release}
    return body


async def test_the_uninstall_hook_deletes_the_release_sites_and_releases_what_is_held(
    control_plane: ControlPlane, kube_api: Any
) -> None:
    """bbp-notebooks-uninstall with no operator running (the fallback after the grace): the
    release's sites go, whatever holds them but our finalizer is reported, other sites stay."""
    objects = client.CustomObjectsApi(kube_api)
    sites = {
        "hook-ours": ("rel", [FINALIZER]),
        "hook-ours-too": ("rel", []),
        "hook-held": ("rel", [FINALIZER, OTHER]),
        "hook-shards": ("rel", [GENEVA_SHARD, OTHER, LUGANO_SHARD]),
        "hook-other-release": ("other", [FINALIZER]),
        "hook-unlabelled": (None, [FINALIZER]),
    }
    for name, (release, finalizers) in sites.items():
        objects.create_cluster_custom_object(
            GROUP, VERSION, SITE_PLURAL, labelled(name, release, finalizers)
        )
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    try:
        async with k8s.ApiClient(configuration=configuration) as api:
            left = await end_sites(Kube(api), "rel", grace=0.5, timeout=3, poll=0.2)
        assert left == ["hook-held", "hook-shards"]
        names = {
            item["metadata"]["name"]: item["metadata"]
            for item in objects.list_cluster_custom_object(GROUP, VERSION, SITE_PLURAL)["items"]
        }
        assert "hook-ours" not in names and "hook-ours-too" not in names
        assert names["hook-held"]["finalizers"] == [OTHER]
        assert names["hook-shards"]["finalizers"] == [OTHER]  # every shard's is ours
        assert "deletionTimestamp" not in names["hook-other-release"]
        assert names["hook-other-release"]["finalizers"] == [FINALIZER]
        assert "deletionTimestamp" not in names["hook-unlabelled"]
    finally:
        for name in sites:  # gone already is fine (404)
            unhold = {"metadata": {"finalizers": None}}
            with contextlib.suppress(client.ApiException):
                objects.patch_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, name, unhold)
            with contextlib.suppress(client.ApiException):
                objects.delete_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, name)


async def test_the_uninstall_hook_leaves_the_release_to_a_running_operator_within_the_grace(
    control_plane: ControlPlane, kube_api: Any
) -> None:
    """An operator that stops the site's daemon and drops its finalizer (stood in for by a task
    here) within the grace: the hook releases nothing itself."""
    objects = client.CustomObjectsApi(kube_api)
    objects.create_cluster_custom_object(
        GROUP, VERSION, SITE_PLURAL, labelled("hook-graceful", "graceful", [FINALIZER])
    )
    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    released: list[list[str]] = []

    async def operator_releases() -> None:
        while True:  # noqa: ASYNC110 - waiting for the deletion is the point
            body = objects.get_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, "hook-graceful")
            if body["metadata"].get("deletionTimestamp"):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        objects.patch_cluster_custom_object(
            GROUP, VERSION, SITE_PLURAL, "hook-graceful", {"metadata": {"finalizers": None}}
        )

    async with k8s.ApiClient(configuration=configuration) as api:
        kube = Kube(api)
        original = kube.release_sites

        async def recorded(finalizer: str, label_selector: str = "") -> list[str]:
            names = await original(finalizer, label_selector=label_selector)
            released.append(names)
            return names

        kube.release_sites = recorded  # type: ignore[method-assign]
        standin = asyncio.create_task(operator_releases())
        left = await end_sites(kube, "graceful", grace=10, timeout=15, poll=0.2)
        await standin
    assert left == []
    assert released == []  # the operator let it go; the hook's fallback never ran
