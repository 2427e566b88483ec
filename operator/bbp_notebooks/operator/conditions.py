"""Kubernetes-style conditions: set one, keep lastTransitionTime when the status does not change."""

from __future__ import annotations

import datetime as dt

from bbp_notebooks.api.models import Condition, ConditionStatus
from bbp_notebooks.api.vocabulary import ConditionType, Reason

SESSION_CONDITIONS = (
    ConditionType.SUBMITTED,
    ConditionType.RUNNING,
    ConditionType.READY,
    ConditionType.SITE_REACHABLE,
)


def get(conditions: list[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def is_true(conditions: list[Condition], type_: str) -> bool:
    condition = get(conditions, type_)
    return condition is not None and condition.status == ConditionStatus.TRUE


def set_condition(
    conditions: list[Condition],
    type_: str,
    status: ConditionStatus | bool,
    reason: str,
    message: str,
    *,
    now: dt.datetime,
    generation: int | None,
) -> list[Condition]:
    """A new list with ``type_`` set; its transition time moves only when its status changes."""
    if isinstance(status, bool):
        status = ConditionStatus.TRUE if status else ConditionStatus.FALSE
    previous = get(conditions, type_)
    changed = previous is None or previous.status != status
    updated = Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=now if changed or previous is None else previous.last_transition_time,
        observed_generation=generation,
    )
    result = [c for c in conditions if c.type != type_]
    result.append(updated)
    order: dict[str, int] = {name: index for index, name in enumerate(SESSION_CONDITIONS)}
    return sorted(result, key=lambda c: order.get(c.type, len(order)))


def ensure_all(
    conditions: list[Condition],
    types: tuple[str, ...],
    *,
    now: dt.datetime,
    generation: int | None,
) -> list[Condition]:
    """Every condition present, as Unknown when nothing is known yet (set on the first visit)."""
    for type_ in types:
        if get(conditions, type_) is None:
            conditions = set_condition(
                conditions,
                type_,
                ConditionStatus.UNKNOWN,
                Reason.NOT_YET_OBSERVED,
                "",
                now=now,
                generation=generation,
            )
    return conditions
