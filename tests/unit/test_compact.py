"""compact.share_fields_sets: parsed sessions share pydantic's fields-set bookkeeping, and
nothing about the models changes but its memory."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

import pytest

from bbp_notebooks.api.models import NotebookSessionStatus, dump
from bbp_notebooks.operator import compact
from bbp_notebooks.operator.handlers import session_ref
from bbp_notebooks.operator.sessions import SessionRef

NOW = "2026-12-02T05:00:00Z"


def body(uid: str, job_id: int = 12345) -> dict[str, Any]:
    def condition(kind: str, reason: str) -> dict[str, Any]:
        return {
            "type": kind, "status": "True", "reason": reason,
            "message": f"job {job_id} {reason} at geneva", "lastTransitionTime": NOW,
            "observedGeneration": 1,
        }  # fmt: skip

    return {
        "metadata": {
            "uid": uid, "namespace": "bench", "name": f"s-{uid}", "generation": 1,
            "creationTimestamp": NOW,
        },  # fmt: skip
        "spec": {"user": "alice", "profile": "bluepy", "site": "geneva", "account": "proj-b"},
        "status": {
            "phase": "Pending", "jobId": job_id, "site": "geneva",
            "message": f"job {job_id} is pending (Priority)",
            "queue": {"reason": "Priority", "position": 3},
            "conditions": [
                condition("Submitted", "Submitted"), condition("JobRunning", "Pending"),
                condition("Ready", "NotReady"), condition("CredentialsValid", "Certificate"),
            ],
            "observedGeneration": 1,
        },
    }  # fmt: skip


def test_two_sessions_share_one_set_per_model_and_dump_as_before() -> None:
    a, b = session_ref(body("a", 1)), session_ref(body("b", 2))
    assert a.status.model_fields_set is b.status.model_fields_set
    assert a.status.conditions[0].model_fields_set is b.status.conditions[3].model_fields_set
    assert a.spec.model_fields_set is b.spec.model_fields_set
    plain = NotebookSessionStatus.model_validate(body("a", 1)["status"])
    assert dump(a.status) == dump(plain)
    assert a.status.model_dump(exclude_unset=True) == plain.model_dump(exclude_unset=True)
    assert a.status.model_fields_set == plain.model_fields_set


def test_a_copy_with_updates_leaves_the_shared_set_alone() -> None:
    a, b = session_ref(body("a")), session_ref(body("b"))
    before = set(b.status.model_fields_set)
    changed = a.status.model_copy(update={"node": "gva-cn07"})
    deep = a.status.model_copy(update={"node": "gva-cn08"}, deep=True)
    assert "node" in changed.model_fields_set and "node" in deep.model_fields_set
    assert "node" not in a.status.model_fields_set
    assert b.status.model_fields_set == before


def test_changing_a_shared_model_in_place_is_refused_loudly() -> None:
    a, b = session_ref(body("a")), session_ref(body("b"))
    with pytest.raises(TypeError, match="never changed in place"):
        a.status.node = "gva-cn07"
    assert "node" not in b.status.model_fields_set


def test_a_parsed_session_takes_at_least_3_kB_less(monkeypatch: pytest.MonkeyPatch) -> None:
    def per_session() -> float:
        texts = [json.dumps(body(f"{i:08d}")) for i in range(500)]
        kept: list[SessionRef] = []
        tracemalloc.start()
        try:
            before = tracemalloc.take_snapshot()
            kept.extend(session_ref(json.loads(t)) for t in texts)
            after = tracemalloc.take_snapshot()
        finally:
            tracemalloc.stop()
        return sum(s.size_diff for s in after.compare_to(before, "filename")) / len(kept)

    shared = per_session()
    monkeypatch.setattr("bbp_notebooks.operator.handlers.share_fields_sets", lambda _: None)
    unshared = per_session()
    print(f"\nparsed session: {unshared:.0f} B, {shared:.0f} B with shared fields sets")
    assert unshared - shared > 3000
    assert len(compact._SHARED) < 50  # a few combinations of names, not one per session
