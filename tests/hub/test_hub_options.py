"""The spawn form and its server-side check, session naming and progress messages. Pure."""

from __future__ import annotations

import datetime as dt
import json
import re
from html.parser import HTMLParser
from typing import Any

import pytest

from bbp_notebooks.api.models import (
    Endpoint,
    NotebookProfileSpec,
    NotebookSessionStatus,
    QueueInfo,
    SessionPhase,
)
from bbp_notebooks.hub import naming, options, progress
from bbp_notebooks.hub.options import Choices, InvalidOptions, SessionOptions, SiteChoice

NOW = dt.datetime(2026, 11, 26, 1, 0, tzinfo=dt.UTC)
DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


def profile(display: str, **extra: Any) -> NotebookProfileSpec:
    return NotebookProfileSpec.model_validate(
        {"displayName": display, "cores": 1, "memoryMiB": 1024, **extra}
    )


PROFILES = {
    "bluepy": profile("BluePy", description="Circuit analysis"),
    "synthesis": profile("Synthesis Pipeline", allowedSites=["geneva"]),
    "thalamus": profile("Thalamus", allowedGroups=["thalamus"]),
}
GENEVA = SiteChoice("geneva", "Geneva", False, True, 8, None)
LUGANO = SiteChoice("lugano", "Lugano", True, False, None, None)
LUGANO_WITH_ACCOUNTS = SiteChoice("lugano", "Lugano", True, True, 1, ("proj1", "proj2"))


def choices(*sites: SiteChoice, groups: tuple[str, ...] = ()) -> Choices:
    return Choices(
        profiles=options.allowed_profiles(PROFILES, groups), sites=sites or (GENEVA, LUGANO)
    )


def raw_site(name: str, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "displayName": name.title(),
            "frontend": {"host": "127.0.0.21"},
            "hostKeys": {"knownHosts": ["127.0.0.21 ssh-ed25519 AAAA"]},
            "partitions": [{"name": "prod", "default": True}],
            "monitorUser": "bbpmon",
            "pollIntervalSeconds": 10,
        },
        "status": status,
    }


def reachable(value: str, at: dt.datetime = NOW) -> list[dict[str, str]]:
    return [
        {
            "type": "Reachable",
            "status": value,
            "reason": "Polled",
            "lastTransitionTime": at.isoformat(),
        }
    ]


class FormFields(HTMLParser):
    """The names and option values of a rendered form, as a browser would submit them."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[str, list[str]] = {}
        self.labels: list[str] = []
        self._select: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attr = dict(attrs)
        if tag == "select":
            self._select = attr["name"]
            self.fields.setdefault(self._select or "", [])
        elif tag == "option" and self._select:
            self.fields[self._select].append(attr["value"] or "")
        elif tag == "input":
            self.fields.setdefault(attr["name"] or "", []).append(attr.get("value") or "")

    def handle_endtag(self, tag: str) -> None:
        if tag == "select":
            self._select = None

    def handle_data(self, data: str) -> None:
        if self._select and data.strip():
            self.labels.append(data.strip())


def parse(html: str) -> FormFields:
    fields = FormFields()
    fields.feed(html)
    return fields


# Which profiles and sites the form offers ----------


def test_profiles_restricted_to_groups_are_offered_only_to_their_members() -> None:
    assert [p.name for p in options.allowed_profiles(PROFILES, [])] == ["bluepy", "synthesis"]
    assert [p.name for p in options.allowed_profiles(PROFILES, ["thalamus"])] == [
        "bluepy",
        "synthesis",
        "thalamus",
    ]


def test_sites_show_their_live_availability() -> None:
    fresh = options.site_choice(
        raw_site("geneva", conditions=reachable("True"), idleNodes=8, lastPollTime=NOW.isoformat()),
        "alice",
        now=NOW,
        stale_after=dt.timedelta(seconds=120),
    )
    down = options.site_choice(
        raw_site("lugano", conditions=reachable("False")),
        "alice",
        now=NOW,
        stale_after=dt.timedelta(seconds=120),
    )
    never = options.site_choice(raw_site("basel"), "alice", now=NOW, stale_after=dt.timedelta(0))
    assert fresh.label == "Geneva — 8 nodes available"
    assert down.label == "Lugano — unreachable"
    assert never.label == "Basel — availability unknown"


def test_a_site_whose_last_report_is_old_shows_availability_unknown() -> None:
    old = NOW - dt.timedelta(minutes=10)
    site = options.site_choice(
        raw_site(
            "geneva", conditions=reachable("True", old), idleNodes=8, lastPollTime=old.isoformat()
        ),
        "alice",
        now=NOW,
        stale_after=dt.timedelta(seconds=120),
    )
    assert site.label == "Geneva — availability unknown"


def test_form_lists_profiles_sites_and_a_project_field_where_a_site_requires_one() -> None:
    form = parse(options.render_form(choices()))
    assert form.fields["profile"] == ["bluepy", "synthesis"]
    assert form.fields["site"] == ["auto", "geneva", "lugano"]
    assert "Geneva — 8 nodes available" in form.labels
    assert "Lugano — unreachable" in form.labels
    assert form.fields["account-lugano"] == [""]  # free text: the user's accounts are not known
    assert "account-geneva" not in form.fields


def test_form_offers_the_users_accounts_as_a_select_when_the_site_lists_them() -> None:
    form = parse(options.render_form(choices(GENEVA, LUGANO_WITH_ACCOUNTS)))
    assert form.fields["account-lugano"] == ["proj1", "proj2"]


def test_user_accounts_come_from_the_site_annotation_for_that_user_only() -> None:
    site = raw_site("lugano")
    site["metadata"]["annotations"] = {
        options.USER_ACCOUNTS_ANNOTATION: json.dumps(
            [
                {"user": "alice", "accounts": ["proj2", "proj1", "bad;rm -rf"]},
                {"user": "bob", "accounts": ["bobs"]},
            ]
        )
    }
    assert options.user_accounts(site, "alice") == ("proj1", "proj2")
    assert options.user_accounts(site, "carol") is None
    site["metadata"]["annotations"][options.USER_ACCOUNTS_ANNOTATION] = "{not json"
    assert options.user_accounts(site, "alice") is None


def test_everything_from_the_cluster_is_escaped_in_the_form() -> None:
    hostile = Choices(
        profiles=(
            options.ProfileChoice(
                "p", '<script>alert("x")</script>', '"><img src=x onerror=alert(1)>', ()
            ),
        ),
        sites=(SiteChoice("s", "<b>Geneva</b>", True, True, 1, ('"><script>',)),),
    )
    html = options.render_form(hostile)
    assert "<script>alert" not in html
    assert "<img" not in html and "<b>" not in html
    assert '"><script>' not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;" in html


def test_form_says_so_when_no_profile_is_available() -> None:
    html = options.render_form(Choices(profiles=(), sites=(GENEVA,)))
    assert "No notebook profile is available" in html and "<select" not in html


def test_form_preselects_the_previous_choice() -> None:
    html = options.render_form(choices(), SessionOptions("synthesis", "lugano", "proj9"))
    assert '<option value="synthesis" data-sites="geneva" selected>' in html
    assert 'value="proj9"' in html


# What the server accepts ----------


def test_form_data_becomes_options_with_the_account_of_the_chosen_site_only() -> None:
    form = {
        "profile": ["bluepy"],
        "site": ["lugano"],
        "account-lugano": [" proj1 "],
        "account-geneva": ["other"],
    }
    assert options.options_from_form(form) == {
        "profile": "bluepy",
        "site": "lugano",
        "account": "proj1",
    }


def test_a_field_sent_twice_is_rejected() -> None:
    with pytest.raises(InvalidOptions, match="exactly one value"):
        options.options_from_form({"profile": ["bluepy", "thalamus"]})


def test_valid_options_are_accepted() -> None:
    chosen = options.validate(
        {"profile": "bluepy", "site": "lugano", "account": "proj1"}, choices()
    )
    assert chosen == SessionOptions("bluepy", "lugano", "proj1")
    assert options.validate({"profile": "synthesis"}, choices()) == SessionOptions(
        "synthesis", "auto", None
    )


@pytest.mark.parametrize(
    ("user_options", "message"),
    [
        ({"profile": "nope"}, "profile 'nope' does not exist or is not available"),
        ({"profile": "thalamus"}, "profile 'thalamus' does not exist or is not available"),
        ({"profile": "bluepy", "site": "basel"}, "cluster 'basel' does not exist"),
        ({"profile": "synthesis", "site": "lugano"}, "cannot run at Lugano; it may run at: Geneva"),
        ({"profile": "bluepy", "site": "lugano"}, "Lugano requires a project"),
        ({"profile": "bluepy", "site": "lugano", "account": "a b"}, "not a valid Slurm account"),
        ({"profile": "bluepy", "site": "lugano", "account": "$(id)"}, "not a valid Slurm account"),
        ({"profile": "bluepy", "site": "geneva", "account": "x\n#SBATCH"}, "not a valid Slurm"),
        ({"profile": "bluepy", "image": "evil"}, "unknown option"),
        ({"profile": ["bluepy"]}, "must be a string"),
        ({}, "choose a profile"),
    ],
)
def test_invalid_options_are_rejected_with_a_clear_message(
    user_options: dict[str, Any], message: str
) -> None:
    with pytest.raises(InvalidOptions, match=re.escape(message)):
        options.validate(user_options, choices())


def test_an_account_outside_the_users_list_is_rejected() -> None:
    listed = choices(GENEVA, LUGANO_WITH_ACCOUNTS)
    assert (
        options.validate(
            {"profile": "bluepy", "site": "lugano", "account": "proj2"}, listed
        ).account
        == "proj2"
    )
    with pytest.raises(InvalidOptions, match="'proj3' is not one of your projects at Lugano"):
        options.validate({"profile": "bluepy", "site": "lugano", "account": "proj3"}, listed)


def test_group_restricted_profile_is_accepted_for_a_member() -> None:
    chosen = options.validate({"profile": "thalamus"}, choices(groups=("thalamus",)))
    assert chosen.profile == "thalamus"


# Names ----------


def test_session_names_are_dns_labels_stable_and_distinct_per_user_and_server() -> None:
    pairs = [
        ("alice", ""),
        ("alice", "gpu"),
        ("a-b", ""),
        ("a", "b"),
        ("Alice@EPFL.ch", "My.Server"),
    ]
    names = [naming.session_name(user, server) for user, server in pairs]
    assert len(set(names)) == len(names)
    assert names == [naming.session_name(user, server) for user, server in pairs]
    assert names[0].startswith("alice-") and names[1].startswith("alice-gpu-")
    long = naming.session_name("u" * 200, "s" * 63)
    for name in [*names, long]:
        assert DNS_LABEL.match(name), name
        assert DNS_LABEL.match(naming.secret_name(name)), name
        assert len(naming.secret_name(name)) <= 63


def test_label_values_are_valid_and_keep_simple_names_readable() -> None:
    assert naming.label_value("alice") == "alice"
    assert naming.label_value("") == ""
    odd = naming.label_value("Alice@EPFL.ch ")
    assert odd.startswith("Alice-EPFL.ch-") and re.match(
        r"^[A-Za-z0-9][-A-Za-z0-9_.]*[A-Za-z0-9]$", odd
    )
    assert len(naming.label_value("x" * 100)) <= 63


def test_group_names_that_could_forge_the_annotation_are_refused() -> None:
    usable, refused = naming.safe_groups(["thalamus", "admins,thalamus", "a b", "x"])
    assert usable == ["thalamus", "x"]
    assert refused == ["a b", "admins,thalamus"]


# Progress and poll ----------


def label(site: str) -> str:
    return {"geneva": "Geneva"}.get(site, site)


def test_progress_tells_where_and_why_a_session_waits() -> None:
    queued = NotebookSessionStatus(
        phase=SessionPhase.QUEUED,
        site="geneva",
        jobId=1000001,
        queue=QueueInfo(reason="Priority", estimatedStart=NOW),
    )
    assert progress.describe(queued, label).message == (
        "Queued at Geneva (Slurm job 1000001): Priority, "
        "expected to start around 2026-11-26 01:00 UTC"
    )
    running = NotebookSessionStatus(phase=SessionPhase.RUNNING, site="geneva", node="node-3")
    assert progress.describe(running, label).message == "Starting the notebook on node-3 at Geneva"
    ready = NotebookSessionStatus(
        phase=SessionPhase.READY,
        site="geneva",
        node="node-3",
        endpoint=Endpoint(host="node-3", port=9000, url="http://node-3:9000"),
    )
    event = progress.describe(ready, label)
    assert event.ready and event.percent == 100 and "ready on node-3" in event.message
    assert "ready" not in event.as_event()  # the hub announces readiness after its own check


@pytest.mark.parametrize(
    ("phase", "expected"),
    [
        (None, None),
        (SessionPhase.PENDING, None),
        (SessionPhase.QUEUED, None),
        (SessionPhase.RUNNING, None),
        (SessionPhase.READY, None),
        (SessionPhase.COMPLETED, 0),
        (SessionPhase.FAILED, 1),
        (SessionPhase.CANCELLED, 1),
        (SessionPhase.TIMEOUT, 1),
        (SessionPhase.INVALID_SPEC, 1),
    ],
)
def test_poll_reports_an_exit_status_only_for_ended_sessions(
    phase: SessionPhase | None, expected: int | None
) -> None:
    assert progress.exit_status(NotebookSessionStatus(phase=phase)) == expected


def test_jupyterhub_finds_the_spawner_by_its_entry_point_name() -> None:
    from jupyterhub.app import JupyterHub

    from bbp_notebooks.hub.spawner import NotebookSessionSpawner

    assert JupyterHub(spawner_class="notebooksession").spawner_class is NotebookSessionSpawner


def test_a_deployers_template_folder_overrides_the_form_and_may_extend_ours(
    tmp_path: Any,
) -> None:
    (tmp_path / "form.html").write_text(
        '{% extends "bbp_notebooks/form.html" %}'
        '{% block profile %}<p class="centre-banner">Read the site rules first.</p>'
        "{{ super() }}{% endblock %}"
    )
    html = options.render_form(choices(), search_path=[str(tmp_path)])
    assert html.startswith('<p class="centre-banner">Read the site rules first.</p>'), html[:200]
    assert parse(html).fields["profile"] == ["bluepy", "synthesis"]  # ours, still there

    (tmp_path / "centre.html").write_text("<p>{{ profiles[0].display_name }}</p>")
    hostile = Choices(
        profiles=(options.ProfileChoice("p", "<script>alert(1)</script>", "", ()),), sites=()
    )
    html = options.render_form(hostile, search_path=[str(tmp_path)], template="centre.html")
    assert html == "<p>&lt;script&gt;alert(1)&lt;/script&gt;</p>"  # a deployer's is escaped too


async def test_the_spawner_renders_the_form_from_its_configured_template_path(
    tmp_path: Any,
) -> None:
    from bbp_notebooks.hub.spawner import NotebookSessionSpawner

    (tmp_path / "mine.html").write_text("<p>{{ sites | length }} sites</p>")
    spawner = NotebookSessionSpawner(form_template_paths=[str(tmp_path)], form_template="mine.html")

    async def offered(kube: Any = None) -> Choices:
        return choices()

    spawner.choices = offered  # type: ignore[method-assign]
    assert await spawner.render_options_form() == "<p>2 sites</p>"
