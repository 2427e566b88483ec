"""The ssh layer's exceptions: asyncssh and Slurm failures are translated into these once, here.

Two families matter to callers:
- ``SiteUnavailable`` (and its subclasses): we could not ask. Retry later; never read it as an
  answer ("job gone", "job failed").
- everything else: an answer we did not want (bad credentials, a host key that does not match, a
  command that ran and failed).

``HostKeyMismatch`` is deliberately *not* a ``SiteUnavailable``: a caller that quietly retries
unreachable sites must not quietly retry a possible man-in-the-middle.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "AnswerLost",
    "AuthenticationFailed",
    "CommandFailed",
    "CommandTimeout",
    "HostKeyMismatch",
    "SiteUnavailable",
    "SlurmControllerUnavailable",
    "SshError",
    "SubmissionRejected",
    "error_for_exit",
    "may_have_run",
]


class SshError(Exception):
    """Base of every error the ssh layer raises."""

    outcome = "error"

    def __init__(self, site: str, message: str) -> None:
        super().__init__(f"{site}: {message}")
        self.site = site


class SiteUnavailable(SshError):
    """Connection refused, timed out or dropped: the site could not be asked."""

    outcome = "site_unavailable"


class AnswerLost(SiteUnavailable):
    """The command started but its answer never came (connection lost, channel closed without
    an exit status): it may have done its work. Like a CommandTimeout after it started."""

    outcome = "answer_lost"


def may_have_run(error: SshError) -> bool:
    """Whether a command that raised ``error`` may nevertheless have run (so a submit must be
    looked for before it is repeated)."""
    return isinstance(error, AnswerLost) or (isinstance(error, CommandTimeout) and error.started)


class AuthenticationFailed(SshError):
    """The frontend refused our credentials (unknown user, expired certificate, wrong CA)."""

    outcome = "authentication_failed"


class HostKeyMismatch(SshError):
    """The frontend's host key is not the one we were told to trust. Never accepted silently."""

    outcome = "host_key_mismatch"


class CommandTimeout(SiteUnavailable):
    """The command did not finish within its deadline.

    ``started`` tells whether the command may have run: a submit that timed out after it started
    may have created a job, so the caller must look for it by tag before submitting again.
    """

    outcome = "timeout"

    def __init__(self, site: str, argv0: str, seconds: float, *, started: bool) -> None:
        state = "after it started" if started else "before it started"
        super().__init__(site, f"{argv0} timed out after {seconds:g} s ({state})")
        self.argv0 = argv0
        self.started = started


class CommandFailed(SshError):
    """The command ran and exited with a non-zero status."""

    outcome = "failed"

    def __init__(self, site: str, argv0: str, exit_status: int, stderr: str) -> None:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else "(no stderr)"
        super().__init__(site, f"{argv0} exited with status {exit_status}: {detail[:300]}")
        self.argv0 = argv0
        self.exit_status = exit_status
        self.stderr = stderr


class SubmissionRejected(CommandFailed):
    """sbatch ran and Slurm refused the job (invalid account, partition, QOS, time limit, node
    count...): an answer, final for this spec. ``reason`` is Slurm's own words."""

    outcome = "rejected"

    def __init__(self, site: str, argv0: str, exit_status: int, stderr: str) -> None:
        super().__init__(site, argv0, exit_status, stderr)
        lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
        # "sbatch: error: Batch job submission failed: Invalid account ..." -> what follows.
        last = lines[-1] if lines else f"sbatch exited with status {exit_status}"
        self.reason = last.split("Batch job submission failed:", 1)[-1].strip()[:1000]


class SlurmControllerUnavailable(SiteUnavailable):
    """The frontend answered but slurmctld did not: the Slurm command could not ask either."""

    outcome = "controller_unavailable"

    def __init__(self, site: str, argv0: str, exit_status: int, stderr: str) -> None:
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else ""
        super().__init__(site, f"{argv0}: Slurm controller unavailable: {detail[:300]}")
        self.argv0 = argv0
        self.exit_status = exit_status
        self.stderr = stderr


# What Slurm clients print when slurmctld (or slurmdbd) cannot be reached; case-insensitive.
_CONTROLLER_DOWN = (
    "unable to contact slurm controller",
    "socket timed out",
    "slurm_persist_conn_open_without_init",
    "problem talking to the database",
    "slurmctld not responding",
    "slurm backup controller in standby mode",
)


def error_for_exit(site: str, argv: Sequence[str], exit_status: int, stderr: str) -> SshError:
    """The exception for a command that exited non-zero: controller trouble or a plain failure."""
    argv0 = argv[0] if argv else "?"
    lowered = stderr.lower()
    if any(marker in lowered for marker in _CONTROLLER_DOWN):
        return SlurmControllerUnavailable(site, argv0, exit_status, stderr)
    return CommandFailed(site, argv0, exit_status, stderr)
