"""What every command handler works with: its context (cluster, user, stdin) and its result."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from bbp_notebooks.mockslurm.cluster import Cluster, Identity


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

    async def contact_controller(self) -> bool:
        """An RPC to slurmctld: slow when the controller is slow, failing when it is down."""
        faults = self.cluster.faults
        if faults.controller_down:
            await asyncio.sleep(self.cluster.config.controller_down_delay)
            return False
        if faults.controller_latency > 0:
            await asyncio.sleep(faults.controller_latency)
        return True


CONNECT_FAILURE = "Unable to contact slurm controller (connect failure)"

Handler = Callable[["Context", list[str]], Awaitable[int]]
