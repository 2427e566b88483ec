"""Waiting is progress: kopf's "failed temporarily" ERROR for a handler that only waits is
logged at INFO and not posted as an Event; a real failure stays an ERROR."""

from __future__ import annotations

import logging

import pytest

from bbp_notebooks.operator import logs


@pytest.mark.parametrize(
    ("message", "level"),
    [
        (
            f"Handler 'cancel' failed temporarily: {logs.WAITING} Slurm to end the job: 7",
            logging.INFO,
        ),
        (
            f"Handler 'submit' failed temporarily: {logs.WAITING} the environment Secret: x",
            logging.INFO,
        ),
        ("Handler 'cancel' failed temporarily: job not cancelled yet: geneva: down", logging.ERROR),
        ("Handler 'submit' failed with an exception. Will retry.", logging.ERROR),
    ],
)
def test_only_waits_are_lowered(message: str, level: int, caplog: pytest.LogCaptureFixture) -> None:
    logs.install()
    logs.install()  # idempotent
    logger = logging.getLogger("kopf.objects")
    assert sum(isinstance(f, logs.WaitingIsProgress) for f in logger.filters) == 1
    with caplog.at_level(logging.DEBUG, logger="kopf.objects"):
        logger.error(message)
    (record,) = caplog.records
    assert record.levelno == level
