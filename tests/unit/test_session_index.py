"""The operator's own session index (sessions.SessionIndex): filled by the startup LIST, kept by
watch events, and rid of a listed session that went before the watch began."""

from __future__ import annotations

import datetime as dt

from bbp_notebooks.api.models import NotebookSessionSpec, NotebookSessionStatus
from bbp_notebooks.operator.sessions import SessionIndex, SessionRef

NOW = dt.datetime(2026, 12, 2, 10, 0, tzinfo=dt.UTC)


def ref(uid: str, job_id: int | None = None) -> SessionRef:
    return SessionRef(
        uid=uid,
        namespace="default",
        name=f"s-{uid}",
        generation=1,
        created=NOW,
        spec=NotebookSessionSpec(user="alice", profile="bluepy", site="geneva"),
        status=NotebookSessionStatus(job_id=job_id),
    )


def test_a_watch_event_is_never_replaced_by_the_listed_version() -> None:
    index = SessionIndex()
    index.put(ref("a", job_id=2))
    index.put_listed(ref("a", job_id=None))
    found = index.get("a")
    assert found is not None and found.status.job_id == 2
    assert index.provisional == 0


def test_a_listed_entry_is_provisional_until_an_event_confirms_it() -> None:
    index = SessionIndex()
    index.put_listed(ref("a"))
    index.put_listed(ref("b"))
    assert (len(index), index.provisional) == (2, 2)
    index.put(ref("a", job_id=7))
    assert index.provisional == 1
    found = index.get("a")
    assert found is not None and found.status.job_id == 7


def test_only_provisional_entries_a_later_list_lacks_are_forgotten() -> None:
    index = SessionIndex()
    index.put_listed(ref("listed-and-gone"))
    index.put_listed(ref("listed-and-there"))
    index.put_listed(ref("confirmed"))
    index.put(ref("confirmed"))
    index.put(ref("created-since"))
    # The later list has neither the gone session nor (watch lag) the confirmed or new ones:
    # only what nothing but the startup LIST vouched for is dropped.
    assert index.forget_absent({"listed-and-there"}) == ["listed-and-gone"]
    assert sorted(r.uid for r in index.values()) == [
        "confirmed",
        "created-since",
        "listed-and-there",
    ]
    assert index.provisional == 1


def test_a_deleted_session_leaves_the_index_and_its_provisional_mark() -> None:
    index = SessionIndex()
    index.put_listed(ref("a"))
    index.discard("a")
    index.discard("never-there")
    assert (len(index), index.provisional, index.get("a")) == (0, 0, None)
    assert index.forget_absent(set()) == []
