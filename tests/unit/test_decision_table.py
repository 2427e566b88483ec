"""The README's decision table ("Failures with names"), row by row, against the code that decides:
each row's phase, condition, reason and retry are computed here from the decision functions
(observe, reconcile, planning, sessions.plan_cancel) and the handlers' retry constants, and must
equal what the README says. A row without a case here, or a case without a row, fails."""
# ruff: noqa: E501

from __future__ import annotations

import dataclasses
import datetime as dt
import re
from collections.abc import Callable
from pathlib import Path

import pytest
from test_reconcile import NOW, SETTINGS, accounted, queued, session, snapshot

from bbp_notebooks.api.models import (
    NotebookSessionSpec,
    NotebookSessionStatus,
    SlurmSiteSpec,
    SlurmSiteStatus,
)
from bbp_notebooks.api.settings import OperatorSettings
from bbp_notebooks.api.vocabulary import ConditionType, Reason
from bbp_notebooks.operator import handlers, observe, reconcile, sessions, timelimit
from bbp_notebooks.operator.conditions import get
from bbp_notebooks.operator.planning import InvalidSpec, SiteView, protected_users, user_refusal
from bbp_notebooks.slurm.commands import AccountingEntry, QueueEntry
from bbp_notebooks.slurm.values import JobState

README = Path(__file__).resolve().parents[2] / "README.md"
Row = tuple[str, str, str, str]  # phase, condition, reason, retry (as the README writes them)
SETTINGS_DEFAULTS = OperatorSettings()


def readme_rows() -> dict[str, Row]:
    text = README.read_text()
    section = text[text.index("## Failures with names") :]
    section = section[: section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 6 and (m := re.fullmatch(r"`([a-z-]+)`", cells[0])):
            rows[m.group(1)] = (cells[2], cells[3], cells[4], cells[5])
    return rows


def fresh() -> NotebookSessionStatus:
    return observe.initial(NotebookSessionStatus(), now=NOW, generation=1)


def shown(status: NotebookSessionStatus, type_: str, retry: str, reason: str | None = None) -> Row:
    condition = get(status.conditions, type_)
    assert condition is not None
    return (
        str(status.phase.value if status.phase else "-"),
        f"{type_}={condition.status.value}",
        reason or condition.reason,
        retry,
    )


def backoff(first: float, last: float) -> str:
    return f"{first:g} s, backing off to {last:g} s"


# -- submission ------------------------------------------------------------------------------


def sbatch_refused() -> Row:
    status = observe.rejected(fresh(), "Invalid account", now=NOW, generation=1)
    return shown(status, ConditionType.SUBMITTED, "none (Slurm's words in status; the hub shows them)")


def login_refused() -> Row:
    status = observe.cannot_log_in(fresh(), Reason.LOGIN_REFUSED, "no", now=NOW, generation=1)
    retry = backoff(handlers.LOGIN_BACKOFF_S[0], handlers.LOGIN_BACKOFF_S[-1])
    return shown(status, ConditionType.SITE_REACHABLE, f"{retry}; one Warning Event")


def host_key_mismatch() -> Row:
    status = observe.cannot_log_in(fresh(), Reason.HOST_KEY_MISMATCH, "no", now=NOW, generation=1)
    return shown(status, ConditionType.SITE_REACHABLE, f"{handlers.HOST_KEY_RETRY_S} s; Warning Event")


def unreachable_at_submission(reason: Reason, note: str = "") -> Callable[[], Row]:
    def row() -> Row:
        from bbp_notebooks.operator.runtime import CredentialsUnavailable
        from bbp_notebooks.operator.sites import reason_for
        from bbp_notebooks.ssh import SiteUnavailable

        error = CredentialsUnavailable("x") if reason == Reason.CREDENTIALS_UNAVAILABLE else SiteUnavailable("geneva", "x")
        status = observe.site_unreachable(fresh(), "x", now=NOW, generation=1, reason=reason_for(error))
        return shown(status, ConditionType.SITE_REACHABLE, f"{handlers.RETRY_S[reason]} s{note}")

    return row


def sbatch_answer_lost() -> Row:
    status = observe.submission_unconfirmed(fresh(), "lost", now=NOW, generation=1)
    settle = SETTINGS_DEFAULTS.submission_settle_seconds
    return shown(status, ConditionType.SUBMITTED, f"look up by tag after submissionSettleSeconds ({settle} s), then adopt or submit")


def spark_sbatch_answer_lost() -> Row:
    from bbp_notebooks.api.models import SparkStatus

    notebook = observe.submitted(fresh(), job_id=1, site="geneva", time_limit_minutes=60, adopted=False, now=NOW, generation=1)
    waiting = notebook.model_copy(update={"spark": SparkStatus()})
    status = observe.spark_unconfirmed(waiting, "lost", now=NOW, generation=1)
    assert status.phase == notebook.phase  # the notebook's own phase is left as it was
    polled = observe.with_spark(status, None, None, now=NOW, generation=1)
    assert polled == status  # a poll before the job is found keeps it
    return ("(unchanged)", *shown(status, ConditionType.SPARK_READY, "the same, by the cluster job's tag (`…-spark`)")[1:])


def site_view(**policy: object) -> SiteView:
    spec = SlurmSiteSpec.model_validate(
        {"displayName": "Geneva", "frontend": {"host": "127.0.0.21"},
         "hostKeys": {"certificateAuthorities": ["ssh-ed25519 AAAA"]},
         "partitions": [{"name": "prod", "default": True}], "monitorUser": "bbpmon",
         "userPolicy": policy}
    )  # fmt: skip
    return SiteView("geneva", spec, SlurmSiteStatus())


def user_not_allowed() -> Row:
    site = site_view(deniedUsers=["mallory"])
    protected = protected_users(["root"], [site])
    refusals = [user_refusal(site, user, protected) for user in ("root", "bbpmon", "mallory")]
    assert all(isinstance(r, InvalidSpec) for r in refusals)
    (reason,) = {r.reason for r in refusals if isinstance(r, InvalidSpec)}
    status = observe.invalid(fresh(), reason, "no", now=NOW, generation=1)
    return shown(status, ConditionType.SUBMITTED, "none")


def environment_not_owned() -> Row:
    status = observe.invalid(fresh(), Reason.ENVIRONMENT_SECRET_NOT_OWNED, "no", now=NOW, generation=1)
    grace = int(sessions.ENVIRONMENT_GRACE.total_seconds())
    return shown(status, ConditionType.SUBMITTED, f"none (one with no owner yet is waited for {grace} s)")


def admission_policy_missing() -> Row:
    status = observe.admission_policy_missing(fresh(), "no", now=NOW, generation=1)
    return shown(status, ConditionType.SUBMITTED, f"{handlers.RETRY_S[Reason.ADMISSION_POLICY_MISSING]} s; Warning Event")


# -- the poll --------------------------------------------------------------------------------


def polled(snap: reconcile.Snapshot, type_: str, retry: str, **fields: object) -> Callable[[], Row]:
    def row() -> Row:
        result = reconcile.reconcile(snap, SlurmSiteStatus(), 1, [session(1, **fields)], {}, SETTINGS)  # type: ignore[arg-type]
        ((_, new),) = result.sessions
        assert not result.confirm, "needs the owner's view first"
        return shown(new, type_, retry)

    return row


OWNER_SEES_RUNNING = snapshot(owner={1001: observe.JobObservation(1001, "RUNNING", node="gva-cn01")})


def many_missing() -> Row:
    result = reconcile.reconcile(snapshot(), SlurmSiteStatus(), 1, [session(n) for n in (1, 2, 3)], {}, SETTINGS)
    assert result.degraded and not result.confirm
    phases = {new.phase for _, new in result.sessions}
    (phase,) = phases
    visible = get(result.site.conditions, ConditionType.JOBS_VISIBLE)
    assert visible is not None
    return (phase.value if phase else "-", f"JobsVisible={visible.status.value} (SlurmSite)", visible.reason, "next poll; no session ends")


def poll_unreachable() -> Row:
    one = session(1)
    new = observe.site_unreachable(one.status, "down", now=NOW, generation=1)
    assert new.phase == one.status.phase
    return shown(new, ConditionType.SITE_REACHABLE, "next poll (last known state kept)")


def duplicate_job() -> Row:
    one = session(1)
    second = queued(1, JobState.RUNNING, job_id=5000, submitted_ago=3600)
    own = queued(1, JobState.RUNNING, submitted_ago=3600)
    result = reconcile.reconcile(snapshot((own, second)), SlurmSiteStatus(), 1, [one], {}, SETTINGS)
    assert [e.job_id for _, e in result.duplicates] == [5000]
    ((_, new),) = result.sessions
    return shown(new, ConditionType.RUNNING, "cancelled once older than orphanGraceSeconds; Warning Event", reason=Reason.DUPLICATE_JOB_CANCELLED)


# -- the time limit --------------------------------------------------------------------------


def ending_soon() -> Row:
    """A job started 50 min ago with a 60 min limit, warned 15 min (the default lead) before."""
    lead = dt.timedelta(minutes=SETTINGS_DEFAULTS.warning_lead_minutes)
    entry = dataclasses.replace(queued(1, JobState.RUNNING), start_time=(NOW - dt.timedelta(minutes=50)).replace(tzinfo=None))
    settings = dataclasses.replace(SETTINGS, warning_lead=lead)
    result = reconcile.reconcile(snapshot((entry,)), SlurmSiteStatus(), 1, [session(1, endpoint=True)], {}, settings)
    ((old, new),) = result.sessions
    assert new.expected_end_time == NOW + dt.timedelta(minutes=10)
    event = timelimit.event_for(old.status, new)
    assert event is not None and event[0] == "Warning"
    return shown(new, ConditionType.TIME_LIMIT, "next poll; one Warning Event")


def ready_for_an_hour() -> NotebookSessionStatus:
    return NotebookSessionStatus(phase="Ready", jobId=1001, startTime=NOW, timeLimitMinutes=60)  # type: ignore[call-arg]


def extended() -> Row:
    decision = timelimit.extension(120, ready_for_an_hour(), profile_max=480, admin_user="slurmop", generation=2)
    assert decision == timelimit.Raise(120)
    assert timelimit.within_partition(120, "prod", 1440) is None
    new = timelimit.extended(ready_for_an_hour(), decision.minutes, now=NOW, generation=2)
    event = timelimit.event_for(ready_for_an_hour(), new)
    assert event is not None and event[0] == "Normal"
    return shown(new, ConditionType.TIME_LIMIT, "none; Normal Event")


def extension_refused() -> Row:
    status = ready_for_an_hour()
    for refusal in (
        timelimit.extension(481, status, profile_max=480, admin_user="slurmop", generation=2),
        timelimit.extension(120, status, profile_max=480, admin_user=None, generation=2),
        timelimit.within_partition(120, "prod", 90),
    ):
        assert isinstance(refusal, timelimit.Refuse)
    new = timelimit.refused(status, "Access/permission denied", now=NOW, generation=2)
    assert timelimit.extension(120, new, profile_max=480, admin_user="slurmop", generation=2) is None
    event = timelimit.event_for(status, new)
    assert event is not None and event[0] == "Warning"
    return shown(new, ConditionType.TIME_LIMIT, "none until the request changes; Warning Event")


# -- deletes ---------------------------------------------------------------------------------

DIGEST = "0" * 64
SPEC = NotebookSessionSpec.model_validate({"user": "alice", "profile": "p", "site": "geneva"})


def deleted(status: dict[str, object]) -> Row:
    where = sessions.plan_cancel(NotebookSessionStatus.model_validate(status), SPEC, {"geneva": site_view()}, {"root"})
    assert where.sites == ()
    return ("(deleted)", "-", "-", "none: no ssh")


def delete_site_gone() -> Row:
    with pytest.raises(sessions.SiteGone):
        sessions.plan_cancel(
            NotebookSessionStatus.model_validate({"phase": "Ready", "jobId": 7, "site": "zurich", "callbackTokenSHA256": DIGEST}),
            SPEC, {"geneva": site_view()}, {"root"},
        )  # fmt: skip
    return ("(deleted)", "-", Reason.SITE_GONE, "none; Warning Event, the job is left to the site")


def cancel_retries(error: Exception, retries: int = 8) -> list[float]:
    """The delays _cancel_not_done asks for, retry after retry, just after the delete."""
    body = {"metadata": {"deletionTimestamp": dt.datetime.now(dt.UTC).isoformat()}}
    rt = type("Rt", (), {"settings": SETTINGS_DEFAULTS})()
    delays = []
    for retry in range(retries):
        with pytest.raises(Exception) as raised:
            handlers._cancel_not_done(rt, session(1), body, error, retry)  # type: ignore[arg-type]
        delays.append(float(raised.value.delay))  # type: ignore[attr-defined]
    return delays


def delete_still_ending() -> Row:
    delays = cancel_retries(sessions.JobStillActive("still ending"))
    return ("(deleting)", "-", "-", f"{backoff(delays[0], max(delays))} (INFO, not ERROR)")


def delete_cancel_fails() -> Row:
    from bbp_notebooks.ssh import SiteUnavailable

    delays = cancel_retries(SiteUnavailable("geneva", "down"))
    give_up = SETTINGS_DEFAULTS.cancel_give_up_seconds
    return ("(deleted)", "-", Reason.CANCEL_ABANDONED, f"{backoff(delays[0], max(delays))}, given up after cancelGiveUpSeconds ({give_up} s); the orphan sweep cancels later")


def companion_pending() -> QueueEntry:
    from test_spark_decisions import companion

    return companion(JobState.PENDING)


def spark_polled(queue_entry: QueueEntry | None, accounting: tuple[AccountingEntry, ...], type_: str, retry: str) -> Callable[[], Row]:
    """A PySpark session whose notebook is up, polled with its cluster job (id 2001) as given."""
    from test_spark_decisions import SPARK_ID, spark_session

    def row() -> Row:
        one = spark_session(endpoint=True, spark={"masterURL": "spark://127.0.0.1:7077", "uiURL": "http://127.0.0.1:8080"})
        rows = tuple(dataclasses.replace(a, job_id=SPARK_ID) for a in accounting)
        queue = (queued(1, JobState.RUNNING), *((queue_entry,) if queue_entry else ()))
        result = reconcile.reconcile(snapshot(queue, rows), SlurmSiteStatus(), 1, [one], {}, SETTINGS)
        ((_, new),) = result.sessions
        return shown(new, type_, retry)

    return row


def placed_by_shard() -> Row:
    from bbp_notebooks.operator.shards import Shard, placement

    placer = Shard.from_settings("geneva", ["geneva"], places_auto=True)
    site = placement("auto", "lugano")
    assert site == "lugano" and not placer.serves_site(site)  # another shard's site: placed only
    status = observe.placed(fresh(), site, placer.name, now=NOW, generation=1)
    assert status.site == "lugano"
    return shown(status, ConditionType.SUBMITTED, "none here: the shard of the chosen site submits; Normal Event")


CASES: dict[str, Callable[[], Row]] = {
    "sbatch-refused": sbatch_refused,
    "login-refused": login_refused,
    "host-key-mismatch": host_key_mismatch,
    "site-unreachable": unreachable_at_submission(Reason.SITE_UNAVAILABLE),
    "credentials-unavailable": unreachable_at_submission(Reason.CREDENTIALS_UNAVAILABLE, "; ERROR log line"),
    "sbatch-answer-lost": sbatch_answer_lost,
    "spark-sbatch-answer-lost": spark_sbatch_answer_lost,
    "user-not-allowed": user_not_allowed,
    "environment-not-owned": environment_not_owned,
    "admission-policy-missing": admission_policy_missing,
    "placed-by-shard": placed_by_shard,
    "job-pending": polled(snapshot((queued(1, JobState.PENDING),)), ConditionType.RUNNING, "next poll"),
    "job-running": polled(snapshot((queued(1, JobState.RUNNING),)), ConditionType.RUNNING, "next poll"),
    "endpoint-reported": polled(snapshot((queued(1, JobState.RUNNING),)), ConditionType.READY, "next poll", endpoint=True),
    "job-completed": polled(snapshot((), (accounted(1, JobState.COMPLETED),)), ConditionType.RUNNING, "none"),
    "job-failed": polled(snapshot((), (accounted(1, JobState.FAILED, 1),)), ConditionType.RUNNING, "none"),
    "job-timeout": polled(snapshot((), (accounted(1, JobState.TIMEOUT),)), ConditionType.RUNNING, "none"),
    "missing-in-grace": polled(snapshot(), ConditionType.RUNNING, "next poll (unchanged)", submitted_ago=10),
    "missing-owner-sees-it": polled(OWNER_SEES_RUNNING, ConditionType.RUNNING, "next poll"),
    "vanished": polled(snapshot(owner={1001: None}), ConditionType.RUNNING, "none"),
    "many-missing": many_missing,
    "poll-unreachable": poll_unreachable,
    "duplicate-job": duplicate_job,
    "spark-pending": spark_polled(companion_pending(), (), ConditionType.SPARK_READY, "next poll; `spark.reason` holds the cluster's own queue reason"),
    "spark-ended": spark_polled(None, (accounted(1, JobState.CANCELLED),), ConditionType.READY, "none; the cluster's last output in `spark.logTail` and the message"),
    "ending-soon": ending_soon,
    "extended": extended,
    "extension-refused": extension_refused,
    "delete-no-job": lambda: deleted({"phase": "Pending"}),
    "delete-ended": lambda: deleted({"phase": "Completed", "jobId": 7, "site": "geneva", "callbackTokenSHA256": DIGEST}),
    "delete-site-gone": delete_site_gone,
    "delete-still-ending": delete_still_ending,
    "delete-cancel-fails": delete_cancel_fails,
}


def test_every_row_has_a_case_and_every_case_a_row() -> None:
    assert sorted(readme_rows()) == sorted(CASES)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_readme_row_is_what_the_code_decides(case: str) -> None:
    assert CASES[case]() == readme_rows()[case]
