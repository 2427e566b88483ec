"""What every command handler works with: its context (cluster, user, stdin) and its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bbp_notebooks.mockslurm.cluster import SLURM_VERSION, Cluster, Identity
from bbp_notebooks.mockslurm.getopt import GetoptError, Option, parse


@dataclass
class CommandResult:
    exit_status: int = 0
    stdout: str = ""
    stderr: str = ""


@dataclass
class Context:
    """What a command sees: the cluster, who runs it, their environment and stdin."""

    cluster: Cluster
    user: Identity
    environment: dict[str, str]
    read_stdin: Callable[[], Awaitable[str]]
    cwd: str = ""
    stdout: list[str] = field(default_factory=list)
    stderr: list[str] = field(default_factory=list)

    def out(self, text: str) -> None:
        self.stdout.append(text)

    def err(self, text: str) -> None:
        self.stderr.append(text)

    def result(self, exit_status: int) -> CommandResult:
        return CommandResult(exit_status, "".join(self.stdout), "".join(self.stderr))

    async def contact_controller(self, attempts: int = 1) -> bool:
        """An RPC to slurmctld: slow when the controller is slow, failing when it is down.

        ``attempts``: connect timeouts the client sits through before it gives up; 22.05's
        queries for one job or one user's jobs take two (18 s, against 9 s for the rest).
        """
        faults = self.cluster.faults
        if faults.controller_down:
            await asyncio.sleep(self.cluster.config.controller_down_delay * attempts)
            return False
        if faults.controller_latency > 0:
            await asyncio.sleep(faults.controller_latency)
        return True

    async def contact_database(self, prog: str) -> bool:
        """A connection to slurmdbd (sacct, sacctmgr); prints slurmdbd's errors when it is down."""
        if not self.cluster.faults.database_down:
            return True
        await asyncio.sleep(self.cluster.config.controller_down_delay)
        self.err(
            f"{prog}: error: slurm_persist_conn_open_without_init: failed to open persistent "
            "connection to host:localhost:6819: Connection refused\n"
            f"{prog}: error: Sending PersistInit msg: Connection refused\n"
            f"{prog}: error: Problem talking to the database: Connection refused\n"
        )
        return False


CONNECT_FAILURE = "Unable to contact slurm controller (connect failure)"

Handler = Callable[["Context", list[str]], Awaitable[int]]


def parse_options(
    ctx: Context, command: str, argv: list[str], options: list[Option], usage: str
) -> tuple[dict[str, str | None], list[str]] | int:
    """Options as a dict and the positional arguments, the way Slurm's tools read them; or the
    exit status when the command is already answered (--version, --help, a getopt error)."""
    try:
        parsed, positional = parse(command, argv, options)
    except GetoptError as error:
        ctx.err(f'{error}\nTry "{command} --help" for more information\n')
        return 1
    settings: dict[str, str | None] = {}
    for key, value in parsed:
        if key == "version":
            ctx.out(f"slurm {SLURM_VERSION}\n")
            return 0
        if key in ("help", "usage"):
            ctx.out(f"Usage: {command} {usage}\n")
            return 0
        settings[key] = value
    return settings, positional
