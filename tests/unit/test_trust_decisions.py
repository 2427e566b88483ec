"""Pure trust decisions: who a session may run as, whether an endpoint report is accepted, and
how callback tokens are read and checked. One row per case."""
# ruff: noqa: E501  (decision tables read best one row per line)

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from bbp_notebooks.api.models import (
    NotebookProfileSpec,
    NotebookSessionSpec,
    NotebookSessionStatus,
    SlurmSiteSpec,
    SlurmSiteStatus,
)
from bbp_notebooks.api.settings import DEFAULT_PROTECTED_USERS, OperatorSettings
from bbp_notebooks.operator import tokens
from bbp_notebooks.operator.callbacks import (
    EndpointReport,
    Refusal,
    allowed_hosts,
    first_node,
    judge,
)
from bbp_notebooks.operator.planning import (
    InvalidSpec,
    NoSiteAvailable,
    SiteView,
    plan,
    protected_users,
    user_refusal,
)

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)


def site_spec(**extra: Any) -> SlurmSiteSpec:
    return SlurmSiteSpec.model_validate(
        {
            "displayName": "Geneva",
            "frontend": {"host": "127.0.0.21"},
            "hostKeys": {"certificateAuthorities": ["ssh-ed25519 AAAA"]},
            "partitions": [{"name": "prod", "default": True}],
            "monitorUser": "bbpmon",
            **extra,
        }
    )


def site_view(
    name: str = "geneva", *, polled: bool = True, accounts: tuple[str, ...] = (), **extra: Any
) -> SiteView:
    status: dict[str, Any] = {
        "userAccounts": [{"user": u, "accounts": ["proj1"]} for u in accounts]
    }
    if polled:
        status["lastPollTime"] = NOW.isoformat()
        status["conditions"] = [
            {"type": "Reachable", "status": "True", "reason": "Polled", "lastTransitionTime": NOW.isoformat()}
        ]  # fmt: skip
    return SiteView(name, site_spec(**extra), SlurmSiteStatus.model_validate(status))


PROTECTED = protected_users(DEFAULT_PROTECTED_USERS, [site_view()])


# --- who a session may run as ------------------------------------------------------------------

USER_CASES: list[tuple[str, dict[str, Any], str, type[Exception] | None, str]] = [
    # (case, site fields, user, refusal type, words in the message)
    ("an ordinary user", {}, "alice", None, ""),
    ("root", {}, "root", InvalidSpec, "protected account"),
    ("a system account", {}, "daemon", InvalidSpec, "protected account"),
    ("the site's monitor user", {}, "bbpmon", InvalidSpec, "protected account"),
    ("a denied user", {"userPolicy": {"deniedUsers": ["mallory"]}}, "mallory", InvalidSpec, "denied"),
    ("outside the pattern", {"userPolicy": {"allowedPattern": "^[a-z]+[0-9]{3}$"}}, "alice", InvalidSpec, "pattern"),
    ("inside the pattern", {"userPolicy": {"allowedPattern": "^[a-z]+[0-9]{3}$"}}, "abc123", None, ""),
    ("a broken pattern refuses", {"userPolicy": {"allowedPattern": "("}}, "alice", InvalidSpec, "not a valid"),
    ("association required, present", {"userPolicy": {"requireAssociation": True}}, "alice", None, ""),
    ("association required, absent", {"userPolicy": {"requireAssociation": True}}, "carol", InvalidSpec, "association"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "user", "refusal", "words"),
    [c[1:] for c in USER_CASES],
    ids=[c[0] for c in USER_CASES],
)
def test_who_may_run_at_a_site(fields: dict[str, Any], user: str, refusal: type[Exception] | None, words: str) -> None:  # fmt: skip
    found = user_refusal(site_view(accounts=("alice",), **fields), user, PROTECTED)
    if refusal is None:
        assert found is None
    else:
        assert isinstance(found, refusal)
        assert isinstance(found, InvalidSpec) and found.reason == "UserNotAllowed"
        assert words in found.message and repr(user) in found.message


def test_an_association_table_not_known_yet_waits_instead_of_refusing() -> None:
    view = site_view(polled=False, userPolicy={"requireAssociation": True})
    assert isinstance(user_refusal(view, "alice", PROTECTED), NoSiteAvailable)


def test_every_sites_monitor_user_is_protected_everywhere() -> None:
    sites = [site_view("geneva"), site_view("lugano", monitorUser="lugmon")]
    protected = protected_users(["root"], sites)
    assert {"root", "bbpmon", "lugmon"} <= protected
    assert isinstance(user_refusal(sites[0], "lugmon", protected), InvalidSpec)


def test_the_default_protected_users_are_the_settings_default() -> None:
    assert set(OperatorSettings().protected_users) == set(DEFAULT_PROTECTED_USERS)
    assert "root" in DEFAULT_PROTECTED_USERS


PROFILES = {
    "bluepy": NotebookProfileSpec.model_validate({"displayName": "B", "cores": 1, "memoryMiB": 512})
}


def spec(user: str, site: str) -> NotebookSessionSpec:
    return NotebookSessionSpec.model_validate({"user": user, "profile": "bluepy", "site": site})


def test_plan_refuses_a_protected_user_at_a_named_site() -> None:
    with pytest.raises(InvalidSpec) as refused:
        plan(spec("root", "geneva"), PROFILES, {"geneva": site_view()}, None, PROTECTED)
    assert refused.value.reason == "UserNotAllowed"


def test_plan_with_site_auto_picks_only_among_sites_that_take_the_user() -> None:
    sites = {
        "geneva": site_view("geneva", userPolicy={"deniedUsers": ["alice"]}),
        "lugano": site_view("lugano"),
    }
    assert plan(spec("alice", "auto"), PROFILES, sites, None, PROTECTED).site == "lugano"


def test_plan_with_site_auto_refuses_when_no_site_takes_the_user() -> None:
    sites = {"geneva": site_view("geneva"), "lugano": site_view("lugano")}
    with pytest.raises(InvalidSpec) as refused:
        plan(spec("root", "auto"), PROFILES, sites, None, PROTECTED)
    assert refused.value.reason == "UserNotAllowed"


# --- endpoint reports ---------------------------------------------------------------------------

RUNNING = NotebookSessionStatus.model_validate({"phase": "Running", "jobId": 1000001, "site": "geneva", "node": "gva-cn01"})  # fmt: skip


def report(host: str = "gva-cn01", port: int = 8888, job_id: int = 1000001) -> EndpointReport:
    return EndpointReport.model_validate({"host": host, "port": port, "jobId": job_id})


def with_status(**update: Any) -> NotebookSessionStatus:
    return NotebookSessionStatus.model_validate({**RUNNING.model_dump(by_alias=True, mode="json", exclude_none=True), **update})  # fmt: skip


REPORT_CASES: list[tuple[str, dict[str, Any], dict[str, Any], Refusal | None, int]] = [
    # (case, report fields, judge arguments, refusal, HTTP status)
    ("the job's own node", {}, {}, None, 200),
    ("a wrong token", {}, {"token_matches": False}, Refusal.INVALID_TOKEN, 403),
    ("another job's report", {"job_id": 1000002}, {}, Refusal.WRONG_JOB, 403),
    ("a replay after success", {}, {"status": with_status(endpoint={"host": "gva-cn01", "port": 8888, "url": "http://gva-cn01:8888"})}, Refusal.ALREADY_REPORTED, 409),
    ("a foreign host", {"host": "evil.example.org"}, {}, Refusal.FOREIGN_HOST, 403),
    ("another node of the site", {"host": "gva-cn02"}, {}, Refusal.FOREIGN_HOST, 403),
    ("a privileged port", {"port": 22}, {}, Refusal.PRIVILEGED_PORT, 422),
    ("an ended session", {}, {"status": with_status(phase="Completed")}, Refusal.SESSION_ENDED, 409),
    ("before the job id is recorded", {}, {"status": NotebookSessionStatus()}, Refusal.JOB_NOT_RECORDED, 503),
    ("before the node is known", {}, {"node": None}, Refusal.NODE_UNKNOWN, 503),
]  # fmt: skip


@pytest.mark.parametrize(
    ("fields", "overrides", "refusal", "http_status"),
    [c[1:] for c in REPORT_CASES],
    ids=[c[0] for c in REPORT_CASES],
)
def test_an_endpoint_report_is_judged(fields: dict[str, Any], overrides: dict[str, Any], refusal: Refusal | None, http_status: int) -> None:  # fmt: skip
    arguments: dict[str, Any] = {"token_matches": True, "status": RUNNING, "site": site_spec(), "node": "gva-cn01", **overrides}  # fmt: skip
    verdict = judge(report(**fields), **arguments)
    assert verdict.refusal == refusal, verdict.message
    assert verdict.http_status == http_status


@pytest.mark.parametrize(
    ("nodelist", "first"),
    [("gva-cn01", "gva-cn01"), ("gva-cn[07-09,12]", "gva-cn07"), ("gva-cn[3,5]", "gva-cn3"),
     ("a1,b[2-3]", "a1"), ("lug[010-011],x", "lug010")],
)  # fmt: skip
def test_the_batch_host_is_the_first_node_of_slurms_list(nodelist: str, first: str) -> None:
    assert first_node(nodelist) == first


def test_the_node_address_rule_and_notebook_host_decide_the_allowed_address() -> None:
    assert allowed_hosts(site_spec(), "gva-cn[01-02]") == {"gva-cn01"}
    templated = site_spec(nodeAddressTemplate="{node}.hpc.example.org")
    assert allowed_hosts(templated, "gva-cn01") == {"gva-cn01.hpc.example.org"}
    assert allowed_hosts(site_spec(notebookHost="127.0.0.1"), "gva-cn01") == {"127.0.0.1"}


# --- tokens --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer abc-_123", "abc-_123"), (None, None), ("", None), ("Basic abc", None),
     ("Bearer ", None), ("Bearer a b", None), ("Bearer caf\u00e9", None), ("Bearer \u202eabc", None),
     ("Bearer a\tb", None), ("Bearer " + "x" * 600, None)],
)  # fmt: skip
def test_only_a_plain_ascii_bearer_header_yields_a_token(
    header: str | None, token: str | None
) -> None:
    assert tokens.bearer_token(header) == token


def test_a_token_matches_only_its_own_digest() -> None:
    one, two = tokens.new_token(), tokens.new_token()
    assert one != two and len(one) >= 43
    assert tokens.matches(one, tokens.digest(one))
    assert not tokens.matches(two, tokens.digest(one))
    assert not tokens.matches(one, None)
    assert tokens.digest(one) != one and len(tokens.digest(one)) == 64


def test_every_reason_and_condition_type_fits_the_condition_schema() -> None:
    import re

    from bbp_notebooks.api.models import Condition
    from bbp_notebooks.api.vocabulary import ConditionType, Reason

    reason_pattern = Condition.model_fields["reason"].metadata
    patterns = [m.pattern for m in reason_pattern if hasattr(m, "pattern")]
    assert patterns
    for reason in Reason:
        assert re.fullmatch(patterns[0], reason.value), reason
    assert len({r.value for r in Reason}) == len(Reason)
    for type_ in ConditionType:
        assert re.fullmatch(r"[A-Z][A-Za-z0-9]*", type_.value)
