"""A stopping operator lets the SlurmSites go (kube.release_sites), against the real API server:
a site deleted before or after it stopped is not held by it; only our finalizer is dropped."""

from __future__ import annotations

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

pytestmark = pytest.mark.kube
OTHER = "example.org/keep-me"


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
