"""The operator's one test seam (like etcd's gofail): named points in the code where a test can
make the process die, to prove that a crash there loses nothing. Off unless the setting
``failpoints`` (BBP_FAILPOINTS) names a point; the chart never sets it.

Points:
- ``after-sbatch``: right after sbatch returned a job id, before the status records it.
- ``after-spark-sbatch``: the same for a PySpark session's second job (its Spark cluster).
"""

from __future__ import annotations

import logging
import os

from bbp_notebooks.api.settings import OperatorSettings

log = logging.getLogger(__name__)

POINTS = frozenset({"after-sbatch", "after-spark-sbatch"})
_armed: frozenset[str] = frozenset()


def arm(settings: OperatorSettings) -> None:
    """Arm the points the settings name (called once at startup); unknown names are refused."""
    global _armed
    unknown = set(settings.failpoints) - POINTS
    if unknown:
        raise ValueError(f"unknown failpoints {sorted(unknown)}; known: {sorted(POINTS)}")
    _armed = frozenset(settings.failpoints)


def reached(point: str, **context: object) -> None:
    """Die here, as a SIGKILL would, when ``point`` is armed; otherwise nothing."""
    if point in _armed:
        log.error("failpoint %s reached (%s): exiting", point, context)
        os._exit(137)
