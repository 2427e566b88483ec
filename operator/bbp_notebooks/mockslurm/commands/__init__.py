"""The Slurm commands a login node offers (and `tail -c` for job output), and the shell-less
dispatcher that runs them.

A command line is split with shlex (never handed to a shell); its first word picks a handler.
Anything else is answered the way bash would: "command not found", exit 127.
"""

from __future__ import annotations

import logging
import os
import shlex

from bbp_notebooks.mockslurm.commands import (
    sacct,
    sacctmgr,
    sbatch,
    scancel,
    scontrol,
    sinfo,
    squeue,
    tail,
)
from bbp_notebooks.mockslurm.commands.base import CommandResult, Context, Handler

log = logging.getLogger(__name__)

HANDLERS: dict[str, Handler] = {
    "sbatch": sbatch.main,
    "squeue": squeue.main,
    "sacct": sacct.main,
    "scancel": scancel.main,
    "sinfo": sinfo.main,
    "scontrol": scontrol.main,
    "sacctmgr": sacctmgr.main,
    "tail": tail.main,  # the end of a job's output file, for the operator's log tail
}
SEARCH_PATH = ("/usr/local/bin", "/usr/bin", "/bin", "/usr/local/sbin", "/usr/sbin", "/sbin")


def resolve(word: str) -> str | None:
    """Like bash's PATH lookup, restricted to the Slurm commands this node has."""
    if "/" not in word:
        return word if word in HANDLERS else None
    directory, _, name = word.rpartition("/")
    if name in HANDLERS and os.path.normpath(directory or "/") in SEARCH_PATH:
        return name
    return None


async def execute(context: Context, command_line: str) -> CommandResult:
    try:
        argv = shlex.split(command_line, comments=True)
    except ValueError:
        quote = "'" if command_line.count("'") % 2 else '"'
        return CommandResult(
            2,
            "",
            f"bash: -c: line 1: unexpected EOF while looking for matching `{quote}'\n",
        )
    if not argv:
        return CommandResult(0)
    name = resolve(argv[0])
    if name is None:
        context.cluster.command_counts["<not found>"] += 1
        return CommandResult(127, "", f"bash: {argv[0]}: command not found\n")
    context.cluster.command_counts[name] += 1
    log.debug("%s: %s runs %s", context.cluster.config.name, context.user.name, name)
    status = await HANDLERS[name](context, argv[1:])
    return context.result(status)


__all__ = ["HANDLERS", "CommandResult", "Context", "execute", "resolve"]
