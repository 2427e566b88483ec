"""The home page's card of a server and the Extend policy, from raw sessions (pure)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from bbp_notebooks.hub import cards

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def session(status: dict[str, Any], requested: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"profile": "bluepy", "site": "geneva"}
    if requested is not None:
        spec["resources"] = {"timeLimitMinutes": requested}
    return {"metadata": {"name": "s"}, "spec": spec, "status": status}


RUNNING = {"phase": "Ready", "site": "geneva", "node": "gva-cn1", "jobId": 7,
           "startTime": "2026-12-01T11:30:00Z", "timeLimitMinutes": 60}  # fmt: skip


def test_time_left_comes_from_expected_end_time_when_the_operator_reports_it() -> None:
    card = cards.card("", session({**RUNNING, "expectedEndTime": "2026-12-01T13:00:00Z"}),
                      now=NOW, max_time_limit_minutes=480)  # fmt: skip
    assert (card.site, card.node, card.job_id) == ("geneva", "gva-cn1", 7)
    assert card.seconds_left == 3600 and card.expected_end_time == "2026-12-01T13:00:00Z"
    assert card.extensible and card.notice is None


def test_without_expected_end_time_time_left_is_start_plus_limit() -> None:
    card = cards.card("", session(RUNNING), now=NOW, max_time_limit_minutes=480)
    assert card.seconds_left == 1800 and card.expected_end_time == "2026-12-01T12:30:00Z"


def test_a_queued_or_unknown_session_has_no_time_left_and_cannot_be_extended() -> None:
    card = cards.card("x", session({"phase": "Pending"}), now=NOW, max_time_limit_minutes=None)
    assert card.seconds_left is None and not card.extensible and card.site == "geneva"
    assert cards.card("x", None, now=NOW, max_time_limit_minutes=None).phase is None


def test_the_operators_warning_and_refusal_become_the_notice() -> None:
    warned = {**RUNNING, "conditions": [{"type": "TimeLimit", "status": "True",
              "reason": "EndingSoon", "message": "ends in 14 min"}]}  # fmt: skip
    card = cards.card("", session(warned), now=NOW, max_time_limit_minutes=480)
    assert (card.notice, card.notice_reason) == ("ends in 14 min", "EndingSoon")
    calm = {**RUNNING, "conditions": [{"type": "TimeLimit", "status": "True",
            "reason": "TimeRemaining", "message": "50 min left"}]}  # fmt: skip
    assert cards.card("", session(calm), now=NOW, max_time_limit_minutes=480).notice is None


def test_an_extension_adds_to_the_larger_of_the_requested_and_the_current_limit() -> None:
    limits = {"default_time_limit_minutes": 60, "max_time_limit_minutes": 480}
    assert cards.extended_limit(session(RUNNING), **limits) == 120
    assert cards.extended_limit(session(RUNNING, requested=120), **limits) == 180
    assert cards.extended_limit(session(RUNNING, requested=450), **limits) == 480  # capped
    assert cards.extended_limit(session(RUNNING), target=300, **limits) == 300


@pytest.mark.parametrize(
    ("status", "requested", "target", "why"),
    [
        (RUNNING, 480, None, "already 480 min, the most this profile allows (480 min)"),
        (RUNNING, None, 481, "481 min is more than this profile allows (480 min)"),
        (RUNNING, None, 30, "can only raise it"),
        ({"phase": "Pending"}, None, None, "only a running notebook"),
    ],
)
def test_an_extension_beyond_the_profile_or_of_a_stopped_server_is_refused_with_a_reason(
    status: dict[str, Any], requested: int | None, target: int | None, why: str
) -> None:
    with pytest.raises(cards.ExtensionRefused, match=why.replace("(", r"\(").replace(")", r"\)")):
        cards.extended_limit(session(status, requested), default_time_limit_minutes=60,
                             max_time_limit_minutes=480, target=target)  # fmt: skip
