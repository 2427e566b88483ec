"""PySpark sessions as pure decisions: the pair of tags, the pair in the poll (duplicates, sacct,
the cluster's state and SparkReady, Ready only with both), the cluster's report, the profile's
spark section and the companion's script and sbatch argv."""
# ruff: noqa: E501  (the decision tables read best one row per line)

from __future__ import annotations

import datetime as dt
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydantic
import pytest
from test_reconcile import NOW, SETTINGS, accounted, queued, session, snapshot, uid

from bbp_notebooks.api.models import (
    NotebookProfileSpec,
    NotebookSessionStatus,
    SlurmSiteSpec,
    SlurmSiteStatus,
    SparkStatus,
    dump,
)
from bbp_notebooks.api.vocabulary import ConditionType
from bbp_notebooks.operator import callbacks, observe, reconcile
from bbp_notebooks.operator.conditions import get
from bbp_notebooks.operator.planning import (
    SiteView,
    companion_job_name,
    job_name,
    session_uid,
    tagged_session,
)
from bbp_notebooks.operator.sessions import SessionRef, plan_cancel
from bbp_notebooks.slurm import sparkscript
from bbp_notebooks.slurm.commands import JobSpec, QueueEntry, sbatch_argv
from bbp_notebooks.slurm.jobscript import Callback, JobScript, SparkInstall, render_job_script
from bbp_notebooks.slurm.sparkscript import SparkJob, render_spark_script
from bbp_notebooks.slurm.values import JobState

SPARK_ID = 2001
SITE = SlurmSiteSpec.model_validate({"displayName": "G", "frontend": {"host": "192.0.2.1"}, "hostKeys": {"knownHosts": ["x ssh-ed25519 AAAA"]}, "partitions": [{"name": "prod"}], "auth": {"method": "Certificate", "caSecretName": "ca"}, "monitorUser": "bob", "notebookHost": "127.0.0.1"})  # fmt: skip
UID = uid(1)


def test_the_companion_tag_is_derived_from_the_session_and_told_apart() -> None:
    tag, companion = job_name("default", UID), companion_job_name("default", UID)
    assert companion == tag + "-spark"
    assert tagged_session(tag, "default") == (UID, False)
    assert tagged_session(companion, "default") == (UID, True)
    assert session_uid(companion, "default") is None  # never mistaken for the notebook's job
    for foreign in (
        companion_job_name("other", UID),
        tag + "-sparkx",
        tag + "-spark-spark",
        "bbpnb-default-x-spark",
    ):
        assert tagged_session(foreign, "default") is None, foreign


def spark_session(
    *, phase: str = "Running", spark: dict[str, Any] | None = None, endpoint: bool = False
) -> SessionRef:
    base = session(1, phase=phase, endpoint=endpoint)
    status = dump(base.status)
    status["spark"] = (
        {"jobId": SPARK_ID, **(spark or {})} if spark is not None else {"jobId": SPARK_ID}
    )
    return SessionRef(**{**base.__dict__, "status": NotebookSessionStatus.model_validate(status)})


def companion(
    state: JobState,
    *,
    job_id: int = SPARK_ID,
    submitted_ago: float | None = 600,
    user: str = "alice",
) -> QueueEntry:
    entry = queued(1, state, job_id=job_id, submitted_ago=submitted_ago, user=user)
    return QueueEntry(**{**entry.__dict__, "name": companion_job_name("default", UID)})


def no_companion_yet() -> SessionRef:
    base = session(1)
    status = dump(base.status)
    status["spark"] = {}
    return SessionRef(**{**base.__dict__, "status": NotebookSessionStatus.model_validate(status)})


SECOND = 5000
PAIR_DUPLICATES: list[tuple[str, SessionRef, tuple[QueueEntry, ...], list[int]]] = [
    # (case, session, tagged jobs besides the notebook's own, cancelled)
    ("the session's own companion is not a duplicate", spark_session(), (companion(JobState.RUNNING),), []),
    ("a second companion past the grace", spark_session(), (companion(JobState.RUNNING), companion(JobState.RUNNING, job_id=SECOND)), [SECOND]),
    ("a second companion within the grace", spark_session(), (companion(JobState.RUNNING), companion(JobState.RUNNING, job_id=SECOND, submitted_ago=30)), []),
    ("a companion not recorded yet is adopted, not cancelled", no_companion_yet(), (companion(JobState.RUNNING, job_id=SECOND),), []),
    ("a companion of a session without a cluster", session(1), (companion(JobState.RUNNING, job_id=SECOND),), [SECOND]),
    ("the companion of an ended session, at once", spark_session(phase="Completed"), (companion(JobState.RUNNING, submitted_ago=10),), [SPARK_ID]),
    ("an ended session's companion of another user", spark_session(phase="Completed"), (companion(JobState.RUNNING, user="bob"),), []),
    ("a companion that already ended", spark_session(phase="Completed"), (companion(JobState.CANCELLED),), []),
    ("a second notebook job next to a recorded companion", spark_session(), (companion(JobState.RUNNING), queued(1, JobState.RUNNING, job_id=SECOND, submitted_ago=600)), [SECOND]),
]  # fmt: skip


@pytest.mark.parametrize(
    ("one", "others", "cancelled"),
    [c[1:] for c in PAIR_DUPLICATES],
    ids=[c[0] for c in PAIR_DUPLICATES],
)
def test_duplicates_know_the_pair(
    one: SessionRef, others: tuple[QueueEntry, ...], cancelled: list[int]
) -> None:
    settings = reconcile.Settings(
        **{**SETTINGS.__dict__, "duplicate_grace": dt.timedelta(seconds=300)}
    )
    own = queued(1, JobState.RUNNING, submitted_ago=900)
    result = reconcile.reconcile(
        snapshot((own, *others)), SlurmSiteStatus(), 1, [one], {}, settings
    )
    assert sorted(e.job_id for _, e in result.duplicates) == cancelled


def test_the_orphan_sweep_and_accounting_see_the_companion() -> None:
    tagged = reconcile.tagged_jobs(
        (queued(1, JobState.RUNNING), companion(JobState.COMPLETED)), "default"
    )
    assert [e.job_id for e in tagged[UID]] == [1001, SPARK_ID]  # one session: the sweep takes both
    assert reconcile.needs_accounting([spark_session()], tagged) == [SPARK_ID]
    assert reconcile.needs_accounting(
        [spark_session()], reconcile.tagged_jobs((queued(1, JobState.RUNNING),), "default")
    ) == [SPARK_ID]


REPORTED = {
    "masterURL": "spark://127.0.0.1:7077",
    "uiURL": "http://127.0.0.1:8080",
    "workersRegistered": 2,
}
REPORT = observe.SparkReport(SPARK_ID, "spark://127.0.0.1:7077", "http://127.0.0.1:8080", 2)
POLL_CASES: list[tuple[str, SessionRef, tuple[QueueEntry, ...], tuple[Any, ...], observe.SparkReport | None, str, str, str, str | None]] = [
    # (case, session, queue besides the notebook's running job, accounting, report kept here,
    #  phase, SparkReady status/reason, Ready reason, spark.state)
    ("cluster pending: its own queue reason", spark_session(endpoint=True), (companion(JobState.PENDING),), (), None, "Running", "False/SparkJobPending", "WaitingForSpark", "PENDING"),
    ("cluster running, not reported yet", spark_session(endpoint=True), (companion(JobState.RUNNING),), (), None, "Running", "False/SparkStarting", "WaitingForSpark", "RUNNING"),
    ("cluster reported, notebook up: Ready", spark_session(endpoint=True), (companion(JobState.RUNNING),), (), REPORT, "Ready", "True/SparkClusterReported", "EndpointReported", "RUNNING"),
    ("cluster reported in status (another replica)", spark_session(endpoint=True, spark=REPORTED), (companion(JobState.RUNNING),), (), None, "Ready", "True/SparkClusterReported", "EndpointReported", "RUNNING"),
    ("cluster reported, notebook not yet", spark_session(), (companion(JobState.RUNNING),), (), REPORT, "Running", "True/SparkClusterReported", "WaitingForEndpoint", "RUNNING"),
    ("cluster ended early: reported, notebook runs on", spark_session(endpoint=True, spark=REPORTED), (), (accounted(1, JobState.CANCELLED),), None, "Running", "False/SparkClusterEnded", "SparkClusterEnded", "CANCELLED"),
    ("cluster not seen in this poll: nothing changes", spark_session(endpoint=True, spark=REPORTED), (), (), None, "Ready", "True/SparkClusterReported", "EndpointReported", None),
    ("a report for another job id is ignored", spark_session(endpoint=True), (companion(JobState.RUNNING),), (), observe.SparkReport(9, "spark://x:1", "http://x:2", 2), "Running", "False/SparkStarting", "WaitingForSpark", "RUNNING"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("one", "queue", "accounting", "report", "phase", "spark_ready", "ready_reason", "state"),
    [c[1:] for c in POLL_CASES],
    ids=[c[0] for c in POLL_CASES],
)
def test_a_poll_decides_the_cluster_and_ready_needs_both(one: SessionRef, queue: tuple[QueueEntry, ...], accounting: tuple[Any, ...], report: observe.SparkReport | None, phase: str, spark_ready: str, ready_reason: str, state: str | None) -> None:  # fmt: skip
    # sacct rows of the companion: accounted() numbers jobs 1000+n, the companion is SPARK_ID.
    rows = tuple(a.__class__(**{**a.__dict__, "job_id": SPARK_ID}) for a in accounting)
    snap = snapshot((queued(1, JobState.RUNNING), *queue), rows)
    reports = {UID: report} if report else {}
    result = reconcile.reconcile(snap, SlurmSiteStatus(), 1, [one], {}, SETTINGS, reports)
    ((_, new),) = result.sessions
    assert new.phase is not None and new.phase.value == phase
    sparked = get(new.conditions, ConditionType.SPARK_READY)
    assert sparked is not None and f"{sparked.status.value}/{sparked.reason}" == spark_ready
    ready = get(new.conditions, ConditionType.READY)
    assert ready is not None and ready.reason == ready_reason
    assert new.spark is not None and new.spark.state == state
    if state == "PENDING":
        assert "Resources" in sparked.message and new.spark.reason == "Resources"


def test_a_waiting_ready_keeps_its_transition_time_poll_after_poll() -> None:
    one = spark_session(endpoint=True)
    snap = snapshot((queued(1, JobState.RUNNING), companion(JobState.RUNNING)))
    ((_, first),) = reconcile.reconcile(snap, SlurmSiteStatus(), 1, [one], {}, SETTINGS).sessions
    later = reconcile.Snapshot(**{**snap.__dict__, "now": NOW + dt.timedelta(seconds=30)})
    again = SessionRef(**{**one.__dict__, "status": first})
    ((_, second),) = reconcile.reconcile(
        later, SlurmSiteStatus(), 1, [again], {}, SETTINGS
    ).sessions
    assert observe.status_patch(first, second) == {}


def test_deleting_looks_for_a_companion_that_may_still_run() -> None:
    sites = {"geneva": SiteView("geneva", SITE, SlurmSiteStatus())}
    ended = spark_session(phase="Completed", spark={"state": "RUNNING"})
    assert plan_cancel(ended.status, ended.spec, sites, set()).sites
    both_ended = spark_session(phase="Completed", spark={"state": "CANCELLED"})
    assert not plan_cancel(both_ended.status, both_ended.spec, sites, set()).sites


def report(**fields: Any) -> callbacks.SparkClusterReport:
    return callbacks.SparkClusterReport.model_validate(
        {
            "host": "127.0.0.1",
            "port": 40000,
            "uiPort": 40001,
            "workers": 2,
            "jobId": SPARK_ID,
            **fields,
        }
    )


JUDGE_CASES: list[tuple[str, bool, NotebookSessionStatus, callbacks.SparkClusterReport, str | None, str]] = [
    ("accepted", True, spark_session().status, report(), "gva-cn01", "accepted"),
    ("bad token", False, spark_session().status, report(), "gva-cn01", "InvalidToken"),
    ("a session without a cluster", True, session(1).status, report(), "gva-cn01", "InvalidToken"),
    ("another job's report", True, spark_session().status, report(jobId=7), "gva-cn01", "WrongJob"),
    ("reported twice", True, spark_session(spark=REPORTED).status, report(), "gva-cn01", "AlreadyReported"),
    ("a privileged UI port", True, spark_session().status, report(uiPort=80), "gva-cn01", "PrivilegedPort"),
    ("no node yet", True, spark_session().status, report(), None, "NodeUnknown"),
    ("an address that is not the node's", True, spark_session().status, report(host="192.0.2.9"), "gva-cn01", "ForeignHost"),
    ("the session ended", True, spark_session(phase="Completed").status, report(), "gva-cn01", "SessionEnded"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("token_ok", "status", "sent", "node", "verdict"),
    [c[1:] for c in JUDGE_CASES],
    ids=[c[0] for c in JUDGE_CASES],
)
def test_a_cluster_report_is_judged_like_a_notebooks(token_ok: bool, status: NotebookSessionStatus, sent: callbacks.SparkClusterReport, node: str | None, verdict: str) -> None:  # fmt: skip
    found = callbacks.judge_spark(sent, token_matches=token_ok, status=status, site=SITE, node=node)
    assert (found.refusal.value if found.refusal else "accepted") == verdict


def profile(spark: dict[str, Any]) -> NotebookProfileSpec:
    return NotebookProfileSpec.model_validate(
        {"displayName": "P", "cores": 1, "memoryMiB": 512, "spark": spark}
    )


BASE_SPARK = {
    "workers": 2,
    "coresPerWorker": 1,
    "memoryMiBPerWorker": 768,
    "installation": {"virtualenv": "/opt/venv"},
}


@pytest.mark.parametrize(
    "spark",
    [
        {**BASE_SPARK, "installation": {}},
        {**BASE_SPARK, "installation": {"module": "spark/3.5", "path": "/opt/spark"}},
        {**BASE_SPARK, "installation": {"path": "relative/spark"}},
        {**BASE_SPARK, "settings": [{"name": "spark.master", "value": "local[*]"}]},
        {**BASE_SPARK, "settings": [{"name": "spark.authenticate", "value": "false"}]},
        {**BASE_SPARK, "settings": [{"name": "not.spark", "value": "x"}]},
        {**BASE_SPARK, "settings": [{"name": "spark.a", "value": "x\nspark.master y"}]},
        {
            **BASE_SPARK,
            "settings": [{"name": "spark.a", "value": "1"}, {"name": "spark.a", "value": "2"}],
        },
        {**BASE_SPARK, "extraMinutes": -1},
    ],
    ids=[
        "no installation",
        "two installations",
        "relative path",
        "reserved setting",
        "the cluster's authentication",
        "not a spark property",
        "a newline in a value",
        "a setting twice",
        "shorter than the notebook",
    ],
)
def test_the_spark_section_refuses_what_cannot_work(spark: dict[str, Any]) -> None:
    with pytest.raises(pydantic.ValidationError):
        profile(spark)


def test_the_companion_is_one_task_per_worker_with_memory_per_cpu() -> None:
    spec = JobSpec(
        name="t",
        partition="prod",
        account=None,
        cpus_per_task=2,
        memory_mb=640,
        time_limit_minutes=65,
        ntasks=3,
        nodes=None,
        memory_per_cpu=True,
    )
    assert sbatch_argv(spec) == [
        "sbatch",
        "--parsable",
        "--job-name=t",
        "--ntasks=3",
        "--cpus-per-task=2",
        "--mem-per-cpu=640M",
        "--time=65",
        "--partition=prod",
    ]


def spark_script(**fields: Any) -> str:
    job = SparkJob(**{"session_uid": UID, "session_name": "default/s1", "install": SparkInstall("virtualenv", "/opt/venv"), "workers": 2, "cores_per_worker": 1, "memory_mib_per_worker": 768, "host_template": "127.0.0.1", "settings": (("spark.ui.showConsoleProgress", "false"),), "callback": Callback("http://127.0.0.1:1/v1/x/spark", "s3cret-token"), **fields})  # fmt: skip
    return render_spark_script(job)


def test_the_cluster_script_binds_daemons_to_the_site_address_and_keeps_the_token_unexported() -> (
    None
):
    script = spark_script()
    assert (
        "bbpnb_callback_token=s3cret-token\n" in script
        and "export bbpnb_callback_token" not in script
    )
    assert (
        'export SPARK_LOCAL_IP="$BBPNB_SPARK_HOST"' in script
        and 'export SPARK_MASTER_HOST="$BBPNB_SPARK_HOST"' in script
    )
    assert "srun --ntasks=2 --cpus-per-task=1 --kill-on-bad-exit=1" in script
    assert "source /opt/venv/bin/activate" in script
    assert (
        '"spark.executor.memory 512m"' in script
        and '"spark.ui.showConsoleProgress false"' in script
    )
    assert (
        spark_script(host_template="gva-{node}.example") != script
    )  # the node name is filled in per task
    with pytest.raises(ValueError, match="wildcard"):
        spark_script(host_template="0.0.0.0")
    with pytest.raises(ValueError, match="control characters"):
        spark_script(settings=(("spark.a", "x\nspark.master local"),))


def test_the_cluster_requires_a_secret_drawn_on_the_node_and_never_in_argv(
    tmp_path: Path,
) -> None:
    script = spark_script()
    # The master and every worker read the secret from the private file, not from argv or the
    # environment; the script (sbatch's stdin) carries no secret of its own.
    assert 'bbpnb_daemon_conf="$(python3 -c "$bbpnb_helper" secret)"' in script
    master = next(line for line in script.splitlines() if "deploy.master.Master" in line)
    assert '--properties-file "$bbpnb_daemon_conf"' in master
    worker = next(line for line in script.splitlines() if line.startswith("srun "))
    assert '--properties-file "$5"' in worker and worker.endswith('"$bbpnb_daemon_conf" &')
    assert script.index('helper" secret)') < script.index("deploy.master.Master")
    assert 'rm -f -- "$bbpnb_conf" "$bbpnb_daemon_conf"' in script

    # The helper, run as the job runs it: daemon.conf 0600 in a 0700 folder, a fresh secret each
    # time, and the notebook's spark-defaults.conf gets the same secret.
    helper = sparkscript._HELPER
    assert f"bbpnb_helper={shlex.quote(helper)}" in script
    env = {"HOME": str(tmp_path), "PATH": os.environ["PATH"], "BBPNB_SPARK_HOST": "127.0.0.1",
           "BBPNB_SPARK_CONF_DIR": f".bbp-notebooks/{UID}/spark"}  # fmt: skip
    run = lambda *argv: subprocess.run([sys.executable, "-c", helper, *argv], env=env, capture_output=True, text=True, check=True).stdout  # noqa: E731  # fmt: skip
    path = Path(run("secret").strip())
    assert path == tmp_path / ".bbp-notebooks" / UID / "spark" / "daemon.conf"
    assert path.stat().st_mode & 0o777 == 0o600 and path.parent.stat().st_mode & 0o777 == 0o700
    first = path.read_text().splitlines()
    assert first[0] == "spark.authenticate true" and "spark.ui.killEnabled false" in first
    secret = first[1].split()
    assert secret[0] == "spark.authenticate.secret" and len(secret[1]) == 64
    run("secret")
    assert path.read_text().splitlines()[1] != first[1]  # drawn per cluster


def test_the_notebook_job_finds_its_cluster_through_spark_conf_dir() -> None:
    job = JobScript(
        session_uid=UID,
        session_name="default/s1",
        bind_host="127.0.0.1",
        spark=SparkInstall("virtualenv", "/opt/venv"),
    )
    script = render_job_script(job)
    assert f'export SPARK_CONF_DIR="$HOME/".bbp-notebooks/{UID}/spark' in script
    assert 'export SPARK_LOCAL_IP="$BBPNB_BIND_HOST"' in script
    assert "SPARK_CONF_DIR" not in render_job_script(
        JobScript(session_uid=UID, session_name="s", bind_host="127.0.0.1")
    )
    assert "SPARK_LOCAL_IP" not in render_job_script(
        JobScript(
            session_uid=UID,
            session_name="s",
            bind_host="0.0.0.0",
            spark=SparkInstall("path", "/opt/spark"),
        )
    )


def test_a_rejected_cluster_job_is_not_retried_and_never_ready() -> None:
    status = spark_session(endpoint=True).status.model_copy(
        update={"spark": SparkStatus(state="Rejected")}
    )
    refused = observe.spark_rejected(
        status, "Slurm at geneva refused the Spark cluster job: x", now=NOW, generation=1
    )
    again = observe.with_spark(refused, None, None, now=NOW, generation=1)
    sparked = get(again.conditions, ConditionType.SPARK_READY)
    assert sparked is not None and sparked.reason == "SubmissionRejected"


def test_a_lost_cluster_sbatch_answer_stays_unconfirmed_until_its_job_is_found() -> None:
    status = spark_session(endpoint=True).status.model_copy(update={"spark": SparkStatus()})
    assert not observe.spark_unconfirmed_before(status)
    unsure = observe.spark_unconfirmed(
        status, "sbatch of the Spark cluster job at geneva gave no answer", now=NOW, generation=1
    )
    assert observe.spark_unconfirmed_before(unsure)
    # A poll before the job is found keeps the mark (the next attempt waits the settle time).
    polled = observe.with_spark(unsure, None, None, now=NOW, generation=1)
    sparked = get(polled.conditions, ConditionType.SPARK_READY)
    assert sparked is not None
    assert (sparked.status, sparked.reason) == ("Unknown", "SubmissionUnconfirmed")
    assert observe.spark_unconfirmed_before(polled)
    # Found by its tag: the mark goes.
    found = unsure.model_copy(update={"spark": SparkStatus(job_id=77)})
    assert not observe.spark_unconfirmed_before(found)
    recorded = observe.with_spark(found, None, None, now=NOW, generation=1)
    sparked = get(recorded.conditions, ConditionType.SPARK_READY)
    assert sparked is not None and sparked.reason != "SubmissionUnconfirmed"
