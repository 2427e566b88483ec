"""Keep-alive ssh connections to Slurm frontends, one per (site, user), many channels on each.

sshd allows about 10 sessions per connection (MaxSessions) and drops handshakes beyond MaxStartups,
so the pool bounds both: channels per connection and concurrent handshakes per frontend. Every
wait has a deadline. asyncssh's exceptions are translated into :mod:`bbp_notebooks.ssh.errors`
here and nowhere else.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import inspect
import logging
import os.path
import shlex
from collections.abc import Awaitable, Callable, Sequence

import asyncssh

from bbp_notebooks.ssh.errors import (
    AnswerLost,
    AuthenticationFailed,
    CommandTimeout,
    HostKeyMismatch,
    SiteUnavailable,
    SshError,
    error_for_exit,
)
from bbp_notebooks.ssh.identity import Identity, IdentityKind, SiteEndpoint

__all__ = ["CommandResult", "Observer", "Renewer", "SshPool"]

log = logging.getLogger(__name__)

# (site, command name, seconds, outcome); outcome is "ok", "failed" or an SshError's ``outcome``.
Observer = Callable[[str, str, float, str], None]
# Given an identity whose certificate is (nearly) expired, return a fresh one for the same user.
Renewer = Callable[[Identity], Identity | Awaitable[Identity]]

_CLOSE_TIMEOUT = 5.0
# sshd refuses a channel when it still counts a just-closed session against MaxSessions.
_REFUSAL_BACKOFF = 0.05
_MAX_REFUSALS = 8


@dataclasses.dataclass(frozen=True)
class CommandResult:
    exit_status: int  # -1 when the command was killed by a signal
    stdout: str
    stderr: str
    duration: float


@dataclasses.dataclass(eq=False)
class _Pooled:
    connection: asyncssh.SSHClientConnection
    slots: asyncio.Semaphore
    in_use: int = 0
    waiting: int = 0
    retired: bool = False
    last_used: float = 0.0

    @property
    def closed(self) -> bool:
        return self.connection.is_closed()


_Key = tuple[str, str, int, str]


def _connection_is_gone(pooled: _Pooled, error: Exception) -> bool:
    """Did opening a channel fail because the connection died (rather than sshd saying no)?"""
    if pooled.closed or not isinstance(error, asyncssh.ChannelOpenError):
        return True
    # asyncssh fails pending opens with this reason when the transport goes away; sshd's own
    # refusal says "open failed" (OpenSSH) or names the reason.
    return error.reason == "SSH connection closed"


class SshPool:
    """Runs argv on site frontends as a given user over pooled connections.

    The command line sent is ``shlex.join(argv)``: the remote login shell sees every element as
    one quoted word, so no user-supplied string is ever interpreted by it.
    """

    def __init__(
        self,
        *,
        max_channels_per_connection: int = 8,
        max_handshakes_per_host: int = 4,
        connect_timeout: float = 10.0,
        keepalive_interval: float = 30.0,
        keepalive_count_max: int = 3,
        idle_timeout: float = 300.0,
        renew: Renewer | None = None,
        renew_margin: dt.timedelta = dt.timedelta(minutes=1),
        observer: Observer | None = None,
    ) -> None:
        if max_channels_per_connection < 1 or max_handshakes_per_host < 1:
            raise ValueError("channel and handshake limits must be at least 1")
        self._max_channels = max_channels_per_connection
        self._max_handshakes = max_handshakes_per_host
        self._connect_timeout = connect_timeout
        self._keepalive_interval = keepalive_interval
        self._keepalive_count_max = keepalive_count_max
        self._idle_timeout = idle_timeout
        self._renew = renew
        self._renew_margin = renew_margin
        self._observer = observer
        self._pooled: dict[_Key, _Pooled] = {}
        self._locks: dict[_Key, asyncio.Lock] = {}
        self._handshakes: dict[tuple[str, int], asyncio.Semaphore] = {}
        self._closed = False
        self.connects = 0  # connections opened so far (tests and debugging)
        self.channel_refusals = 0  # channels sshd refused (MaxSessions) and we retried

    # --- gauges ---------------------------------------------------------------------------------

    @property
    def connections_open(self) -> int:
        return sum(1 for pooled in self._pooled.values() if not pooled.closed)

    @property
    def channels_in_use(self) -> int:
        return sum(pooled.in_use for pooled in self._pooled.values())

    @property
    def channels_waiting(self) -> int:
        return sum(pooled.waiting for pooled in self._pooled.values())

    # --- running commands -----------------------------------------------------------------------

    async def run(
        self,
        endpoint: SiteEndpoint,
        identity: Identity,
        argv: Sequence[str],
        stdin: str | None = None,
        timeout: float = 30.0,  # noqa: ASYNC109 - one deadline over connect, queue and command
        *,
        check: bool = True,
    ) -> CommandResult:
        """Run ``argv`` as ``identity`` on ``endpoint`` within ``timeout`` seconds (all waits).

        With ``check`` (the default) a non-zero exit raises CommandFailed, or
        SlurmControllerUnavailable when stderr says slurmctld could not be reached; without it the
        result is returned as is. Connection trouble raises SiteUnavailable, AuthenticationFailed
        or HostKeyMismatch; the deadline raises CommandTimeout.
        """
        if self._closed:
            raise RuntimeError("the ssh pool is closed")
        if not argv or not all(isinstance(word, str) for word in argv):
            raise ValueError(f"argv must be a non-empty list of strings: {argv!r}")
        if stdin is not None and "\x00" in stdin:
            raise ValueError("stdin must not contain NUL bytes")
        name = os.path.basename(argv[0])
        loop = asyncio.get_running_loop()
        start = loop.time()
        outcome = "ok"
        try:
            result = await self._run(endpoint, identity, list(argv), stdin, start + timeout)
            if result.exit_status != 0:
                outcome = "failed"
                if check:
                    error = error_for_exit(endpoint.name, argv, result.exit_status, result.stderr)
                    outcome = error.outcome
                    raise error
            return result
        except SshError as error:
            outcome = error.outcome
            raise
        except BaseException:
            outcome = "error"
            raise
        finally:
            self._observe(endpoint.name, name, loop.time() - start, outcome)

    async def _run(
        self,
        endpoint: SiteEndpoint,
        identity: Identity,
        argv: list[str],
        stdin: str | None,
        deadline: float,
    ) -> CommandResult:
        loop = asyncio.get_running_loop()
        start = loop.time()
        command = shlex.join(argv)
        reconnected = False
        refusals = 0
        while True:
            pooled = await self._acquire(endpoint, identity, argv[0], deadline)
            try:
                try:
                    async with asyncio.timeout_at(deadline):
                        process = await pooled.connection.create_process(
                            command, encoding="utf-8", errors="replace"
                        )
                except TimeoutError:
                    raise CommandTimeout(
                        endpoint.name, argv[0], deadline - start, started=False
                    ) from None
                except (asyncssh.Error, OSError) as error:
                    failure: Exception = error
                else:
                    return await self._communicate(endpoint, argv, process, stdin, start, deadline)
            finally:
                pooled.in_use -= 1
                pooled.last_used = loop.time()
                pooled.slots.release()
                if pooled.retired and pooled.in_use == 0:
                    pooled.connection.close()
            # The channel never opened, so the command never ran and may be tried again.
            if _connection_is_gone(pooled, failure):
                # Closed, or closing before we noticed: once more on a fresh connection.
                self._retire(pooled)
                if reconnected:
                    raise SiteUnavailable(endpoint.name, f"cannot open a channel: {failure}")
                reconnected = True
                log.info("ssh %s: reconnecting after %s", endpoint.name, failure)
                continue
            # sshd refused the channel ("open failed"): MaxSessions. Its session count lags
            # behind channel closes, so this happens below the limit too; back off and retry.
            self.channel_refusals += 1
            refusals += 1
            delay = _REFUSAL_BACKOFF * 2 ** min(refusals - 1, 5)
            if refusals > _MAX_REFUSALS or loop.time() + delay >= deadline:
                # A connection sshd keeps refusing may be wedged (sessions it still counts):
                # the next command gets a fresh one instead of the same refusals.
                self._retire(pooled)
                raise SiteUnavailable(endpoint.name, f"channel refused by sshd: {failure}")
            await asyncio.sleep(delay)

    async def _communicate(
        self,
        endpoint: SiteEndpoint,
        argv: list[str],
        process: asyncssh.SSHClientProcess[str],
        stdin: str | None,
        start: float,
        deadline: float,
    ) -> CommandResult:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout_at(deadline):
                if stdin:
                    process.stdin.write(stdin)
                process.stdin.write_eof()
                stdout, stderr = await process.communicate()
        except TimeoutError:
            raise CommandTimeout(endpoint.name, argv[0], deadline - start, started=True) from None
        except (asyncssh.Error, OSError) as error:
            raise AnswerLost(endpoint.name, f"{argv[0]}: connection lost: {error}") from None
        finally:
            process.close()
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await process.wait_closed()
        status = process.exit_status
        stderr = stderr or ""
        if status is None or status < 0:
            signal = process.exit_signal
            if signal is None:
                # The channel closed without an exit status: sshd or the session went away
                # mid-command. We do not know what happened, so this is not an answer.
                raise AnswerLost(endpoint.name, f"{argv[0]}: channel closed without an exit status")
            stderr += f"\n(killed by signal {signal[0]})"
            status = -1
        return CommandResult(
            exit_status=status, stdout=stdout or "", stderr=stderr, duration=loop.time() - start
        )

    async def _acquire(
        self, endpoint: SiteEndpoint, identity: Identity, argv0: str, deadline: float
    ) -> _Pooled:
        """A live connection with one channel slot reserved for the caller."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            async with asyncio.timeout_at(deadline):
                pooled = await self._connection(endpoint, identity)
                pooled.waiting += 1
                try:
                    await pooled.slots.acquire()
                finally:
                    pooled.waiting -= 1
        except TimeoutError:
            raise CommandTimeout(endpoint.name, argv0, deadline - start, started=False) from None
        pooled.in_use += 1
        pooled.last_used = loop.time()
        return pooled

    # --- connections ----------------------------------------------------------------------------

    def _close_idle(self) -> None:
        """Close connections unused for ``idle_timeout``: one per user adds up on a frontend."""
        cutoff = asyncio.get_running_loop().time() - self._idle_timeout
        for pooled in list(self._pooled.values()):
            if pooled.in_use == 0 and pooled.waiting == 0 and pooled.last_used < cutoff:
                self._retire(pooled)

    async def _connection(self, endpoint: SiteEndpoint, identity: Identity) -> _Pooled:
        self._close_idle()
        key = (endpoint.name, endpoint.host, endpoint.port, identity.username)
        pooled = self._pooled.get(key)
        if pooled is not None and not pooled.closed:
            return pooled
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock:
            pooled = self._pooled.get(key)
            if pooled is not None and not pooled.closed:
                return pooled
            if pooled is not None:
                self._retire(pooled)
            fresh = await self._fresh(identity)
            handshakes = self._handshakes.setdefault(
                (endpoint.host, endpoint.port), asyncio.Semaphore(self._max_handshakes)
            )
            async with handshakes:
                connection = await self._connect(endpoint, fresh)
            pooled = _Pooled(
                connection,
                asyncio.Semaphore(self._max_channels),
                last_used=asyncio.get_running_loop().time(),
            )
            self._pooled[key] = pooled
            self.connects += 1
            return pooled

    async def _fresh(self, identity: Identity) -> Identity:
        if self._renew is None or not identity.expires_within(self._renew_margin):
            return identity
        renewed = self._renew(identity)
        if inspect.isawaitable(renewed):
            renewed = await renewed
        assert isinstance(renewed, Identity)
        if renewed.username != identity.username:
            raise ValueError("the renewer returned an identity for another user")
        return renewed

    async def _connect(
        self, endpoint: SiteEndpoint, identity: Identity
    ) -> asyncssh.SSHClientConnection:
        auth: dict[str, object]
        if identity.kind is IdentityKind.GSSAPI:
            # The user's own ticket cache (principal checked by whoever built the identity),
            # given per connection: never $KRB5CCNAME or the process's default cache.
            # Delegation leaves a forwarded ticket with the user's session on the frontend.
            auth = {
                "client_keys": None,
                "gss_auth": True,
                "gss_kex": False,
                "gss_host": endpoint.gss_host or endpoint.host,
                # Bytes: python-gssapi frees the bytes it encodes a str key or value into
                # before the GSSAPI call reads them (hub/kerberos.py, _cred_store).
                "gss_store": {b"ccache": str(identity.ccache).encode()},
                "gss_delegate_creds": True,
            }
        else:
            assert identity.key is not None
            client_key: asyncssh.SSHKey | tuple[asyncssh.SSHKey, asyncssh.SSHCertificate]
            if identity.certificate is not None:
                client_key = (identity.key, identity.certificate)
            else:
                client_key = identity.key
            # No GSSAPI at all (gss_host None; asyncssh otherwise sets up GSS, by
            # default with whatever default ticket cache the process finds: krb5 then looks for
            # that ticket's KDC, in DNS if krb5.conf does not name it, while the event loop
            # waits; seen: certificate logins timing out next to a stale /tmp/krb5cc_0).
            auth = {"client_keys": [client_key], "gss_host": None}
        site = endpoint.name
        try:
            return await asyncssh.connect(
                endpoint.host,
                endpoint.port,
                username=identity.username,
                known_hosts=endpoint.trusted_host_keys(),
                agent_path=None,
                config=[],
                x509_trusted_certs=None,
                password_auth=False,
                kbdint_auth=False,
                host_based_auth=False,
                **auth,
                connect_timeout=self._connect_timeout,
                login_timeout=self._connect_timeout,
                keepalive_interval=self._keepalive_interval,
                keepalive_count_max=self._keepalive_count_max,
            )
        except asyncssh.HostKeyNotVerifiable as error:
            raise HostKeyMismatch(
                site, f"host key of {endpoint.host} not trusted: {error}"
            ) from None
        except asyncssh.PermissionDenied as error:
            raise AuthenticationFailed(
                site,
                f"{identity.username}@{endpoint.host} refused ({identity.kind.value}): {error}",
            ) from None
        except asyncssh.Error as error:
            raise SiteUnavailable(
                site, f"ssh to {endpoint.host}:{endpoint.port}: {error}"
            ) from None
        except (OSError, TimeoutError) as error:
            reason = str(error) or type(error).__name__
            raise SiteUnavailable(
                site, f"cannot reach {endpoint.host}:{endpoint.port}: {reason}"
            ) from None

    async def put_file(
        self,
        endpoint: SiteEndpoint,
        identity: Identity,
        path: str,
        data: bytes,
        timeout: float = 30.0,  # noqa: ASYNC109
    ) -> None:
        """Write ``data`` to ``path`` (relative to the user's home) over SFTP, 0600 from its
        first byte, in 0700 parent folders, replacing the old file atomically. The bytes never
        pass through a command line or a shell."""
        if path.startswith("/") or ".." in path.split("/"):
            raise ValueError(f"not a path inside the home directory: {path!r}")
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        start = loop.time()
        pooled = await self._acquire(endpoint, identity, "sftp", deadline)
        outcome = "ok"
        try:
            async with asyncio.timeout_at(deadline):
                async with pooled.connection.start_sftp_client() as sftp:
                    parts = path.split("/")
                    for depth in range(1, len(parts)):
                        folder = "/".join(parts[:depth])
                        if not await sftp.isdir(folder):
                            await sftp.mkdir(folder, asyncssh.SFTPAttrs(permissions=0o700))
                        await sftp.chmod(folder, 0o700)
                    partial = f"{path}.partial"
                    attrs = asyncssh.SFTPAttrs(permissions=0o600)
                    async with sftp.open(partial, "wb", attrs) as handle:
                        await handle.write(data)
                    await sftp.chmod(partial, 0o600)
                    await sftp.posix_rename(partial, path)
        except TimeoutError:
            outcome = "timeout"
            raise CommandTimeout(endpoint.name, "sftp", timeout, started=True) from None
        except (asyncssh.Error, OSError) as error:
            outcome = "error"
            raise SiteUnavailable(endpoint.name, f"sftp write of {path}: {error}") from None
        finally:
            pooled.in_use -= 1
            pooled.slots.release()
            if pooled.retired and pooled.in_use == 0:
                pooled.connection.close()
            self._observe(endpoint.name, "sftp", loop.time() - start, outcome)

    def _retire(self, pooled: _Pooled) -> None:
        """No new commands on this connection; it closes when its last command ends."""
        pooled.retired = True
        for key, value in list(self._pooled.items()):
            if value is pooled:
                del self._pooled[key]
        if pooled.in_use == 0:
            pooled.connection.close()

    def _observe(self, site: str, command: str, seconds: float, outcome: str) -> None:
        if self._observer is None:
            return
        try:
            self._observer(site, command, seconds, outcome)
        except Exception:  # a broken metrics hook must not break Slurm calls
            log.exception("ssh pool observer failed")

    async def close(self) -> None:
        """Close every connection (waiting at most a few seconds for each)."""
        self._closed = True
        pooled, self._pooled = list(self._pooled.values()), {}
        for entry in pooled:
            entry.connection.close()
        for entry in pooled:
            with contextlib.suppress(TimeoutError, asyncssh.Error, OSError):
                async with asyncio.timeout(_CLOSE_TIMEOUT):
                    await entry.connection.wait_closed()
