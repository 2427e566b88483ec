"""Where a deleted session's job may be (sessions.plan_cancel): one row per case. A delete that
needs no ssh must not make any; one whose site is gone must say so."""
# ruff: noqa: E501  (the decision table reads best one row per line)

from __future__ import annotations

from typing import Any

import pytest

from bbp_notebooks.api.models import (
    NotebookSessionSpec,
    NotebookSessionStatus,
    SlurmSiteSpec,
    SlurmSiteStatus,
)
from bbp_notebooks.operator.planning import SiteView, protected_users
from bbp_notebooks.operator.sessions import SiteGone, plan_cancel

DIGEST = "0" * 64


def view(name: str) -> SiteView:
    spec = SlurmSiteSpec.model_validate(
        {
            "displayName": name,
            "frontend": {"host": "127.0.0.21"},
            "hostKeys": {"certificateAuthorities": ["ssh-ed25519 AAAA"]},
            "partitions": [{"name": "prod", "default": True}],
            "monitorUser": "bbpmon",
        }
    )
    return SiteView(name, spec, SlurmSiteStatus())


SITES = {"geneva": view("geneva"), "lugano": view("lugano")}
PROTECTED = protected_users(["root"], SITES.values())

CASES: list[tuple[str, dict[str, Any], dict[str, Any], list[str] | type[Exception]]] = [
    # (case, status, spec fields, sites to look at, or the error)
    ("never submitted (no token digest)", {"phase": "Pending"}, {}, []),
    ("refused before any job", {"phase": "InvalidSpec", "callbackTokenSHA256": DIGEST}, {}, []),
    ("sbatch refused (no job id)", {"phase": "Failed", "callbackTokenSHA256": DIGEST}, {"site": "geneva"}, ["geneva"]),
    ("job completed", {"phase": "Completed", "jobId": 7, "site": "geneva", "callbackTokenSHA256": DIGEST}, {}, []),
    ("job cancelled", {"phase": "Cancelled", "jobId": 7, "site": "geneva", "callbackTokenSHA256": DIGEST}, {}, []),
    ("job timed out", {"phase": "Timeout", "jobId": 7, "site": "geneva", "callbackTokenSHA256": DIGEST}, {}, []),
    ("job vanished: may still run", {"phase": "Failed", "jobId": 7, "site": "geneva", "callbackTokenSHA256": DIGEST}, {}, ["geneva"]),
    ("running at a site", {"phase": "Ready", "jobId": 7, "site": "lugano", "callbackTokenSHA256": DIGEST}, {}, ["lugano"]),
    ("crash after sbatch, site chosen by spec", {"phase": "Pending", "callbackTokenSHA256": DIGEST}, {"site": "geneva"}, ["geneva"]),
    ("crash after sbatch, site auto", {"phase": "Pending", "callbackTokenSHA256": DIGEST}, {"site": "auto"}, ["geneva", "lugano"]),
    ("the job's site was deleted", {"phase": "Ready", "jobId": 7, "site": "zurich", "callbackTokenSHA256": DIGEST}, {}, SiteGone),
    ("a protected user: never logged in as", {"phase": "Pending", "callbackTokenSHA256": DIGEST}, {"user": "root", "site": "geneva"}, []),
]  # fmt: skip


@pytest.mark.parametrize(
    ("status", "spec", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES]
)
def test_where_a_deleted_sessions_job_is_looked_for(status: dict[str, Any], spec: dict[str, Any], expected: list[str] | type[Exception]) -> None:  # fmt: skip
    session_spec = NotebookSessionSpec.model_validate(
        {"user": "alice", "profile": "p", "site": "geneva", **spec}
    )
    session_status = NotebookSessionStatus.model_validate(status)
    if isinstance(expected, type):
        with pytest.raises(expected):
            plan_cancel(session_status, session_spec, SITES, PROTECTED)
        return
    found = plan_cancel(session_status, session_spec, SITES, PROTECTED)
    assert [s.name for s in found.sites] == expected
    assert bool(found.why_none) == (not expected)
