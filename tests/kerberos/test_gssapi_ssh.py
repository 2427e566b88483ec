"""The transport with Kerberos against a real MIT KDC and a real OpenSSH sshd (GSSAPI): log in with
the user's own ticket cache, delegate it, place a 0600 copy over SFTP."""

from __future__ import annotations

import os
import pwd
import shutil
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from bbp_notebooks.api.kerberos import parse_ccache
from bbp_notebooks.devtools.kdc import Kdc
from bbp_notebooks.ssh import AuthenticationFailed, Identity, SshPool
from bbp_notebooks.ssh.kerberos import TicketFiles
from fixtures.kdc import GssapiSshd, login


@pytest.fixture
def files() -> TicketFiles:
    return TicketFiles(Path(tempfile.mkdtemp(prefix="bbp-krb5-test-")))


async def test_alice_logs_in_with_her_ticket_and_the_frontend_holds_a_delegated_one(
    kdc: Kdc, gssapi_sshd: GssapiSshd, files: TicketFiles
) -> None:
    ticket = parse_ccache(login(kdc, "alice"))
    assert ticket.principal == f"alice@{kdc.realm}" and ticket.forwardable and ticket.renewable
    identity = Identity.gssapi("alice", files.write("alice", ticket), ticket.end)
    pool = SshPool()
    try:
        result = await pool.run(gssapi_sshd.endpoint(), identity, ["klist"])
        kvno = await pool.run(
            gssapi_sshd.endpoint(), identity, ["kvno", gssapi_sshd.host_principal]
        )
        whoami = await pool.run(gssapi_sshd.endpoint(), identity, ["id", "-un"])
    finally:
        await pool.close()
    assert whoami.stdout.strip() == "alice"
    # sshd stored the delegated ticket for the session and exported KRB5CCNAME to it.
    assert f"Default principal: alice@{kdc.realm}" in result.stdout
    assert f"krbtgt/{kdc.realm}@{kdc.realm}" in result.stdout
    assert "kvno = " in kvno.stdout
    assert gssapi_sshd.accepted_logins("alice") >= 1


async def test_a_ticket_is_placed_in_the_home_directory_0600_over_sftp(
    kdc: Kdc, gssapi_sshd: GssapiSshd, files: TicketFiles
) -> None:
    ticket = parse_ccache(login(kdc, "alice"))
    identity = Identity.gssapi("alice", files.write("alice", ticket), ticket.end)
    pool = SshPool()
    try:
        await pool.put_file(
            gssapi_sshd.endpoint(), identity, ".bbp-notebooks/sftp-test/krb5cc", ticket.data
        )
    finally:
        await pool.close()
    home = Path(pwd.getpwnam("alice").pw_dir)
    placed = home / ".bbp-notebooks" / "sftp-test" / "krb5cc"
    assert placed.read_bytes() == ticket.data
    assert stat.S_IMODE(placed.stat().st_mode) == 0o600
    assert stat.S_IMODE(placed.parent.stat().st_mode) == 0o700
    assert placed.stat().st_uid == pwd.getpwnam("alice").pw_uid
    listed = subprocess.run(  # noqa: ASYNC221  (after the pool is closed)
        ["klist", "-c", f"FILE:{placed}"], env={**os.environ, **kdc.env}, capture_output=True,
        text=True, check=False,
    )  # fmt: skip
    assert f"Default principal: alice@{kdc.realm}" in listed.stdout
    shutil.rmtree(placed.parent)


async def test_sshd_refuses_bobs_ticket_for_alice(
    kdc: Kdc, gssapi_sshd: GssapiSshd, files: TicketFiles
) -> None:
    """The frontend's own check (krb5_kuserok); the operator refuses before ssh (other tests)."""
    bobs = parse_ccache(login(kdc, "bob"))
    identity = Identity.gssapi("alice", files.write("bob-as-alice", bobs), bobs.end)
    pool = SshPool()
    try:
        with pytest.raises(AuthenticationFailed):
            await pool.run(gssapi_sshd.endpoint(), identity, ["id"])
    finally:
        await pool.close()
