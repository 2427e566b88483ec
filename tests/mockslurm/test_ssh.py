"""The login node: certificate and key authentication, host keys, and a shell that is no shell."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncssh
import pytest

from bbp_notebooks.mockslurm.config import UserConfig
from bbp_notebooks.mockslurm.site import MockSite
from fixtures.mockslurm import SiteConfigFactory, SiteFactory, SshFactory, UserCA, slurm


async def test_a_certificate_for_the_login_user_is_accepted(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    result = await slurm(conn, "sinfo", "--version")
    assert (result.exit_status, result.stdout) == (0, "slurm 22.05.8\n")


@pytest.mark.parametrize(
    "case",
    ["wrong principal", "no principal", "expired", "not yet valid", "unknown CA"],
)
async def test_unacceptable_certificates_are_refused(
    case: str, mockslurm_site: MockSite, mockslurm_ssh: SshFactory, mockslurm_ca: UserCA
) -> None:
    now = time.time()
    if case == "wrong principal":
        key, cert = mockslurm_ca.mint("alice", principals=["bob"])
    elif case == "no principal":
        key, cert = mockslurm_ca.mint("alice", principals=[])
    elif case == "expired":
        key, cert = mockslurm_ca.mint("alice", valid_after=now - 600, valid_before=now - 60)
    elif case == "not yet valid":
        key, cert = mockslurm_ca.mint("alice", valid_after=now + 600, valid_before=now + 900)
    else:
        key, cert = mockslurm_ca.mint("alice", ca=asyncssh.generate_private_key("ssh-ed25519"))
    with pytest.raises(asyncssh.PermissionDenied):
        await mockslurm_ssh(mockslurm_site, "alice", key=key, certificate=cert)


async def test_authorized_keys_work_per_user(
    mockslurm_site_factory: SiteFactory,
    mockslurm_site_config: SiteConfigFactory,
    mockslurm_ssh: SshFactory,
) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    public = key.export_public_key().decode()
    config = mockslurm_site_config(
        users=[
            UserConfig(name="alice", accounts=["proj-a"], authorized_keys=[public]),
            UserConfig(name="bob", accounts=["proj-b"]),
        ]
    )
    site = await mockslurm_site_factory(config)
    conn = await mockslurm_ssh(site, "alice", key=key)
    assert (await slurm(conn, "squeue", "-h")).exit_status == 0
    with pytest.raises(asyncssh.PermissionDenied):
        await mockslurm_ssh(site, "bob", key=key)


async def test_logins_can_be_refused_as_a_fault(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    mockslurm_site.set_faults(ssh_refused=True)
    with pytest.raises(asyncssh.PermissionDenied):
        await mockslurm_ssh(mockslurm_site, "alice")
    mockslurm_site.set_faults(ssh_refused=False)
    await mockslurm_ssh(mockslurm_site, "alice")


async def test_a_stopped_login_node_refuses_connections(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    await mockslurm_site.stop_ssh()
    with pytest.raises(OSError):
        await mockslurm_ssh(mockslurm_site, "alice")
    await mockslurm_site.start_ssh()
    await mockslurm_ssh(mockslurm_site, "alice")


async def test_unknown_commands_are_not_found_and_shells_are_refused(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    result = await conn.run("ls -la /", check=False)
    assert (result.exit_status, result.stdout, result.stderr) == (
        127,
        "",
        "bash: ls: command not found\n",
    )
    piped = await conn.run("squeue | sh", check=False)
    assert piped.exit_status == 1  # "|" and "sh" are squeue arguments, never a pipeline
    assert "Unrecognized option: |" in str(piped.stderr)
    absolute = await conn.run("/usr/bin/sinfo -V", check=False)
    assert absolute.stdout == "slurm 22.05.8\n"
    unbalanced = await conn.run("squeue -n 'oops", check=False)
    assert unbalanced.exit_status == 2
    shell = await conn.create_process(term_type=None)
    shell.stdin.write_eof()
    await shell.wait_closed()
    assert shell.exit_status == 1
    assert "interactive shells are disabled" in str(await shell.stderr.read())


async def test_the_host_key_survives_restarts(
    mockslurm_site_factory: SiteFactory, mockslurm_site_config: SiteConfigFactory, tmp_path: Path
) -> None:
    config = mockslurm_site_config(host_key_path=tmp_path / "keys" / "host_key")
    first = await mockslurm_site_factory(config)
    key = first.host_public_key()
    await first.stop()
    second = await mockslurm_site_factory(config)
    assert second.host_public_key() == key
    assert oct((tmp_path / "keys" / "host_key").stat().st_mode & 0o777) == "0o600"


async def test_a_host_certificate_lets_clients_trust_the_host_ca(
    mockslurm_site_factory: SiteFactory,
    mockslurm_site_config: SiteConfigFactory,
    mockslurm_ca: UserCA,
    tmp_path: Path,
) -> None:
    host_ca = asyncssh.generate_private_key("ssh-ed25519")
    host_ca.write_private_key(str(tmp_path / "host_ca"))
    config = mockslurm_site_config(
        host_ca_key_path=tmp_path / "host_ca", host_certificate_path=tmp_path / "host-cert.pub"
    )
    site = await mockslurm_site_factory(config)
    assert (tmp_path / "host-cert.pub").exists()
    trusted = asyncssh.import_known_hosts(
        f"@cert-authority [{site.address}]:{site.port} "
        f"{host_ca.export_public_key().decode().strip()}\n"
    )
    key, cert = mockslurm_ca.mint("alice")
    async with asyncssh.connect(
        site.address,
        site.port,
        username="alice",
        client_keys=[(key, cert)],
        known_hosts=trusted,
        agent_path=None,
        config=[],
    ) as conn:
        assert (await slurm(conn, "sinfo", "-V")).stdout == "slurm 22.05.8\n"


async def test_more_than_max_sessions_channels_are_refused_like_sshd(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    mockslurm_site.set_faults(controller_latency=1.0)
    results = await asyncio.gather(
        *(slurm(conn, "squeue", "-h") for _ in range(11)), return_exceptions=True
    )
    refused = [r for r in results if isinstance(r, asyncssh.ChannelOpenError)]
    assert len(refused) == 1
    assert refused[0].code == asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED
    assert sum(1 for r in results if not isinstance(r, BaseException)) == 10
    mockslurm_site.set_faults(controller_latency=0.0)
    again = await asyncio.gather(*(slurm(conn, "squeue", "-h") for _ in range(10)))
    assert all(r.exit_status == 0 for r in again)


async def test_channels_closed_before_their_command_free_their_session_like_sshd(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    """A client that gives up between the channel's open and its exec request (a timeout under
    load) closes the channel: sshd frees the session then. Counted only when a command ended,
    such channels leaked, and after ten the connection refused every channel for ever."""
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    loop = asyncio.get_running_loop()
    for _ in range(12):  # more than MaxSessions (10)
        channel = asyncssh.SSHClientChannel(conn, loop, "strict", None, "strict", 2**21, 32768)
        await channel._open(b"session")  # noqa: SLF001 - opened, then given up before exec
        channel.close()
        await channel.wait_closed()
    result = await asyncio.wait_for(slurm(conn, "squeue", "-h"), 10)
    assert result.exit_status == 0
