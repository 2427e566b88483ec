"""The login node: an asyncssh server that runs Slurm commands and nothing else.

Authentication mirrors an sshd with TrustedUserCAKeys (the certificate's principals must name
the login user, its validity window is honoured) plus per-user authorized keys, configured as
the site guide says: no login as root or as a system account (uid below min_login_uid), whatever
key or certificate is offered.
"""

from __future__ import annotations

import asyncio
import logging
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import asyncssh
from asyncssh.process import SSHServerProcess

from bbp_notebooks.mockslurm.commands import Context, execute
from bbp_notebooks.mockslurm.config import POSIX_USER

if TYPE_CHECKING:
    from bbp_notebooks.mockslurm.site import MockSite

log = logging.getLogger(__name__)

NO_SHELL = "This account is restricted to Slurm commands; interactive shells are disabled.\n"


class LoginServer(asyncssh.SSHServer):
    """One instance per connection."""

    def __init__(self, site: MockSite):
        self.site = site
        self._conn: asyncssh.SSHServerConnection | None = None
        self.sessions = 0

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        assert self._conn is not None
        lines: list[str] = []
        cluster = self.site.cluster
        # Like sshd, only users that exist (here: configured or POSIX) may log in.
        allowed = bool(POSIX_USER.match(username)) and cluster.user_known(username)
        if allowed:
            uid = cluster.identity(username).uid
            if self.site.config.login_refused_for_uid(uid):
                # Like PermitRootLogin no and a principals command that names no system account.
                log.warning(
                    "site %s: refusing login as %s (uid %d): root, system accounts (uid below"
                    " %d) and nobody never log in, whatever certificate or key they offer",
                    self.site.config.name,
                    username,
                    uid,
                    self.site.config.min_login_uid,
                )
                allowed = False
        if not cluster.faults.ssh_refused and allowed:
            for ca_key in self.site.config.ca_public_keys():
                lines.append(f'cert-authority,principals="{username}" {ca_key}')
            user = self.site.config.user(username)
            if user is not None:
                lines.extend(key.strip() for key in user.authorized_keys if key.strip())
        trusted = asyncssh.SSHAuthorizedKeys()
        for line in lines:
            try:
                trusted.load(line)
            except ValueError:
                log.warning(
                    "site %s: ignoring a malformed key for %s", self.site.config.name, username
                )
        self._conn.set_authorized_keys(trusted)
        return True

    def public_key_auth_supported(self) -> bool:
        # Even with nothing to accept, offer publickey so clients get "Permission denied".
        return True

    def session_requested(self) -> tuple[asyncssh.SSHServerChannel[str], SSHServerProcess[str]]:
        """Like sshd's MaxSessions: channels beyond the limit are refused at open."""
        assert self._conn is not None
        if self.sessions >= self.site.config.max_sessions:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, "open failed"
            )
        self.sessions += 1
        channel: asyncssh.SSHServerChannel[str] = self._conn.create_server_channel()
        return channel, _CountedProcess(self, partial(handle_process, self.site), None, 0, False)

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False


class _CountedProcess(SSHServerProcess[str]):
    """A session that counts against MaxSessions until its channel closes, as in sshd: also one
    closed before any command was asked for (a client that gave up while opening it), whose
    process handler never runs."""

    def __init__(self, server: LoginServer, *args: Any) -> None:
        super().__init__(*args)
        self._server: LoginServer | None = server

    def connection_lost(self, exc: Exception | None) -> None:
        if self._server is not None:
            self._server.sessions -= 1
            self._server = None
        super().connection_lost(exc)


async def handle_process(site: MockSite, process: asyncssh.SSHServerProcess[str]) -> None:
    await _run_process(site, process)


async def _run_process(site: MockSite, process: asyncssh.SSHServerProcess[str]) -> None:
    command = process.command
    username = process.get_extra_info("username") or ""
    try:
        if command is None:
            process.stderr.write(NO_SHELL)
            process.exit(1)
            return
        user = site.cluster.identity(username)
        env = _login_environment(user.name, user.home, process.env)

        async def read_stdin() -> str:
            return await process.stdin.read()

        context = Context(
            cluster=site.cluster,
            user=user,
            environment=env,
            read_stdin=read_stdin,
            cwd=user.home,
        )
        if not user.posix:
            _make_home(user.home)
        result = await execute(context, command)
        if site.cluster.faults.sbatch_response_lost and result.stdout and _is_sbatch(command):
            # The job exists, but the client never hears about it (a dropped connection).
            process.channel.get_connection().abort()
            return
        if result.stdout:
            process.stdout.write(result.stdout)
        if result.stderr:
            process.stderr.write(result.stderr)
        await process.stdout.drain()
        await process.stderr.drain()
        process.exit(result.exit_status)
    except (asyncssh.Error, BrokenPipeError, ConnectionError):
        log.debug("client went away during %r", command)
        process.close()
    except asyncio.CancelledError:
        process.close()
        raise
    except Exception:
        log.exception("command %r failed", command)
        try:
            process.stderr.write("internal error in the Slurm emulator\n")
            process.exit(255)
        except Exception:
            process.close()


def _make_home(path: str) -> None:
    Path(path).mkdir(parents=True, exist_ok=True)


def _is_sbatch(command: str) -> bool:
    words = command.split(None, 1)
    return bool(words) and words[0].rsplit("/", 1)[-1] == "sbatch"


def _login_environment(user: str, home: str, client_env: object) -> dict[str, str]:
    """What a login shell would hand to sbatch: a base environment plus what the client sent."""
    env = {
        "HOME": home,
        "USER": user,
        "LOGNAME": user,
        "SHELL": "/bin/bash",
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    if isinstance(client_env, dict):
        for key, value in client_env.items():
            if isinstance(key, str) and isinstance(value, str):
                env[key] = value
    return env
