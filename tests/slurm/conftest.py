"""The contract fixture `site`: real Slurm or the mock Slurm behind the same SlurmClient.

Parametrised over "real" and "mock" and scoped to the module, so pytest runs every contract test
against real Slurm first, then against the mock. Each kind brings up both sites (geneva, lugano).
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest
import pytest_asyncio

from bbp_notebooks.mockslurm.site import MockSite
from bbp_notebooks.ssh import CertificateAuthority, SiteEndpoint, SshPool
from fixtures.realslurm import RealSlurm
from slurm.contract import (
    CLUSTERS,
    SITE_NAMES,
    Contract,
    ContractSite,
    Kind,
    make_site,
    mock_controller,
    mock_site_config,
    real_controller,
    remove_outputs,
    submit_timeout_job,
)


@contextlib.asynccontextmanager
async def _contract(kind: Kind) -> AsyncIterator[tuple[SshPool, dict[str, ContractSite], str]]:
    """A pool and a run tag; on exit: cancel what was submitted, close, remove job outputs."""
    tag = secrets.token_hex(3)
    pool = SshPool(connect_timeout=10.0)
    sites: dict[str, ContractSite] = {}
    try:
        yield pool, sites, tag
    finally:
        for contract_site in sites.values():
            await contract_site.cancel_submitted()
        await pool.close()
        remove_outputs(tag)


async def _ready(kind: Kind, sites: dict[str, ContractSite]) -> Contract:
    geneva, lugano = sites["geneva"], sites["lugano"]
    # Submitted first: its minute runs while the other tests do.
    timeout_job, timeout_spec = await submit_timeout_job(geneva)
    return Contract(kind, geneva, lugano, timeout_job, timeout_spec)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mock_contract(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Contract]:
    """Both mock sites, configured like the real clusters (started with the module, see site)."""
    root = tmp_path_factory.mktemp("contract-mock")
    host_ca = asyncssh.generate_private_key("ssh-ed25519")
    host_ca.write_private_key(str(root / "host_ca"))
    host_ca_line = host_ca.export_public_key().decode().strip()
    user_ca = CertificateAuthority(asyncssh.generate_private_key("ssh-ed25519"))
    mocks: list[MockSite] = []
    try:
        async with _contract("mock") as (pool, sites, tag):
            for name in SITE_NAMES:
                config = mock_site_config(CLUSTERS[name], root / name, user_ca.public_key)
                mock = MockSite(config)
                await mock.start()
                mocks.append(mock)
                address = config.address
                known_hosts = f"@cert-authority {address},[{address}]:{mock.port} {host_ca_line}\n"
                endpoint = SiteEndpoint(name, address, mock.port, known_hosts)
                sites[name] = make_site(
                    "mock", CLUSTERS[name], endpoint, pool, user_ca, tag, mock_controller(mock)
                )
            yield await _ready("mock", sites)
    finally:
        for mock in mocks:
            await mock.stop()


@contextlib.asynccontextmanager
async def _real_contract(real: RealSlurm) -> AsyncIterator[Contract]:
    async with _contract("real") as (pool, sites, tag):
        for name in SITE_NAMES:
            info = real.sites[name]
            ca = CertificateAuthority(await asyncio.to_thread(Path(info.user_ca_key).read_bytes))
            endpoint = SiteEndpoint(name, info.ssh_host, info.ssh_port, info.known_hosts)
            controller = real_controller(real.deployment, name)
            sites[name] = make_site("real", CLUSTERS[name], endpoint, pool, ca, tag, controller)
        yield await _ready("real", sites)


@pytest_asyncio.fixture(
    scope="module",
    loop_scope="module",
    params=[pytest.param("real", marks=pytest.mark.realslurm), "mock"],
)
async def site(request: pytest.FixtureRequest, mock_contract: Contract) -> AsyncIterator[Contract]:
    """Both sites (geneva, lugano) of real Slurm or of the mock, behind the same SlurmClient.

    The mock comes up with the module even for the real run: its 1-minute TIMEOUT job then runs
    while real Slurm is tested instead of making the mock run wait for it.
    """
    kind: Kind = request.param
    if kind == "mock":
        yield mock_contract
        return
    real: RealSlurm = request.getfixturevalue("real_slurm")
    async with _real_contract(real) as contract:
        yield contract
