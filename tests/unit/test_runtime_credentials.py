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
