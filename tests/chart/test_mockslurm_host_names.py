"""The chart's mock Slurm proves its identity under every name the cluster reaches it by.

The chart points each mocked SlurmSite at the mock's Service; the operator checks the host
certificate's principals against that name. Here the mock runs from the ConfigMap the chart renders
(only the listen address, port and key paths changed), and a client that trusts the host CA connects
under each of the Service's DNS names, as the operator and `scripts/kind-e2e.sh` do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import asyncssh
import pytest
import yaml

from bbp_notebooks.mockslurm.config import MockSlurmConfig
from bbp_notebooks.mockslurm.site import MockSite
from chart.helmchart import documents, find, template_text, tool_env
from fixtures.mockslurm import SiteFactory, UserCA, slurm

RELEASE, NAMESPACE = "nb", "research"
SERVICE = f"{RELEASE}-bbp-notebooks-mockslurm"
NAMES = [
    SERVICE,
    f"{SERVICE}.{NAMESPACE}",
    f"{SERVICE}.{NAMESPACE}.svc",
    f"{SERVICE}.{NAMESPACE}.svc.cluster.local",
]


def rendered(host_ca: asyncssh.SSHKey, user_ca: UserCA) -> list[dict[str, Any]]:
    values = {
        "mockSlurm": {
            "enabled": True,
            "hostCaPrivateKey": host_ca.export_private_key().decode(),
            "hostCaPublicKey": host_ca.export_public_key().decode(),
            "userCaPublicKey": user_ca.public_key,
        }
    }
    return documents(template_text(values, release=RELEASE, namespace=NAMESPACE, env=tool_env()))


@pytest.fixture(scope="module")
def host_ca() -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


async def start_rendered_site(
    docs: list[dict[str, Any]], host_ca: asyncssh.SSHKey, tmp_path: Path, start: SiteFactory
) -> tuple[MockSite, str]:
    (config_map,) = find(docs, "ConfigMap", SERVICE)
    config = MockSlurmConfig.model_validate(yaml.safe_load(config_map["data"]["config.yaml"]))
    site = config.sites[0]
    host_ca.write_private_key(str(tmp_path / "host_ca"))
    site = site.model_copy(
        update={
            "address": "127.0.0.1",
            "port": 0,
            "state_dir": tmp_path / site.name,
            "host_ca_key_path": tmp_path / "host_ca",
        }
    )
    return await start(site), site.name


async def test_the_host_certificate_names_every_dns_name_of_the_service(
    host_ca: asyncssh.SSHKey,
    mockslurm_ca: UserCA,
    mockslurm_site_factory: SiteFactory,
    tmp_path: Path,
) -> None:
    docs = rendered(host_ca, mockslurm_ca)
    mock, name = await start_rendered_site(docs, host_ca, tmp_path, mockslurm_site_factory)
    (slurm_site,) = find(docs, "SlurmSite", name)
    assert slurm_site["spec"]["frontend"]["host"] in NAMES
    ca_line = host_ca.export_public_key().decode().strip()
    key, cert = mockslurm_ca.mint("alice")
    for host in NAMES:
        async with asyncssh.connect(
            mock.address,
            mock.port,
            host_key_alias=host,
            known_hosts=asyncssh.import_known_hosts(f"@cert-authority {host} {ca_line}\n"),
            username="alice",
            client_keys=[(key, cert)],
            agent_path=None,
            config=[],
        ) as conn:
            assert (await slurm(conn, "sinfo", "-V")).stdout == "slurm 22.05.8\n"
    # A name the certificate does not carry is refused: the check above can fail.
    other = f"{SERVICE}.elsewhere.svc"
    with pytest.raises(asyncssh.HostKeyNotVerifiable, match="principal"):
        await asyncssh.connect(
            mock.address,
            mock.port,
            host_key_alias=other,
            known_hosts=asyncssh.import_known_hosts(f"@cert-authority {other} {ca_line}\n"),
            username="alice",
            client_keys=[(key, cert)],
            agent_path=None,
            config=[],
        )
