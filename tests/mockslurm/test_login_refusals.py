"""The login node refuses what a site's frontend refuses (the chart's site guide): root, system
accounts and nobody never log in, whatever valid certificate or key they offer."""

from __future__ import annotations

import logging
import pwd
from pathlib import Path

import asyncssh
import pytest
import yaml

from bbp_notebooks.devtools.stack import DEV_USERS, MONITOR_USER
from bbp_notebooks.mockslurm.config import UserConfig, load_config
from bbp_notebooks.mockslurm.site import MockSite
from fixtures.mockslurm import SiteConfigFactory, SiteFactory, SshFactory, UserCA, slurm

REFUSAL = "refusing login as {user} (uid {uid})"
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def example_monitor_users() -> dict[str, str]:
    sites = yaml.safe_load_all((EXAMPLES / "sites.yaml").read_text())
    return {site["metadata"]["name"]: site["spec"]["monitorUser"] for site in sites if site}


@pytest.mark.parametrize("user", ["root", "daemon", "nobody"])
async def test_a_valid_certificate_for_root_a_system_account_or_nobody_is_refused(
    mockslurm_site: MockSite,
    mockslurm_ssh: SshFactory,
    caplog: pytest.LogCaptureFixture,
    user: str,
) -> None:
    uid = pwd.getpwnam(user).pw_uid
    with caplog.at_level(logging.WARNING), pytest.raises(asyncssh.PermissionDenied):
        await mockslurm_ssh(mockslurm_site, user)
    assert REFUSAL.format(user=user, uid=uid) in caplog.text


async def test_a_regular_users_certificate_is_accepted(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory, caplog: pytest.LogCaptureFixture
) -> None:
    assert pwd.getpwnam("alice").pw_uid >= 1000
    with caplog.at_level(logging.WARNING):
        conn = await mockslurm_ssh(mockslurm_site, "alice")
        result = await slurm(conn, "sinfo", "--version")
    assert result.exit_status == 0
    assert "refusing login" not in caplog.text


async def test_a_configured_user_below_the_minimum_uid_is_refused_even_with_its_own_key(
    mockslurm_site_factory: SiteFactory,
    mockslurm_site_config: SiteConfigFactory,
    mockslurm_ssh: SshFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode()
    site = await mockslurm_site_factory(
        mockslurm_site_config(
            users=[
                UserConfig(name="alice", accounts=["proj-a"]),
                UserConfig(name="svcacct", accounts=["proj-a"], uid=500, authorized_keys=[public]),
            ]
        )
    )
    with caplog.at_level(logging.WARNING):
        with pytest.raises(asyncssh.PermissionDenied):
            await mockslurm_ssh(site, "svcacct", key=key)
        with pytest.raises(asyncssh.PermissionDenied):
            await mockslurm_ssh(site, "svcacct")
    assert REFUSAL.format(user="svcacct", uid=500) in caplog.text


async def test_the_minimum_uid_is_configurable(
    mockslurm_site_factory: SiteFactory,
    mockslurm_site_config: SiteConfigFactory,
    mockslurm_ssh: SshFactory,
) -> None:
    alice = pwd.getpwnam("alice").pw_uid
    users = [
        UserConfig(name="alice", accounts=["proj-a"]),
        UserConfig(name="zz-high-uid", accounts=["proj-a"], uid=alice + 1),
    ]
    strict = await mockslurm_site_factory(
        mockslurm_site_config(users=users, min_login_uid=alice + 1)
    )
    with pytest.raises(asyncssh.PermissionDenied):
        await mockslurm_ssh(strict, "alice")
    conn = await mockslurm_ssh(strict, "zz-high-uid")
    assert (await slurm(conn, "sinfo", "--version")).exit_status == 0


async def test_the_dev_monitor_user_may_log_in(
    mockslurm_site_factory: SiteFactory,
    mockslurm_site_config: SiteConfigFactory,
    mockslurm_ssh: SshFactory,
) -> None:
    """make dev's monitor user is a configured (not POSIX) user: its uid must clear the bar."""
    site = await mockslurm_site_factory(
        mockslurm_site_config(
            users=[UserConfig(name=name, accounts=accounts) for name, accounts in DEV_USERS.items()]
        )
    )
    assert site.cluster.identity(MONITOR_USER).uid >= 1000
    conn = await mockslurm_ssh(site, MONITOR_USER)
    assert (await slurm(conn, "squeue", "-h")).exit_status == 0


async def test_the_examples_monitor_user_may_log_in_at_each_example_site(
    mockslurm_site_factory: SiteFactory,
    mockslurm_ssh: SshFactory,
    mockslurm_ca: UserCA,
    tmp_path: Path,
) -> None:
    monitors = example_monitor_users()
    config = load_config(EXAMPLES / "mockslurm-sites.yaml")
    assert {site.name for site in config.sites} == set(monitors)
    for site_config in config.sites:
        site_config.port = 0
        site_config.state_dir = tmp_path / site_config.name
        site_config.user_ca_key_files = []
        site_config.user_ca_keys = [mockslurm_ca.public_key]
        site = await mockslurm_site_factory(site_config)
        conn = await mockslurm_ssh(site, monitors[site_config.name])
        assert (await slurm(conn, "squeue", "-h")).exit_status == 0
