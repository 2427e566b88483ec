"""The operator's authoritative list of sessions (the orphan sweep's "does it still exist?"),
against the real API server: every session across namespaces, a page at a time, metadata only."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from bbp_notebooks.api.constants import API_VERSION, GROUP, SESSION_KIND, SESSION_PLURAL, VERSION
from bbp_notebooks.devtools.admission import admin_annotations
from bbp_notebooks.devtools.controlplane import ControlPlane
from bbp_notebooks.operator.kube import Kube

pytestmark = pytest.mark.kube

NAMESPACES = ("lists-a", "lists-b")


def session(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": SESSION_KIND,
        "metadata": {"name": name, "annotations": admin_annotations()},
        "spec": {"user": "alice", "profile": "small", "site": "geneva", "project": "proj1"},
    }


async def test_the_sweep_lists_every_session_paged_and_metadata_only(
    control_plane: ControlPlane, kube_api: Any
) -> None:
    core = client.CoreV1Api(kube_api)
    objects = client.CustomObjectsApi(kube_api)
    created: set[str] = set()
    for namespace in NAMESPACES:
        if not core.list_namespace(field_selector=f"metadata.name={namespace}").items:
            core.create_namespace({"metadata": {"name": namespace}})
        for i in range(4):
            body = objects.create_namespaced_custom_object(
                GROUP, VERSION, namespace, SESSION_PLURAL, session(f"s{i}")
            )
            created.add(body["metadata"]["uid"])

    configuration = k8s.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(control_plane.kubeconfig), client_configuration=configuration
    )
    async with k8s.ApiClient(configuration=configuration) as api:
        pages: list[dict[str, Any]] = []
        real_call = api.call_api

        async def recording(*args: Any, **kwargs: Any) -> Any:
            page = await real_call(*args, **kwargs)
            pages.append(page)
            return page

        api.call_api = recording  # type: ignore[method-assign]
        uids = await Kube(api).session_uids(page_size=3)

    try:
        assert created <= uids
        assert len(pages) >= 3  # 8+ sessions, 3 a page
        items = [item for page in pages for item in page["items"]]
        assert items and all(item["kind"] == "PartialObjectMetadata" for item in items)
        assert not any("spec" in item or "status" in item for item in items)
    finally:
        for namespace in NAMESPACES:
            for i in range(4):
                objects.delete_namespaced_custom_object(
                    GROUP, VERSION, namespace, SESSION_PLURAL, f"s{i}"
                )
