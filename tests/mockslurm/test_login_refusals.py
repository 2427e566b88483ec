"""The login node refuses what a site's frontend refuses (the chart's site guide): root, system
accounts and nobody never log in, whatever valid certificate or key they offer."""

from __future__ import annotations

import logging
import pwd

import asyncssh
import pytest

from bbp_notebooks.devtools.stack import DEV_USERS, MONITOR_USER
from bbp_notebooks.mockslurm.config import UserConfig
from bbp_notebooks.mockslurm.site import MockSite
from fixtures.mockslurm import SiteConfigFactory, SiteFactory, SshFactory, slurm

REFUSAL = "refusing login as {user} (uid {uid})"


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
