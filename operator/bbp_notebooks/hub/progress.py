"""What the hub tells the user about a session: progress messages and poll() exit statuses. Pure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from bbp_notebooks.api.models import (
    ConditionStatus,
    NotebookSessionStatus,
    SessionPhase,
)
from bbp_notebooks.api.vocabulary import ConditionType

SITE_REACHABLE = ConditionType.SITE_REACHABLE


@dataclass(frozen=True)
class Progress:
    """One event of JupyterHub's progress stream."""

    percent: int
    message: str
    ready: bool = False

    def as_event(self) -> dict[str, object]:
        # Never "ready": that key makes the spawn page leave before the hub has checked the
        # server and added its proxy route; the hub sends its own ready event then.
        return {"progress": self.percent, "message": self.message}


def site_unreachable(status: NotebookSessionStatus) -> str | None:
    """The operator's message when it could not reach the session's site, else None."""
    condition = next((c for c in status.conditions if c.type == SITE_REACHABLE), None)
    if condition is not None and condition.status == ConditionStatus.FALSE:
        return condition.message or "the site is not answering"
    return None


def describe(status: NotebookSessionStatus, site_label: Callable[[str], str]) -> Progress:
    """A human message for the current status; ``site_label`` maps a site name to its display."""
    site = site_label(status.site) if status.site else "the cluster"
    job = f" (Slurm job {status.job_id})" if status.job_id is not None else ""
    unreachable = site_unreachable(status)
    phase = status.phase or SessionPhase.PENDING

    if phase == SessionPhase.PENDING:
        if unreachable:
            return Progress(10, f"Waiting to submit: {unreachable}")
        if status.message:  # e.g. a lost sbatch answer being looked up, a missing policy
            return Progress(10, f"Waiting to submit: {status.message}")
        return Progress(10, "Session created; waiting for the operator to submit the job")
    if phase == SessionPhase.QUEUED:
        message = f"Queued at {site}{job}"
        queue = status.queue
        if queue is not None and queue.reason and queue.reason != "None":
            message += f": {queue.reason}"
        if queue is not None and queue.estimated_start is not None:
            message += f", expected to start around {queue.estimated_start:%Y-%m-%d %H:%M %Z}"
        if unreachable:
            message += f" — {site} is not answering right now; the job keeps its place"
        return Progress(30, message)
    if phase == SessionPhase.RUNNING:
        node = status.node or "a compute node"
        message = f"Starting the notebook on {node} at {site}{job}"
        if unreachable:
            message += f" — {site} is not answering right now"
        return Progress(70, message)
    if phase == SessionPhase.READY:
        node = status.node or "a compute node"
        return Progress(100, f"Notebook ready on {node} at {site}{job}", ready=True)
    return Progress(100, f"{phase.value}: {status.message or 'the session ended'}")


def exit_status(status: NotebookSessionStatus) -> int | None:
    """poll()'s answer: None while the session may still be serving or about to (including when
    its site does not answer: "could not ask" is not "gone"), 0 for a clean end, 1 otherwise."""
    phase = status.phase
    if phase is None or not phase.is_terminal:
        return None
    return 0 if phase == SessionPhase.COMPLETED else 1
