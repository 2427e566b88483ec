"""Waiting with a deadline, for dev tooling and tests: one helper for threads, one for asyncio.

Every wait in the house is ``wait_until(predicate, timeout, what)``: the predicate is asked every
``interval`` seconds until it returns something truthy, which is returned; at the deadline a
``TimeoutError`` names what was awaited and what the predicate last said. An exception from the
predicate ends the wait at once (a child that died is an answer, not a reason to keep asking)
unless its type is in ``retry_on`` (not reachable *yet*).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

T = TypeVar("T")

DEFAULT_INTERVAL_S = 0.1


def wait_until(
    predicate: Callable[[], T | None],
    timeout: float,
    what: str,
    interval: float = DEFAULT_INTERVAL_S,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """``predicate()``'s first truthy value, asked until ``timeout`` seconds have passed."""
    deadline = time.monotonic() + timeout
    last: Any = _NOTHING
    while True:
        try:
            value = predicate()
        except retry_on as error:
            last = _Error(f"{type(error).__name__}: {error}")
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise TimeoutError(_message(timeout, what, last))
        time.sleep(interval)


async def wait_until_async(
    predicate: Callable[[], Awaitable[T | None] | T | None],
    # The same deadline as the sync helper's; asyncio.timeout would cancel a predicate mid-call
    # and lose what it last said.
    timeout: float,  # noqa: ASYNC109
    what: str,
    interval: float = DEFAULT_INTERVAL_S,
    *,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """As :func:`wait_until`, sleeping on the event loop; ``predicate`` may be a coroutine
    function or a plain one."""
    deadline = time.monotonic() + timeout
    last: Any = _NOTHING
    while True:
        try:
            value = predicate()
            if inspect.isawaitable(value):
                value = await value
        except retry_on as error:
            last = _Error(f"{type(error).__name__}: {error}")
        else:
            if value:
                return cast(T, value)
            last = value
        if time.monotonic() >= deadline:
            raise TimeoutError(_message(timeout, what, last))
        await asyncio.sleep(interval)


_NOTHING = object()


class _Error(str):
    """What a retried exception said; the exception itself is dropped at once, because its
    traceback would keep the predicate's frames (and any socket in them) alive."""


def _message(timeout: float, what: str, last: object) -> str:
    message = f"timed out after {timeout:g} s waiting for {what}"
    if isinstance(last, _Error):
        return f"{message}; last error: {last}"
    if last is not _NOTHING:
        return f"{message}; last value: {last!r}"[:2000]
    return message
