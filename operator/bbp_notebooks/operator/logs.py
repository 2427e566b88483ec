"""What the operator's log says about waiting. kopf logs every retried handler at ERROR ("failed
temporarily") and posts it as an Event; a handler that is only waiting (for Slurm to end a
job, for the hub to own a Secret, for a lost sbatch answer to settle) is making progress, so
its retries are logged at INFO and posted nowhere. Real failures keep kopf's ERROR."""

from __future__ import annotations

import logging

# Start a kopf.TemporaryError's message with this when the retry is a wait, not a failure.
WAITING = "waiting for"
_MARK = f"failed temporarily: {WAITING} "


class WaitingIsProgress(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and _MARK in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


def install() -> None:
    """On kopf's per-object logger, ahead of its handlers (console and the Event poster)."""
    logger = logging.getLogger("kopf.objects")
    if not any(isinstance(f, WaitingIsProgress) for f in logger.filters):
        logger.addFilter(WaitingIsProgress())
