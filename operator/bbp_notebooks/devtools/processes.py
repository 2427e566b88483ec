"""Child processes of dev tooling and tests: started with a log file in a process group of their
own, stopped with SIGTERM then SIGKILL after a grace period, always reaped.

A session of its own keeps Ctrl-C in a terminal away from the children: only the parent
(``make dev``, pytest) gets it, and it stops them in order. :func:`stop_pid` does the same for a
process recorded by PID (an earlier ``up --detach``, a daemon in a state file), where the caller
says how to tell that the PID still is the process it recorded.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

STOP_GRACE_S = 15.0
KILL_WAIT_S = 10.0
LOG_TAIL_CHARS = 4000


class ChildExited(RuntimeError):
    """A child that should be running has exited; the message ends with its log's tail."""


@dataclass
class Child:
    """One started child; ``process`` is the Popen (its ``pid`` leads the process group)."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def returncode(self) -> int | None:
        return self.process.poll()

    def running(self) -> bool:
        return self.process.poll() is None

    def check_alive(self) -> bool:
        """True while running; raises :class:`ChildExited` (with the log's tail) once it is not."""
        if (status := self.process.poll()) is not None:
            raise ChildExited(f"{self.name} exited with status {status}:\n{self.log_tail()}")
        return True

    def log_tail(self, chars: int = LOG_TAIL_CHARS) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return f"({self.log_path} unreadable)"

    def stop(self, grace: float = STOP_GRACE_S, kill_wait: float = KILL_WAIT_S) -> int | None:
        """SIGTERM the group, SIGKILL it after ``grace`` s; returns the exit status (None if it
        outlived SIGKILL by ``kill_wait`` s)."""
        if self.running():
            stop_pid(self.pid, running=self.running, grace=grace, kill_wait=kill_wait, group=True)
        return self.process.poll()

    def kill(self, kill_wait: float = KILL_WAIT_S) -> int | None:
        """SIGKILL the group at once: no cleanup, as a crashed node would."""
        if self.running():
            stop_pid(self.pid, running=self.running, grace=0, kill_wait=kill_wait, group=True)
        return self.process.poll()


def start(
    name: str,
    argv: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    banner: str | None = None,
) -> Child:
    """Start ``argv`` with stdout and stderr appended to ``log_path`` (``banner`` first, if any)
    and stdin from /dev/null, in a new session."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        if banner is not None:
            log.write(f"\n===== {banner} =====\n".encode())
            log.flush()
        process = subprocess.Popen(
            list(argv),
            cwd=cwd,
            env=dict(env) if env is not None else None,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return Child(name, process, log_path)


def stop_pid(
    pid: int,
    *,
    running: Callable[[], bool],
    grace: float = STOP_GRACE_S,
    kill_wait: float = KILL_WAIT_S,
    group: bool = False,
) -> bool:
    """SIGTERM ``pid`` (its process group with ``group``), wait up to ``grace`` s for
    ``running()`` to turn false, then SIGKILL and wait up to ``kill_wait`` s. ``running`` must
    also say false once the PID is no longer the recorded process (PIDs are reused); a child of
    the caller is reaped by it (``Popen.poll``). True when the process is gone."""
    send = os.killpg if group else os.kill
    for signum, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, kill_wait)):
        if not running():
            return True
        if wait <= 0 and signum == signal.SIGTERM:
            continue  # straight to SIGKILL
        with contextlib.suppress(ProcessLookupError):
            send(pid, signum)
        deadline = time.monotonic() + wait
        while running() and time.monotonic() < deadline:
            time.sleep(0.05)
    return not running()
