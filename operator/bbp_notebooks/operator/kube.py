"""The operator's own Kubernetes API calls (status patches outside handlers, Secrets, Events,
the admission policy it relies on)."""

from __future__ import annotations

import base64
import datetime as dt
import logging
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
from kubernetes_asyncio import client as k8s

from bbp_notebooks.api.constants import GROUP, SESSION_PLURAL, SITE_PLURAL, VERSION

log = logging.getLogger(__name__)

# The generated client defaults to JSON Patch; status is written as a JSON merge patch.
MERGE_PATCH: dict[str, Any] = {"_content_type": "application/merge-patch+json"}
JSON_PATCH: dict[str, Any] = {"_content_type": "application/json-patch+json"}
# Lists for which only names and uids matter ask for metadata only, a page at a time.
METADATA_ONLY = "application/json;as=PartialObjectMetadataList;g=meta.k8s.io;v=v1"
SWEEP_PAGE_SIZE = 500


# Connections kept to the API server: the site polls' status writes in flight (sites.py's 16)
# with room for the handlers' calls. kubernetes_asyncio's default is 5 per CPU (10 here).
API_CONNECTIONS = 32


def new_api_client() -> k8s.ApiClient:
    """The operator's client for its own API calls, from the configuration loaded already.

    kubernetes_asyncio's HTTP session trusts the environment: for every request it looks up the
    proxy variables and ~/.netrc in a worker thread, twice (two thread-pool round trips through
    the event loop per status write, ~5 % of the loop in a 1,000-session burst). The operator's
    other client, kopf's, ignores them (``settings.networking.trust_env`` is False), and so does
    this one now: the same connector (TLS settings, pool) behind a session that does not."""
    configuration = k8s.Configuration.get_default_copy()
    configuration.connection_pool_maxsize = max(
        configuration.connection_pool_maxsize, API_CONNECTIONS
    )
    client = k8s.ApiClient(configuration)
    trusting = client.rest_client.pool_manager
    client.rest_client.pool_manager = aiohttp.ClientSession(
        connector=trusting.connector, trust_env=False, read_bufsize=2**21
    )
    trusting.detach()  # the connector now belongs to the new session
    return client


class Kube:
    """Typed wrapper over kubernetes_asyncio for the few calls handlers cannot make via kopf."""

    def __init__(self, api_client: k8s.ApiClient) -> None:
        self.api_client = api_client
        self.custom = k8s.CustomObjectsApi(api_client)
        self.core = k8s.CoreV1Api(api_client)

    async def patch_session_status(
        self,
        namespace: str,
        name: str,
        status: dict[str, Any],
        *,
        resource_version: str | None = None,
    ) -> None:
        """Merge ``status`` in; with ``resource_version``, only if nothing changed since that
        version (409 Conflict otherwise): a compare-and-set across replicas."""
        body: dict[str, Any] = {"status": status}
        if resource_version is not None:
            body["metadata"] = {"resourceVersion": resource_version}
        await self.custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, SESSION_PLURAL, name, body, **MERGE_PATCH
        )

    async def get_session(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The session as the API server has it now (None when it does not exist)."""
        try:
            found: dict[str, Any] = await self.custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, SESSION_PLURAL, name
            )
        except k8s.ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    async def get_site(self, name: str) -> dict[str, Any] | None:
        """The SlurmSite as the API server has it now (None when it does not exist)."""
        try:
            found: dict[str, Any] = await self.custom.get_cluster_custom_object(
                GROUP, VERSION, SITE_PLURAL, name
            )
        except k8s.ApiException as error:
            if error.status == 404:
                return None
            raise
        return found

    async def site_names(self, label_selector: str = "") -> list[str]:
        """The SlurmSites matching ``label_selector`` (every site when empty), by name."""
        listed = await self.custom.list_cluster_custom_object(
            GROUP, VERSION, SITE_PLURAL, label_selector=label_selector
        )
        return [str(item["metadata"]["name"]) for item in listed.get("items") or ()]

    async def delete_site(self, name: str) -> None:
        """Delete a SlurmSite; one already gone is not an error."""
        try:
            await self.custom.delete_cluster_custom_object(GROUP, VERSION, SITE_PLURAL, name)
        except k8s.ApiException as error:
            if error.status != 404:
                raise

    async def release_sites(
        self, finalizer: str, label_selector: str = "", *, shards: bool = False
    ) -> list[str]:
        """Drop ``finalizer`` from every SlurmSite that has it; their names. ``shards``: also
        every shard's (``<finalizer>.<shard>``, shards.py), for the uninstall hook.

        kopf puts its finalizer on every object a daemon runs for (to stop the daemon before the
        object goes) and takes it off only while the operator runs; a running replica puts it
        back at its next event for the site. A site has nothing to clean up, so a stopping
        operator lets every site go: `helm uninstall` deletes the sites and the operator
        together, in either order, and would otherwise wait on them for ever. The JSON patch
        tests the entry first, so a concurrent change (kopf's own, another replica's) is a 422
        here, not someone else's finalizer removed."""
        listed = await self.custom.list_cluster_custom_object(
            GROUP, VERSION, SITE_PLURAL, label_selector=label_selector
        )
        released = []
        for item in listed.get("items") or ():
            meta = item.get("metadata") or {}
            finalizers = list(meta.get("finalizers") or ())
            ours = [
                (i, f)
                for i, f in enumerate(finalizers)
                if f == finalizer or (shards and f.startswith(f"{finalizer}."))
            ]
            if not ours:
                continue
            patch = [  # from the last, so that each index still names its entry
                op
                for index, name in reversed(ours)
                for op in (
                    {"op": "test", "path": f"/metadata/finalizers/{index}", "value": name},
                    {"op": "remove", "path": f"/metadata/finalizers/{index}"},
                )
            ]
            try:
                await self.custom.patch_cluster_custom_object(
                    GROUP, VERSION, SITE_PLURAL, meta["name"], patch, **JSON_PATCH
                )
            except k8s.ApiException as error:
                if error.status not in (404, 409, 422):
                    raise
                continue
            released.append(str(meta["name"]))
        return released

    async def patch_site_status(self, name: str, status: dict[str, Any]) -> None:
        await self.custom.patch_cluster_custom_object_status(
            GROUP, VERSION, SITE_PLURAL, name, {"status": status}, **MERGE_PATCH
        )

    async def _pages(
        self, path: str, page_size: int, accept: str | None = None
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The items of a LIST of ``path``, a page of ``page_size`` at a time."""
        token: str | None = None
        while True:
            query: list[tuple[str, Any]] = [("limit", page_size)]
            if token:
                query.append(("continue", token))
            page = await self.api_client.call_api(
                path,
                "GET",
                query_params=query,
                header_params={"Accept": accept} if accept else None,
                response_types_map={200: "object"},
                auth_settings=["BearerToken"],
                _return_http_data_only=True,
            )
            yield list(page.get("items") or ())
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return

    async def session_uids(self, page_size: int = SWEEP_PAGE_SIZE) -> set[str]:
        """Every NotebookSession uid in the cluster, read now (authoritative, not an index).

        Metadata only (PartialObjectMetadataList, so no spec or status crosses the wire) and
        paginated, so the sweep's memory does not grow with the sessions' size or number."""
        path = f"/apis/{GROUP}/{VERSION}/{SESSION_PLURAL}"
        return {
            item["metadata"]["uid"]
            async for page in self._pages(path, page_size, METADATA_ONLY)
            for item in page
        }

    async def session_pages(
        self, namespaces: list[str] | None = None, page_size: int = SWEEP_PAGE_SIZE
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """Every NotebookSession (of ``namespaces``, or of the cluster), whole, a page at a time:
        the caller keeps what it needs of a page before the next is read."""
        for where in [f"namespaces/{n}/" for n in namespaces] if namespaces else [""]:
            async for page in self._pages(
                f"/apis/{GROUP}/{VERSION}/{where}{SESSION_PLURAL}", page_size
            ):
                yield page

    async def read_admission_policy(
        self, name: str
    ) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """The ValidatingAdmissionPolicy ``name`` and the binding of the same name, as plain
        (camelCase) dicts; None for one that does not exist. Any other API error propagates."""
        admission = k8s.AdmissionregistrationV1Api(self.api_client)
        found: list[dict[str, Any] | None] = []
        for read in (
            admission.read_validating_admission_policy,
            admission.read_validating_admission_policy_binding,
        ):
            try:
                body = await read(name)
            except k8s.ApiException as error:
                if error.status != 404:
                    raise
                found.append(None)
            else:
                found.append(self.api_client.sanitize_for_serialization(body))
        return found[0], found[1]

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes]:
        return (await self.read_secret_with_owners(namespace, name))[0]

    async def read_secret_with_owners(
        self, namespace: str, name: str
    ) -> tuple[dict[str, bytes], frozenset[str], str]:
        """A Secret's data, the uids of its owners, and its resourceVersion."""
        secret = await self.core.read_namespaced_secret(name, namespace)
        data = {key: base64.b64decode(value) for key, value in (secret.data or {}).items()}
        owners = frozenset(o.uid for o in (secret.metadata.owner_references or []))
        return data, owners, secret.metadata.resource_version or ""

    async def event(
        self,
        involved: dict[str, Any],
        *,
        reason: str,
        message: str,
        type_: str = "Normal",
    ) -> None:
        """A Kubernetes Event about ``involved`` (apiVersion, kind, name, namespace, uid)."""
        now = dt.datetime.now(dt.UTC)
        namespace = involved.get("namespace") or "default"
        body = k8s.CoreV1Event(
            metadata=k8s.V1ObjectMeta(generate_name=f"{involved['name']}.", namespace=namespace),
            involved_object=k8s.V1ObjectReference(**involved),
            reason=reason,
            message=message[:1024],
            type=type_,
            source=k8s.V1EventSource(component="bbp-notebooks-operator"),
            first_timestamp=now,
            last_timestamp=now,
            count=1,
        )
        try:
            await self.core.create_namespaced_event(namespace, body)
        except k8s.ApiException as error:  # events are best effort; never fail a reconcile for one
            log.warning("could not post event %s: %s", reason, error.reason)
