"""SshPool against a real OpenSSH sshd on 127.0.0.1: the checks the asyncssh stand-in cannot prove.

Real sshd decides what MaxSessions refusal looks like, how a login shell re-splits our command
line, and how TrustedUserCAKeys treats our certificates. Needs root, openssh-server and the test
user alice (scripts/install-test-deps.sh); without them these tests fail, they do not skip.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import pathlib
import socket
import subprocess
from collections.abc import AsyncIterator, Iterator

import asyncssh
import pytest

from bbp_notebooks.devtools.stack import free_port
from bbp_notebooks.ssh import (
    AuthenticationFailed,
    CertificateAuthority,
    CommandFailed,
    HostKeyMismatch,
    Identity,
    SiteEndpoint,
    SshPool,
)

SSHD = "/usr/sbin/sshd"
USER = "alice"
HOSTILE = [
    "a b",
    "'single'",
    '"double"',
    "$(touch /tmp/bbpnb-openssh-canary)",
    "`touch /tmp/bbpnb-openssh-canary`",
    "x; touch /tmp/bbpnb-openssh-canary",
    "line1\nline2",
    "*",
    "~",
    "$HOME",
    "--option=--value",
    "",
    "ünïcødé ✓",
    "x" * 2048,
]


@pytest.fixture(scope="module")
def user_ca() -> CertificateAuthority:
    return CertificateAuthority(asyncssh.generate_private_key("ssh-ed25519"))


@pytest.fixture(scope="module")
def openssh(
    tmp_path_factory: pytest.TempPathFactory, user_ca: CertificateAuthority
) -> Iterator[SiteEndpoint]:
    folder = tmp_path_factory.mktemp("sshd")
    host_key = folder / "host_ed25519"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(host_key)],
        check=True,
        timeout=30,
    )
    (folder / "user_ca.pub").write_text(user_ca.public_key + "\n")
    port = free_port("127.0.0.1")
    config = folder / "sshd_config"
    config.write_text(
        f"ListenAddress 127.0.0.1:{port}\n"
        f"HostKey {host_key}\n"
        f"PidFile {folder / 'sshd.pid'}\n"
        f"TrustedUserCAKeys {folder / 'user_ca.pub'}\n"
        "AuthorizedKeysFile none\n"
        "PasswordAuthentication no\n"
        "KbdInteractiveAuthentication no\n"
        "UsePAM no\n"
        "StrictModes no\n"
        "MaxSessions 10\n"
        "MaxStartups 10:30:100\n"
        "LogLevel ERROR\n"
    )
    process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if process.poll() is not None:
                assert process.stderr is not None
                raise AssertionError(f"sshd exited: {process.stderr.read().decode()}")
            subprocess.run(["sleep", "0.05"], check=True)
        else:
            raise AssertionError("sshd did not listen within 5 s")
        public = pathlib.Path(f"{host_key}.pub").read_text().split()
        known_hosts = f"[127.0.0.1]:{port} {public[0]} {public[1]}\n"
        yield SiteEndpoint("openssh", "127.0.0.1", port, known_hosts)
    finally:
        process.terminate()
        process.wait(timeout=10)
        assert process.stderr is not None
        process.stderr.close()


@pytest.fixture
async def pool() -> AsyncIterator[SshPool]:
    pool = SshPool()
    yield pool
    await pool.close()


async def test_argv_survives_the_real_login_shell_word_for_word(
    openssh: SiteEndpoint, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    result = await pool.run(openssh, user_ca.mint(USER), ["printf", "%s\\0", *HOSTILE])
    assert result.stdout.split("\0")[:-1] == HOSTILE
    assert not await asyncio.to_thread(os.path.exists, "/tmp/bbpnb-openssh-canary")


async def test_the_script_on_stdin_reaches_the_command(
    openssh: SiteEndpoint, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    script = "#!/bin/bash\necho \"$(whoami)\" '$(not run)'\n"
    result = await pool.run(openssh, user_ca.mint(USER), ["bash", "-s"], stdin=script)
    assert result.stdout == f"{USER} $(not run)\n"


async def test_thirty_commands_fit_through_sshd_maxsessions_on_one_connection(
    openssh: SiteEndpoint, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    identity = user_ca.mint(USER)
    results = await asyncio.gather(
        *(pool.run(openssh, identity, ["sleep", "0.2"]) for _ in range(30))
    )
    assert all(r.exit_status == 0 for r in results)
    assert pool.connects == 1


async def test_channels_beyond_maxsessions_are_refused_then_retried_on_one_connection(
    openssh: SiteEndpoint, user_ca: CertificateAuthority
) -> None:
    pool = SshPool(max_channels_per_connection=14)
    identity = user_ca.mint(USER)
    try:
        results = await asyncio.gather(
            *(pool.run(openssh, identity, ["sleep", "0.5"]) for _ in range(14))
        )
    finally:
        await pool.close()
    assert all(r.exit_status == 0 for r in results)
    assert pool.channel_refusals >= 4
    assert pool.connects == 1


async def test_real_sshd_refuses_an_expired_certificate(
    openssh: SiteEndpoint, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    with pytest.raises(AuthenticationFailed):
        await pool.run(openssh, user_ca.mint(USER, now=past), ["true"])


async def test_real_sshd_refuses_a_certificate_for_another_principal(
    openssh: SiteEndpoint, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    bobs = user_ca.mint("bob")
    with pytest.raises(AuthenticationFailed):
        await pool.run(openssh, Identity(USER, bobs.key, bobs.certificate), ["true"])


async def test_real_sshd_refuses_a_certificate_whose_source_address_excludes_the_client(
    openssh: SiteEndpoint, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    elsewhere = user_ca.mint(USER, source_addresses=["192.0.2.0/24"])
    with pytest.raises(AuthenticationFailed):
        await pool.run(openssh, elsewhere, ["true"])
    here = user_ca.mint(USER, source_addresses=["192.0.2.0/24", "127.0.0.1"])
    result = await pool.run(openssh, here, ["id", "-un"])
    assert result.stdout == f"{USER}\n"


async def test_a_changed_real_host_key_is_refused(
    openssh: SiteEndpoint, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    endpoint = SiteEndpoint(
        "openssh", openssh.host, openssh.port, f"[{openssh.host}]:{openssh.port} {other}"
    )
    with pytest.raises(HostKeyMismatch):
        await pool.run(endpoint, user_ca.mint(USER), ["true"])


async def test_a_missing_command_is_command_failed_with_status_127(
    openssh: SiteEndpoint, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    with pytest.raises(CommandFailed) as raised:
        await pool.run(openssh, user_ca.mint(USER), ["bbpnb-no-such-command"])
    assert raised.value.exit_status == 127
