"""The spawner's Kubernetes calls: read profiles and sites, create and delete sessions and their
environment Secrets. Thin and typed over kubernetes_asyncio; no decisions are made here."""

from __future__ import annotations

import asyncio
import base64
import logging
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from bbp_notebooks.api.constants import (
    API_VERSION,
    GROUP,
    PROFILE_PLURAL,
    SESSION_KIND,
    SESSION_PLURAL,
    SITE_PLURAL,
    VERSION,
)
from bbp_notebooks.api.models import NotebookProfileSpec

log = logging.getLogger(__name__)

_IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")

ApiException = k8s.ApiException
_MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}

# One ApiClient (one aiohttp connection pool) per event loop and kubeconfig, shared by every
# spawner of the hub; a hub has one loop, tests have one per test.
_clients: dict[tuple[int, str | None], k8s.ApiClient] = {}
# Who each client authenticates as (SelfSubjectReview), asked once per client.
_usernames: weakref.WeakKeyDictionary[k8s.ApiClient, str] = weakref.WeakKeyDictionary()


def own_namespace() -> str:
    """The hub pod's namespace in a cluster, else "default" (the spawner's and the
    authenticator's default for where sessions and tickets live)."""
    if _IN_CLUSTER_NAMESPACE.exists():
        return _IN_CLUSTER_NAMESPACE.read_text().strip()
    return "default"


async def api_client(kubeconfig: str | None = None) -> k8s.ApiClient:
    """In-cluster credentials when running in a pod, else ``kubeconfig`` (or $KUBECONFIG)."""
    key = (id(asyncio.get_running_loop()), kubeconfig)
    client = _clients.get(key)
    if client is None:
        configuration = k8s.Configuration()
        if kubeconfig is None:
            try:
                k8s_config.load_incluster_config(  # type: ignore[no-untyped-call]
                    client_configuration=configuration
                )
            except k8s_config.ConfigException:
                await k8s_config.load_kube_config(client_configuration=configuration)
        else:
            await k8s_config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        client = _clients[key] = k8s.ApiClient(configuration=configuration)
    return client


async def close_api_clients() -> None:
    """Close the clients of the running loop (tests; a hub keeps its client until it exits)."""
    loop = id(asyncio.get_running_loop())
    for key in [k for k in _clients if k[0] == loop]:
        await _clients.pop(key).close()


def is_not_found(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == 404


def is_conflict(error: BaseException) -> bool:
    return isinstance(error, ApiException) and error.status == 409


class HubKube:
    """The objects the spawner reads and writes."""

    def __init__(self, api: k8s.ApiClient) -> None:
        self.api = api
        self.custom = k8s.CustomObjectsApi(api)
        self.core = k8s.CoreV1Api(api)

    async def username(self) -> str:
        """The hub's own Kubernetes user name as the API server authenticates it (what the
        admission policy requires in the created-by annotation); asked once, then cached."""
        cached = _usernames.get(self.api)
        if cached is None:
            review = await k8s.AuthenticationV1Api(self.api).create_self_subject_review(
                k8s.V1SelfSubjectReview()
            )
            cached = _usernames[self.api] = str(review.status.user_info.username)
        return cached

    async def profiles(self) -> dict[str, NotebookProfileSpec]:
        """Every valid NotebookProfile by name; invalid ones are logged and left out."""
        listing = await self.custom.list_cluster_custom_object(GROUP, VERSION, PROFILE_PLURAL)
        profiles: dict[str, NotebookProfileSpec] = {}
        for item in listing.get("items", []):
            name = item["metadata"]["name"]
            try:
                profiles[name] = NotebookProfileSpec.model_validate(item.get("spec") or {})
            except ValueError as error:
                log.warning("NotebookProfile %s is not valid and is not offered: %s", name, error)
        return profiles

    async def sites(self) -> list[dict[str, Any]]:
        listing = await self.custom.list_cluster_custom_object(GROUP, VERSION, SITE_PLURAL)
        items: list[dict[str, Any]] = listing.get("items", [])
        return items

    async def read_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            body: dict[str, Any] = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, SESSION_PLURAL, name
            )
        except ApiException as error:
            if is_not_found(error):
                return None
            raise
        return body

    async def create_session(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        created: dict[str, Any] = await self.custom.create_namespaced_custom_object(
            GROUP, VERSION, namespace, SESSION_PLURAL, body
        )
        return created

    async def delete_session(self, namespace: str, name: str, uid: str | None = None) -> bool:
        """Ask for deletion (the operator's finalizer then cancels the job). False if absent.

        Background propagation: foreground deletion would hold the session until the garbage
        collector removed its Secret, and control planes without a controller manager (the
        local one) never would; the spawner deletes the Secret itself.
        """
        options = k8s.V1DeleteOptions(
            propagation_policy="Background",
            preconditions=k8s.V1Preconditions(uid=uid) if uid else None,
        )
        try:
            await self.custom.delete_namespaced_custom_object(
                GROUP, VERSION, namespace, SESSION_PLURAL, name, body=options
            )
        except ApiException as error:
            if is_not_found(error) or is_conflict(error):  # 409: a different session by that name
                return False
            raise
        return True

    async def request_time_limit(self, session: Mapping[str, Any], minutes: int) -> dict[str, Any]:
        """Raise ``spec.resources.timeLimitMinutes`` of the session as read (a merge patch that
        carries its uid and resourceVersion: a conflict, not a lost write, if it changed since)."""
        metadata = session["metadata"]
        patch = {
            "metadata": {"uid": metadata["uid"], "resourceVersion": metadata["resourceVersion"]},
            "spec": {"resources": {"timeLimitMinutes": minutes}},
        }
        patched: dict[str, Any] = await self.custom.patch_namespaced_custom_object(
            GROUP, VERSION, metadata["namespace"], SESSION_PLURAL, metadata["name"], patch,
            **_MERGE_PATCH,
        )  # fmt: skip
        return patched

    async def create_secret(
        self,
        namespace: str,
        name: str,
        data: Mapping[str, str],
        labels: Mapping[str, str],
    ) -> None:
        """Create the environment Secret, replacing a leftover of a hub that crashed mid-start."""
        body = k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(name=name, namespace=namespace, labels=dict(labels)),
            type="Opaque",
            data={k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
        )
        try:
            await self.core.create_namespaced_secret(namespace, body)
        except ApiException as error:
            if not is_conflict(error):
                raise
            log.warning("replacing leftover Secret %s/%s", namespace, name)
            await self.delete_secret(namespace, name)
            await self.core.create_namespaced_secret(namespace, body)

    async def own_secret(self, namespace: str, name: str, session: Mapping[str, Any]) -> None:
        """Make the session the Secret's owner, so deleting the session deletes the Secret."""
        meta = session["metadata"]
        patch = {
            "metadata": {
                "ownerReferences": [
                    {
                        "apiVersion": API_VERSION,
                        "kind": SESSION_KIND,
                        "name": meta["name"],
                        "uid": meta["uid"],
                    }
                ]
            }
        }
        await self.core.patch_namespaced_secret(name, namespace, patch)

    async def read_secret(self, namespace: str, name: str) -> dict[str, str] | None:
        try:
            secret = await self.core.read_namespaced_secret(name, namespace)
        except ApiException as error:
            if is_not_found(error):
                return None
            raise
        return {k: base64.b64decode(v).decode() for k, v in (secret.data or {}).items()}

    async def delete_secret(
        self, namespace: str, name: str, *, owner_uid: str | None = None
    ) -> bool:
        """Delete the Secret; with ``owner_uid``, only if that session owns it (a Secret of the
        same name may already belong to a newer session of the same server)."""
        body = k8s.V1DeleteOptions()
        if owner_uid is not None:
            try:
                secret = await self.core.read_namespaced_secret(name, namespace)
            except ApiException as error:
                if is_not_found(error):
                    return False
                raise
            owners = secret.metadata.owner_references or []
            if not any(owner.uid == owner_uid for owner in owners):
                return False
            body = k8s.V1DeleteOptions(preconditions=k8s.V1Preconditions(uid=secret.metadata.uid))
        try:
            await self.core.delete_namespaced_secret(name, namespace, body=body)
        except ApiException as error:
            if is_not_found(error) or is_conflict(error):
                return False
            raise
        return True
