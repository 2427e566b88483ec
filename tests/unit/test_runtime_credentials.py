"""The operator's credential cache: a rotated CA Secret is picked up without a restart, and
certificates minted from the old key are not reused."""

from __future__ import annotations

import datetime as dt
from typing import Any

import asyncssh
import pytest

from bbp_notebooks.api.models import SlurmSiteSpec
from bbp_notebooks.api.settings import OperatorSettings
from bbp_notebooks.operator import runtime as runtime_module
from bbp_notebooks.operator.runtime import Runtime


class SecretStore:
    """Stands in for the API server's Secrets: a version that changes when the data does."""

    def __init__(self) -> None:
        self.version = 0
        self.reads = 0
        self.key = b""
        self.rotate()

    def rotate(self) -> None:
        self.key = asyncssh.generate_private_key("ssh-ed25519").export_private_key()
        self.version += 1

    async def read_secret_with_owners(
        self, namespace: str, name: str
    ) -> tuple[dict[str, bytes], frozenset[str], str]:
        self.reads += 1
        return {"ca": self.key}, frozenset(), str(self.version)


SITE = SlurmSiteSpec.model_validate(
    {
        "displayName": "Geneva",
        "frontend": {"host": "127.0.0.21"},
        "hostKeys": {"certificateAuthorities": ["ssh-ed25519 AAAA"]},
        "partitions": [{"name": "prod", "default": True}],
        "monitorUser": "bbpmon",
        "auth": {"method": "Certificate", "caSecretName": "ca"},
    }
)


def signer(identity: Any) -> bytes:
    return bytes(identity.certificate.signing_key.public_data)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> list[dt.datetime]:
    now = [dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)]

    class Clock(dt.datetime):
        @classmethod
        def now(cls, tz: dt.tzinfo | None = None) -> dt.datetime:  # type: ignore[override]
            return now[0]

    monkeypatch.setattr(dt, "datetime", Clock)
    return now


async def test_a_rotated_ca_is_used_within_the_recheck_interval(clock: list[dt.datetime]) -> None:
    store = SecretStore()
    rt = Runtime.create(OperatorSettings(), store)  # type: ignore[arg-type]
    first = await rt.identity("geneva", SITE, "alice")
    assert await rt.identity("geneva", SITE, "alice") is first  # cached, no second read
    assert store.reads == 1
    old_ca = asyncssh.import_private_key(store.key).public_data

    store.rotate()
    clock[0] += runtime_module.CA_RECHECK / 2
    assert await rt.identity("geneva", SITE, "alice") is first  # not re-read yet
    clock[0] += runtime_module.CA_RECHECK
    rotated = await rt.identity("geneva", SITE, "alice")
    assert rotated is not first
    assert signer(first) == old_ca
    assert signer(rotated) == asyncssh.import_private_key(store.key).public_data != old_ca


async def test_an_unchanged_ca_keeps_its_certificates(clock: list[dt.datetime]) -> None:
    store = SecretStore()
    rt = Runtime.create(OperatorSettings(), store)  # type: ignore[arg-type]
    first = await rt.identity("geneva", SITE, "alice")
    clock[0] += runtime_module.CA_RECHECK * 2
    assert await rt.identity("geneva", SITE, "alice") is first
    assert store.reads == 2  # read again, found the same version


class SlowStore(SecretStore):
    """A Secret read that takes a while: shows whether users wait for each other."""

    def __init__(self) -> None:
        super().__init__()
        self.concurrent = 0
        self.most_concurrent = 0

    async def read_secret_with_owners(
        self, namespace: str, name: str
    ) -> tuple[dict[str, bytes], frozenset[str], str]:
        import asyncio

        self.concurrent += 1
        self.most_concurrent = max(self.most_concurrent, self.concurrent)
        await asyncio.sleep(0.05)
        self.concurrent -= 1
        return await super().read_secret_with_owners(namespace, name)


async def test_minting_for_one_user_does_not_wait_for_another() -> None:
    import asyncio

    store = SlowStore()
    rt = Runtime.create(OperatorSettings(), store)  # type: ignore[arg-type]
    users = [f"user{i}" for i in range(8)]
    minted = await asyncio.gather(*(rt.identity("geneva", SITE, u) for u in users))
    assert [m.username for m in minted] == users
    assert store.most_concurrent > 1  # one global lock would have made this 1


async def test_one_user_is_minted_once_however_many_ask_at_once() -> None:
    import asyncio

    store = SlowStore()
    rt = Runtime.create(OperatorSettings(), store)  # type: ignore[arg-type]
    minted = await asyncio.gather(*(rt.identity("geneva", SITE, "alice") for _ in range(5)))
    assert len({id(m) for m in minted}) == 1


async def test_prune_forgets_expired_identities_and_gone_sessions(
    clock: list[dt.datetime],
) -> None:
    from bbp_notebooks.api.models import Endpoint

    store = SecretStore()
    rt = Runtime.create(OperatorSettings(), store)  # type: ignore[arg-type]
    await rt.identity("geneva", SITE, "alice")
    endpoint = Endpoint(host="127.0.0.1", port=9000, url="http://127.0.0.1:9000")
    rt.endpoints.update({"live": (1, endpoint), "gone": (2, endpoint)})

    rt.prune(clock[0], {"live"})
    assert set(rt.endpoints) == {"live"}
    assert ("geneva", "alice") in rt._identities  # still valid: kept

    clock[0] += dt.timedelta(minutes=SITE.auth.certificate_validity_minutes)
    rt.prune(clock[0], {"live"})
    assert rt._identities == {} and rt._locks == {}


async def test_an_empty_metadata_only_list_is_no_sessions() -> None:
    """kube-apiserver answers an empty PartialObjectMetadataList with "items": null."""
    from bbp_notebooks.operator.kube import Kube

    class Api:
        async def call_api(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return {"kind": "PartialObjectMetadataList", "metadata": {}, "items": None}

    kube = Kube.__new__(Kube)
    kube.api_client = Api()  # type: ignore[assignment]
    assert await kube.session_uids() == set()
