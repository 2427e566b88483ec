"""What the hub's home page says about one server (site, node, time left, the operator's notice)
and how far a user may extend it. Pure: the handlers read the session and the profile and call in.

Time left comes from ``status.expectedEndTime``; an operator that does not write it yet still has
``startTime`` + ``timeLimitMinutes``. Every field may be missing: the card then says less.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from bbp_notebooks.api.vocabulary import ConditionType, Reason

# The one question the Extend button asks: one more hour, never beyond the profile's maximum.
DEFAULT_EXTENSION_MINUTES = 60


class ExtensionRefused(ValueError):
    """An extension the policy does not allow; the message says why, for the user."""


@dataclass(frozen=True)
class Card:
    server: str
    phase: str | None
    site: str | None
    node: str | None
    job_id: int | None
    time_limit_minutes: int | None  # what Slurm runs with now (status)
    requested_time_limit_minutes: int | None  # what the hub asked for (spec), if it asked
    max_time_limit_minutes: int | None
    expected_end_time: str | None
    seconds_left: int | None
    notice: str | None  # the operator's TimeLimit condition when it warns or refused
    notice_reason: str | None
    extensible: bool
    shared_with: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        body = asdict(self)
        body["shared_with"] = list(self.shared_with)
        return body


def _parse_time(value: Any) -> dt.datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def requested_limit(session: Mapping[str, Any]) -> int | None:
    resources = (session.get("spec") or {}).get("resources") or {}
    return _int(resources.get("timeLimitMinutes"))


def expected_end(status: Mapping[str, Any]) -> dt.datetime | None:
    """The operator's expectedEndTime, else startTime + timeLimitMinutes while the job runs."""
    end = _parse_time(status.get("expectedEndTime"))
    if end is not None:
        return end
    start, limit = _parse_time(status.get("startTime")), _int(status.get("timeLimitMinutes"))
    if start is None or limit is None or status.get("endTime"):
        return None
    return start + dt.timedelta(minutes=limit)


def card(
    server: str,
    session: Mapping[str, Any] | None,
    *,
    now: dt.datetime,
    max_time_limit_minutes: int | None,
    shared_with: tuple[str, ...] = (),
) -> Card:
    """The card of ``server`` from its raw NotebookSession (None: no session, e.g. stopped)."""
    status: Mapping[str, Any] = (session or {}).get("status") or {}
    phase = _str(status.get("phase"))
    end = expected_end(status)
    notice = reason = None
    for condition in status.get("conditions") or []:
        if not isinstance(condition, Mapping) or condition.get("type") != ConditionType.TIME_LIMIT:
            continue
        if condition.get("reason") in (Reason.ENDING_SOON, Reason.EXTENSION_REFUSED):
            reason = str(condition["reason"])
            notice = _str(condition.get("message")) or reason
    return Card(
        server=server,
        phase=phase,
        site=_str(status.get("site")) or _str(((session or {}).get("spec") or {}).get("site")),
        node=_str(status.get("node")),
        job_id=_int(status.get("jobId")),
        time_limit_minutes=_int(status.get("timeLimitMinutes")),
        requested_time_limit_minutes=requested_limit(session or {}),
        max_time_limit_minutes=max_time_limit_minutes,
        expected_end_time=end.isoformat().replace("+00:00", "Z") if end else None,
        seconds_left=max(0, int((end - now).total_seconds())) if end else None,
        notice=notice,
        notice_reason=reason,
        extensible=session is not None and phase in ("Running", "Ready"),
        shared_with=shared_with,
    )


def extended_limit(
    session: Mapping[str, Any],
    *,
    default_time_limit_minutes: int,
    max_time_limit_minutes: int,
    minutes: int = DEFAULT_EXTENSION_MINUTES,
    target: int | None = None,
) -> int:
    """The new spec.resources.timeLimitMinutes: ``target`` when given, else ``minutes`` more
    (capped at the profile's maximum); ExtensionRefused when the policy does not allow it."""
    if minutes < 1:
        raise ExtensionRefused("ask for at least one more minute")
    status = session.get("status") or {}
    if status.get("phase") not in ("Running", "Ready"):
        raise ExtensionRefused("only a running notebook can be extended")
    # The larger of what was asked and what Slurm runs with: a second click adds to the first.
    current = (
        max(
            requested_limit(session) or 0,
            _int(status.get("timeLimitMinutes")) or 0,
        )
        or default_time_limit_minutes
    )
    if target is not None:
        if target > max_time_limit_minutes:
            raise ExtensionRefused(
                f"{target} min is more than this profile allows ({max_time_limit_minutes} min)"
            )
        if target <= current:
            raise ExtensionRefused(
                f"the time limit is already {current} min; an extension can only raise it"
            )
        return target
    if current >= max_time_limit_minutes:
        raise ExtensionRefused(
            f"the time limit is already {current} min, the most this profile allows "
            f"({max_time_limit_minutes} min)"
        )
    return min(current + minutes, max_time_limit_minutes)


def as_json(cards: list[Card]) -> list[dict[str, Any]]:
    return [c.as_json() for c in cards]
