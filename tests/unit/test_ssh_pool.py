"""SshPool against a throwaway asyncssh server on 127.0.0.1: auth, host keys, limits, errors."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import socket
import time
from collections.abc import AsyncIterator
from pathlib import Path

import asyncssh
import pytest

from bbp_notebooks.ssh import (
    AuthenticationFailed,
    CertificateAuthority,
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    Identity,
    SiteEndpoint,
    SiteUnavailable,
    SlurmControllerUnavailable,
    SshError,
    SshPool,
)
from fixtures.ccache import ccache
from fixtures.sshserver import Call, Reply, ThrowawaySshd, default_responder

HOSTILE_ARGS = [
    "a b",
    "'single'",
    '"double"',
    "$(touch /tmp/bbpnb-canary)",
    "`id`",
    "x; rm -rf ~",
    "line1\nline2",
    "*",
    "--option=--value",
    "",
    "ünïcødé ✓",
]


@pytest.fixture(scope="module")
def user_ca() -> CertificateAuthority:
    return CertificateAuthority(asyncssh.generate_private_key("ssh-ed25519"))


@pytest.fixture
async def sshd(user_ca: CertificateAuthority) -> AsyncIterator[ThrowawaySshd]:
    async with ThrowawaySshd(user_ca=user_ca) as server:
        yield server


@pytest.fixture
async def pool() -> AsyncIterator[SshPool]:
    pool = SshPool(connect_timeout=5)
    yield pool
    await pool.close()


async def test_a_minted_certificate_logs_in_and_argv_arrives_word_for_word(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    result = await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["echo-argv", *HOSTILE_ARGS])
    assert result.exit_status == 0
    assert json.loads(result.stdout) == HOSTILE_ARGS
    assert sshd.counters.calls[0].user == "alice"
    assert result.duration > 0


async def test_a_kerberos_ticket_lying_around_never_slows_a_certificate_login(
    sshd: ThrowawaySshd,
    pool: SshPool,
    user_ca: CertificateAuthority,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An expired default ticket in the operator's environment (KRB5CCNAME, /tmp/krb5cc_<uid>)
    and a KDC that does not answer: a certificate login must not touch GSSAPI at all. asyncssh
    otherwise sets GSS up with the default cache, and krb5 waits on the ticket's KDC (18 s
    here) while the event loop waits with it; with no KDC in krb5.conf it asks DNS, off the
    machine. Seen: logins timing out after a Kerberos test left /tmp/krb5cc_0 behind."""
    silent_kdc = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # bound, never answers
    silent_kdc.bind(("127.0.0.1", 0))
    try:
        conf = tmp_path / "krb5.conf"
        conf.write_text(
            "[libdefaults]\n  default_realm = BBP.TEST\n  dns_lookup_kdc = false\n"
            "  dns_lookup_realm = false\n"
            f"[realms]\n  BBP.TEST = {{\n    kdc = 127.0.0.1:{silent_kdc.getsockname()[1]}\n  }}\n"
        )
        cache = tmp_path / "ccache"
        hour = dt.timedelta(hours=1)
        start = dt.datetime.now(dt.UTC) - hour - dt.timedelta(minutes=1)  # ended a minute ago
        cache.write_bytes(ccache(start=start, lifetime=hour))
        monkeypatch.setenv("KRB5_CONFIG", str(conf))
        monkeypatch.setenv("KRB5CCNAME", f"FILE:{cache}")
        started = time.monotonic()
        result = await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["echo-argv", "x"])
        took = time.monotonic() - started
    finally:
        silent_kdc.close()
    assert json.loads(result.stdout) == ["x"]
    assert took < 1.0, f"the login took {took:.1f} s"


async def test_stdin_reaches_the_command_unchanged(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    script = "#!/bin/bash\necho 'hi' \"$HOME\" ünï\n" + "x" * 100_000
    result = await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["cat"], stdin=script)
    assert result.stdout == script


async def test_thirty_concurrent_commands_share_one_connection_within_the_channel_limit(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    identity = user_ca.mint("alice")
    results = await asyncio.gather(
        *(pool.run(sshd.endpoint(), identity, ["sleep", "0.2"]) for _ in range(30))
    )
    assert [r.stdout for r in results] == ["slept\n"] * 30
    assert sshd.counters.connections == 1
    assert sshd.counters.sessions_max == 8
    assert sshd.counters.sessions_refused == 0
    assert pool.channels_in_use == 0 and pool.channels_waiting == 0
    assert pool.connections_open == 1


async def test_channels_sshd_refuses_are_retried_on_the_same_connection(
    user_ca: CertificateAuthority,
) -> None:
    async with ThrowawaySshd(user_ca=user_ca, max_sessions=2) as sshd:
        pool = SshPool(max_channels_per_connection=4)
        try:
            results = await asyncio.gather(
                *(
                    pool.run(sshd.endpoint(), user_ca.mint("alice"), ["sleep", "0.1"])
                    for _ in range(4)
                )
            )
        finally:
            await pool.close()
    assert [r.stdout for r in results] == ["slept\n"] * 4
    assert sshd.counters.sessions_refused >= 2
    assert pool.channel_refusals == sshd.counters.sessions_refused
    assert sshd.counters.connections == 1


async def test_a_frontend_that_keeps_refusing_channels_is_site_unavailable(
    user_ca: CertificateAuthority,
) -> None:
    async with ThrowawaySshd(user_ca=user_ca, max_sessions=0) as sshd:
        pool = SshPool()
        try:
            with pytest.raises(SiteUnavailable, match="channel refused"):
                await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["echo-argv"], timeout=2)
            assert sshd.counters.connections == 1  # refusals are retried on the same one
            # ... until it gives up: that connection is retired, the next command gets another.
            with pytest.raises(SiteUnavailable, match="channel refused"):
                await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["echo-argv"], timeout=2)
        finally:
            await pool.close()
    assert sshd.counters.connections == 2


async def test_each_user_gets_their_own_connection(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    for user in ("alice", "bob", "alice", "bob"):
        await pool.run(sshd.endpoint(), user_ca.mint(user), ["echo-argv"])
    assert [call.user for call in sshd.counters.calls] == ["alice", "bob", "alice", "bob"]
    assert sshd.counters.connections == 2


async def test_concurrent_handshakes_to_one_frontend_are_bounded(
    user_ca: CertificateAuthority,
) -> None:
    async with ThrowawaySshd(user_ca=user_ca, handshake_delay=0.1) as sshd:
        pool = SshPool(max_handshakes_per_host=3)
        users = [f"user{i}" for i in range(10)]
        try:
            await asyncio.gather(
                *(pool.run(sshd.endpoint(), user_ca.mint(u), ["echo-argv"]) for u in users)
            )
        finally:
            await pool.close()
    assert sshd.counters.connections == 10
    assert sshd.counters.handshakes_max == 3


async def test_a_dropped_connection_is_replaced_on_the_next_command(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    identity = user_ca.mint("alice")
    await pool.run(sshd.endpoint(), identity, ["echo-argv", "one"])
    await sshd.drop_connections()
    await asyncio.sleep(0.05)
    result = await pool.run(sshd.endpoint(), identity, ["echo-argv", "two"])
    assert json.loads(result.stdout) == ["two"]
    assert sshd.counters.connections == 2
    assert pool.connects == 2


async def test_a_changed_host_key_is_refused_and_no_command_runs(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    other = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode()
    endpoint = sshd.endpoint(known_hosts=f"[{sshd.host}]:{sshd.port} {other}")
    with pytest.raises(HostKeyMismatch) as raised:
        await pool.run(endpoint, user_ca.mint("alice"), ["echo-argv"])
    assert not isinstance(raised.value, SiteUnavailable)
    assert sshd.counters.calls == []


async def test_known_hosts_for_another_host_is_not_trust(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    key_line = sshd.host_key.export_public_key().decode().strip()
    endpoint = sshd.endpoint(known_hosts=f"[127.0.0.99]:{sshd.port} {key_line}\n")
    with pytest.raises(HostKeyMismatch):
        await pool.run(endpoint, user_ca.mint("alice"), ["echo-argv"])


def test_an_empty_known_hosts_is_rejected_before_connecting() -> None:
    with pytest.raises(ValueError, match="known_hosts is empty"):
        SiteEndpoint(name="geneva", host="127.0.0.11", port=22, known_hosts="  \n")


async def test_a_host_certificate_from_a_trusted_host_ca_is_accepted(
    pool: SshPool, user_ca: CertificateAuthority
) -> None:
    host_ca = asyncssh.generate_private_key("ssh-ed25519")
    async with ThrowawaySshd(user_ca=user_ca, host_ca=host_ca) as sshd:
        assert sshd.known_hosts().startswith("@cert-authority ")
        result = await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["echo-argv", "ok"])
    assert json.loads(result.stdout) == ["ok"]


async def test_a_host_certificate_from_an_untrusted_ca_is_refused(
    pool: SshPool, user_ca: CertificateAuthority
) -> None:
    host_ca = asyncssh.generate_private_key("ssh-ed25519")
    other_ca = asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()
    async with ThrowawaySshd(user_ca=user_ca, host_ca=host_ca) as sshd:
        endpoint = sshd.endpoint(
            known_hosts=f"@cert-authority [{sshd.host}]:{sshd.port} {other_ca}"
        )
        with pytest.raises(HostKeyMismatch):
            await pool.run(endpoint, user_ca.mint("alice"), ["echo-argv"])


async def test_a_certificate_from_an_untrusted_ca_fails_authentication(
    sshd: ThrowawaySshd, pool: SshPool
) -> None:
    stranger = CertificateAuthority(asyncssh.generate_private_key("ssh-ed25519"))
    with pytest.raises(AuthenticationFailed):
        await pool.run(sshd.endpoint(), stranger.mint("alice"), ["echo-argv"])
    assert pool.connections_open == 0


async def test_a_certificate_for_another_user_fails_authentication(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    bobs = user_ca.mint("bob")
    impostor = Identity("alice", bobs.key, bobs.certificate)
    with pytest.raises(AuthenticationFailed):
        await pool.run(sshd.endpoint(), impostor, ["echo-argv"])


async def test_an_expired_certificate_fails_authentication(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=1)
    expired = user_ca.mint("alice", dt.timedelta(minutes=10), now=past)
    assert expired.expires_within(dt.timedelta(0))
    with pytest.raises(AuthenticationFailed):
        await pool.run(sshd.endpoint(), expired, ["echo-argv"])


async def test_a_certificate_near_expiry_is_renewed_before_connecting(
    sshd: ThrowawaySshd, user_ca: CertificateAuthority
) -> None:
    renewed: list[str] = []

    def renew(identity: Identity) -> Identity:
        renewed.append(identity.username)
        return user_ca.mint(identity.username)

    pool = SshPool(renew=renew, renew_margin=dt.timedelta(minutes=2))
    try:
        past = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=9, seconds=30)
        almost_expired = user_ca.mint("alice", dt.timedelta(minutes=10), now=past)
        await pool.run(sshd.endpoint(), almost_expired, ["echo-argv"])
        # The open connection is reused: no renewal until a new connection is needed.
        await pool.run(sshd.endpoint(), almost_expired, ["echo-argv"])
        assert renewed == ["alice"]
        await sshd.drop_connections()
        await asyncio.sleep(0.05)
        await pool.run(sshd.endpoint(), almost_expired, ["echo-argv"])
        assert renewed == ["alice", "alice"]
    finally:
        await pool.close()


async def test_a_plain_key_identity_logs_in_when_authorized(user_ca: CertificateAuthority) -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    async with ThrowawaySshd(user_ca=user_ca, authorized_keys=(key,)) as sshd:
        pool = SshPool()
        try:
            text = key.export_private_key().decode()
            result = await pool.run(
                sshd.endpoint(), Identity.from_private_key("bob", text), ["echo-argv", "k"]
            )
        finally:
            await pool.close()
    assert json.loads(result.stdout) == ["k"]


async def test_a_kerberos_identity_without_a_usable_ticket_is_a_refused_login(
    sshd: ThrowawaySshd, pool: SshPool
) -> None:
    # No ticket cache there, and a server that offers no GSSAPI: refused, never a crash.
    identity = Identity.gssapi("alice", "FILE:/nonexistent/bbp-krb5-test")
    with pytest.raises(AuthenticationFailed, match="gssapi"):
        await pool.run(sshd.endpoint(), identity, ["echo-argv"])


async def test_a_refused_connection_is_site_unavailable(
    pool: SshPool, user_ca: CertificateAuthority
) -> None:
    async with ThrowawaySshd(user_ca=user_ca) as sshd:
        endpoint = sshd.endpoint()
    with pytest.raises(SiteUnavailable, match="cannot reach"):
        await pool.run(endpoint, user_ca.mint("alice"), ["echo-argv"])


async def test_a_frontend_that_never_answers_times_out_as_site_unavailable(
    user_ca: CertificateAuthority,
) -> None:
    release = asyncio.Event()
    accepted: list[asyncio.StreamWriter] = []

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)
        await release.wait()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    endpoint = SiteEndpoint("silent", "127.0.0.1", port, f"[127.0.0.1]:{port} ssh-ed25519 AAAA\n")
    pool = SshPool(connect_timeout=0.3)
    try:
        with pytest.raises(SiteUnavailable):
            await pool.run(endpoint, user_ca.mint("alice"), ["echo-argv"], timeout=5)
    finally:
        await pool.close()
        release.set()
        for writer in accepted:
            writer.close()
            await writer.wait_closed()
        server.close()
        await server.wait_closed()


async def test_a_non_zero_exit_raises_command_failed_with_stderr(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    with pytest.raises(CommandFailed) as raised:
        await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["fail", "2", "bad things\n"])
    assert (raised.value.argv0, raised.value.exit_status) == ("fail", 2)
    assert raised.value.stderr == "bad things\n"


async def test_without_check_a_non_zero_exit_is_returned(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    result = await pool.run(
        sshd.endpoint(), user_ca.mint("alice"), ["fail", "1", "nope"], check=False
    )
    assert (result.exit_status, result.stderr) == (1, "nope")


@pytest.mark.parametrize(
    "stderr",
    [
        "squeue: error: Unable to contact slurm controller (connect failure)\n",
        "sbatch: error: Batch job submission failed: Socket timed out on send/recv operation\n",
    ],
)
async def test_an_unreachable_controller_is_site_unavailable_not_a_failure(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority, stderr: str
) -> None:
    with pytest.raises(SlurmControllerUnavailable) as raised:
        await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["fail", "1", stderr])
    assert isinstance(raised.value, SiteUnavailable)
    assert not isinstance(raised.value, CommandFailed)


async def test_a_slow_command_times_out_and_frees_its_channel(
    sshd: ThrowawaySshd, user_ca: CertificateAuthority
) -> None:
    pool = SshPool(max_channels_per_connection=1)
    identity = user_ca.mint("alice")
    try:
        with pytest.raises(CommandTimeout) as raised:
            await pool.run(sshd.endpoint(), identity, ["sleep", "3"], timeout=0.3)
        assert raised.value.started
        assert pool.channels_in_use == 0
        result = await pool.run(sshd.endpoint(), identity, ["echo-argv", "next"], timeout=5)
        assert json.loads(result.stdout) == ["next"]
    finally:
        await pool.close()


async def test_a_command_queued_behind_a_full_connection_times_out_before_starting(
    user_ca: CertificateAuthority,
) -> None:
    busy_started = asyncio.Event()

    async def responder(call: Call) -> Reply:
        if call.argv[0] == "sleep":
            busy_started.set()
        return await default_responder(call)

    async with ThrowawaySshd(user_ca=user_ca, responder=responder) as sshd:
        pool = SshPool(max_channels_per_connection=1)
        identity = user_ca.mint("alice")
        try:
            busy = asyncio.create_task(pool.run(sshd.endpoint(), identity, ["sleep", "1"]))
            async with asyncio.timeout(10):
                await busy_started.wait()  # the busy command holds the only channel
            with pytest.raises(CommandTimeout) as raised:
                await pool.run(sshd.endpoint(), identity, ["echo-argv"], timeout=0.1)
            assert not raised.value.started
            await busy
        finally:
            await pool.close()


async def test_the_observer_sees_every_command_with_its_outcome(
    sshd: ThrowawaySshd, user_ca: CertificateAuthority
) -> None:
    seen: list[tuple[str, str, str]] = []

    def observer(site: str, command: str, seconds: float, outcome: str) -> None:
        assert seconds >= 0
        seen.append((site, command, outcome))

    pool = SshPool(observer=observer)
    identity = user_ca.mint("alice")
    try:
        await pool.run(sshd.endpoint("geneva"), identity, ["echo-argv"])
        with pytest.raises(CommandFailed):
            await pool.run(sshd.endpoint("geneva"), identity, ["fail", "3", "x"])
        with pytest.raises(SlurmControllerUnavailable):
            await pool.run(
                sshd.endpoint("geneva"),
                identity,
                ["fail", "1", "Unable to contact slurm controller"],
            )
    finally:
        await pool.close()
    assert seen == [
        ("geneva", "echo-argv", "ok"),
        ("geneva", "fail", "failed"),
        ("geneva", "fail", "controller_unavailable"),
    ]


async def test_a_broken_observer_does_not_break_commands(
    sshd: ThrowawaySshd, user_ca: CertificateAuthority, caplog: pytest.LogCaptureFixture
) -> None:
    def observer(site: str, command: str, seconds: float, outcome: str) -> None:
        raise RuntimeError("metrics down")

    pool = SshPool(observer=observer)
    try:
        result = await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["echo-argv"])
    finally:
        await pool.close()
    assert result.exit_status == 0
    assert "observer failed" in caplog.text


async def test_a_closed_pool_refuses_new_commands(
    sshd: ThrowawaySshd, user_ca: CertificateAuthority
) -> None:
    pool = SshPool()
    await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["echo-argv"])
    await pool.close()
    assert pool.connections_open == 0
    with pytest.raises(RuntimeError, match="closed"):
        await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["echo-argv"])


async def test_an_empty_argv_is_refused(sshd: ThrowawaySshd, pool: SshPool) -> None:
    with pytest.raises(ValueError):
        await pool.run(sshd.endpoint(), Identity.gssapi("alice", "FILE:/nonexistent"), [])


async def test_every_ssh_error_carries_the_site_name(
    pool: SshPool, user_ca: CertificateAuthority
) -> None:
    async def slurm_down(call: Call) -> Reply:
        return 1, "", "sinfo: error: Unable to contact slurm controller (connect failure)\n"

    async with ThrowawaySshd(user_ca=user_ca, responder=slurm_down) as sshd:
        with pytest.raises(SshError) as raised:
            await pool.run(sshd.endpoint("lugano"), user_ca.mint("alice"), ["sinfo"])
    assert raised.value.site == "lugano"
    assert str(raised.value).startswith("lugano: ")


async def test_a_connection_dropped_while_idle_is_replaced_without_losing_the_command(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    identity = user_ca.mint("alice")
    await pool.run(sshd.endpoint(), identity, ["echo-argv", "one"])
    await sshd.drop_connections()  # no pause: the client may not have noticed yet
    result = await pool.run(sshd.endpoint(), identity, ["echo-argv", "two"])
    assert json.loads(result.stdout) == ["two"]
    assert [c.argv for c in sshd.counters.calls] == [
        ["echo-argv", "one"],
        ["echo-argv", "two"],
    ]


async def test_a_channel_closed_without_exit_status_is_not_an_answer(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    with pytest.raises(SiteUnavailable, match="without an exit status"):
        await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["vanish"], check=False)


async def test_a_command_killed_by_a_signal_failed(
    sshd: ThrowawaySshd, pool: SshPool, user_ca: CertificateAuthority
) -> None:
    with pytest.raises(CommandFailed) as raised:
        await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["killed"])
    assert raised.value.exit_status == -1
    assert "killed by signal KILL" in raised.value.stderr


async def test_connections_idle_longer_than_the_idle_timeout_are_closed(
    sshd: ThrowawaySshd, user_ca: CertificateAuthority
) -> None:
    pool = SshPool(idle_timeout=0.2)
    try:
        await pool.run(sshd.endpoint(), user_ca.mint("alice"), ["echo-argv"])
        await asyncio.sleep(0.3)
        await pool.run(sshd.endpoint(), user_ca.mint("bob"), ["echo-argv"])
        assert pool.connections_open == 1
        await pool.run(sshd.endpoint(), user_ca.mint("bob"), ["echo-argv"])
        assert sshd.counters.connections == 2
    finally:
        await pool.close()
