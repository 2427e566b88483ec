"""PySpark profiles on real Slurm 22.05 with PyPI's pyspark on the machine's OpenJDK: the session's
Spark cluster is a second job (master + workers via srun) as the same user; the notebook's
``SparkSession.builder.getOrCreate()`` finds it with no URL; Ready needs both jobs; deleting
cancels both; a cluster that dies is reported; a crash right after the second sbatch still
leaves exactly two jobs."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_real_slurm import RealStack, site_object

from bbp_notebooks.api.constants import API_VERSION
from bbp_notebooks.devtools.admission import admin_annotations, install_admission_policy
from bbp_notebooks.devtools.controlplane import ControlPlane, repo_root
from bbp_notebooks.devtools.stack import OPERATOR_NAMESPACE, USER_CA_SECRET, Operator, wait_for
from bbp_notebooks.operator.planning import companion_job_name, job_name
from fixtures.realslurm import RealSlurm

pytestmark = [pytest.mark.kube, pytest.mark.realslurm]

# Built by scripts/install-test-deps.sh with the system python3 (the one jobs run): pyspark from
# PyPI (its wheel carries Spark) and numpy, readable by the test users.
SPARK_VENV = Path("/opt/bbp-notebooks/spark-venv")

# The notebook for these tests: a small server in the notebook job whose /spark runs the
# original talk's example in the job's own environment (SPARK_CONF_DIR, the venv's python).
SPARK_NOTEBOOK = [
    "python3",
    "-c",
    "import http.server, json, sys, time\n"
    "class Handler(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        body = b'ok'\n"
    "        if self.path == '/spark':\n"
    "            started = time.monotonic()\n"
    "            import numpy\n"
    "            from pyspark.sql import SparkSession\n"
    "            spark = SparkSession.builder.getOrCreate()\n"
    "            sc = spark.sparkContext\n"
    "            mod = lambda x: (x, numpy.mod(x, 2))\n"
    "            result = sc.parallelize(range(1000)).map(mod).take(10)\n"
    "            body = json.dumps({'result': [[a, int(b)] for a, b in result],\n"
    "                'master': sc.master, 'appId': sc.applicationId,\n"
    "                'seconds': time.monotonic() - started}).encode()\n"
    "        self.send_response(200)\n"
    "        self.end_headers()\n"
    "        self.wfile.write(body)\n"
    "http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), Handler).serve_forever()\n",
    "{host}",
    "{port}",
]


def pyspark_profile(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NotebookProfile",
        "metadata": {"name": name},
        "spec": {
            "displayName": "PySpark",
            "cores": 1,
            "memoryMiB": 1024,
            "defaultTimeLimitMinutes": 20,
            "spark": {
                "workers": 2,
                "coresPerWorker": 1,
                "memoryMiBPerWorker": 768,
                "extraMinutes": 5,
                "installation": {"virtualenv": str(SPARK_VENV)},
                "settings": [{"name": "spark.ui.showConsoleProgress", "value": "false"}],
            },
        },
    }


def session(name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NotebookSession",
        "metadata": {"name": name, "namespace": "default", "annotations": admin_annotations()},
        "spec": {"user": "alice", "profile": "pyspark", "site": "geneva"},
    }


@pytest.fixture(scope="module")
def real(real_slurm: RealSlurm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    assert (SPARK_VENV / "bin" / "python3").exists(), (
        f"{SPARK_VENV} is missing: scripts/install-test-deps.sh builds it"
    )
    workdir = tmp_path_factory.mktemp("real-spark")
    cp = ControlPlane(workdir / "controlplane")
    cp.start()
    try:
        cp.install_crds(repo_root() / "crds")
        install_admission_policy(cp, protected_users=["bob"])
        geneva = real_slurm.sites["geneva"]
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": USER_CA_SECRET, "namespace": OPERATOR_NAMESPACE},
                "data": {"ca": base64.b64encode(Path(geneva.user_ca_key).read_bytes()).decode()},
            },  # fmt: skip
            site_object("geneva", geneva),
            pyspark_profile("pyspark"),
        ]
        stack = RealStack(cp, Operator(workdir / "operator", cp.kubeconfig), real_slurm)
        result = stack.kubectl(
            "apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects)
        )
        assert result.returncode == 0, result.stderr
        stack.operator.settings.update(
            {"BBP_NOTEBOOK_COMMAND": json.dumps(SPARK_NOTEBOOK), "BBP_ORPHAN_GRACE_SECONDS": "5"}
        )
        stack.operator.start()
        yield stack
    finally:
        if "stack" in locals():
            stack.operator.stop()
        cp.stop()


def slurm(real: RealStack, *argv: str, user: str | None = None) -> str:
    site = real.slurm.sites["geneva"]
    prefix = ["runuser", "-u", user, "--"] if user else []
    result = subprocess.run(
        [*prefix, "env", f"SLURM_CONF={site.slurm_conf}", "PATH=/usr/bin:/bin", *argv],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def job(real: RealStack, job_id: int) -> tuple[str, str]:
    """(state, owner) of a job as slurmctld has it; ("", "") once it is forgotten."""
    out = slurm(real, "squeue", "-h", "--states=all", "-j", str(job_id), "-o", "%T %u").split()
    return (out[0], out[1]) if len(out) == 2 else ("", "")


def tagged(real: RealStack, uid: str) -> list[tuple[int, str]]:
    """Unfinished jobs carrying either of the session's tags: (id, name)."""
    installation = real.operator.settings.get("BBP_INSTALLATION_ID", "default")
    names = f"{job_name(installation, uid)},{companion_job_name(installation, uid)}"
    out = slurm(real, "squeue", "-h", "--states=PENDING,RUNNING,CONFIGURING", "-n", names,
                "-o", "%A %j")  # fmt: skip
    return sorted((int(a), b) for a, b in (line.split() for line in out.splitlines()))


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def ready(real: RealStack, name: str, timeout: float = 240) -> dict[str, Any]:
    try:
        return wait_for(
            lambda: (s := real.status(name)).get("phase") == "Ready" and s,
            timeout, f"session {name} Ready with its Spark cluster", 0.5,
        )  # fmt: skip
    except TimeoutError as error:
        raise AssertionError(
            f"{error}: {real.status(name)}\n{real.operator.log_path.read_text()[-3000:]}"
        ) from None


def delete(real: RealStack, name: str) -> None:
    assert real.kubectl("delete", "notebooksession", name, "--wait=false").returncode == 0
    wait_for(lambda: not real.status(name), 90, f"session {name} to go", 0.5)


def uid_of(real: RealStack, name: str) -> str:
    found = json.loads(real.kubectl("get", "notebooksession", name, "-o", "json").stdout)
    return str(found["metadata"]["uid"])


# bob's attempt: a driver pointed at alice's master with no secret, given 40 s (the master
# closes an unauthenticated connection; the driver would retry for about a minute, then give up).
INTRUDER = (
    "import sys\n"
    "from pyspark.sql import SparkSession\n"
    "spark = SparkSession.builder.master(sys.argv[1]).appName('intruder')"
    ".config('spark.ui.enabled', 'false').getOrCreate()\n"
    "print('RESULT', spark.sparkContext.parallelize(range(3)).map(lambda x: x).collect(),"
    " flush=True)\n"
)


def intrude(master_url: str) -> str:
    """What bob's driver printed (stdout and stderr) in its 40 s."""
    try:
        result = subprocess.run(
            ["runuser", "-u", "bob", "--", "env", "HOME=/tmp", "SPARK_LOCAL_IP=127.0.0.1",
             str(SPARK_VENV / "bin" / "python3"), "-c", INTRUDER, master_url],
            capture_output=True, text=True, timeout=40, check=False, cwd="/tmp",
        )  # fmt: skip
        return result.stdout + result.stderr
    except subprocess.TimeoutExpired as expired:
        out = [expired.stdout or b"", expired.stderr or b""]
        return "".join(x.decode() if isinstance(x, bytes) else x for x in out)
    finally:  # the driver's JVM outlives the python that started it
        subprocess.run(
            ["pkill", "-KILL", "-u", "bob", "-f", "pyspark|INTRUDER|intruder"], check=False
        )


def test_a_pyspark_session_runs_the_talks_example_on_its_own_cluster(real: RealStack) -> None:
    created = time.monotonic()
    assert real.kubectl("apply", "-f", "-", stdin=json.dumps(session("spark"))).returncode == 0
    status = ready(real, "spark")
    ready_after = time.monotonic() - created
    spark = status["spark"]
    assert condition(status, "SparkReady")["status"] == "True"
    assert condition(status, "Ready")["status"] == "True"
    assert job(real, status["jobId"]) == ("RUNNING", "alice")
    assert job(real, spark["jobId"]) == ("RUNNING", "alice")
    assert spark["workersRegistered"] == 2
    assert spark["masterURL"].startswith("spark://127.0.0.1:")
    assert spark["uiURL"].startswith("http://127.0.0.1:")

    # In the notebook: no URL typed; the session's cluster runs the job.
    with urllib.request.urlopen(status["endpoint"]["url"] + "/spark", timeout=180) as answer:  # noqa: S310
        ran = json.loads(answer.read())
    usable_after = time.monotonic() - created
    assert ran["result"] == [[x, x % 2] for x in range(10)]
    assert ran["master"] == spark["masterURL"]
    print(
        f"\nStart->Ready {ready_after:.1f} s; Start->usable SparkSession (first result) "
        f"{usable_after:.1f} s (getOrCreate + take(10) {ran['seconds']:.1f} s)"
    )

    # The master's own view: the notebook's application and both workers.
    with urllib.request.urlopen(spark["uiURL"] + "/json/", timeout=10) as answer:  # noqa: S310
        view = json.loads(answer.read())
    assert ran["appId"] in [app["id"] for app in view["activeapps"]], view
    assert len([w for w in view["workers"] if w["state"] == "ALIVE"]) == 2, view
    assert all(w["host"] == "127.0.0.1" for w in view["workers"]), view

    # Another user (bob) on the same network, without the cluster's secret, cannot run code on
    # alice's cluster: the master never registers his application and his job gets no result.
    intruder = intrude(spark["masterURL"])
    assert "RESULT" not in intruder, intruder[-3000:]
    address = spark["masterURL"].removeprefix("spark://")
    assert f"Failed to connect to master {address}" in intruder, intruder[-3000:]
    assert "Expected SaslMessage" in intruder, intruder[-3000:]  # refused for want of the secret
    with urllib.request.urlopen(spark["uiURL"] + "/json/", timeout=10) as answer:  # noqa: S310
        view = json.loads(answer.read())
    apps = [app["id"] for app in view["activeapps"] + view["completedapps"]]
    assert apps == [ran["appId"]], view

    # The delete itself ends both: the finalizer goes only once Slurm confirmed both ends (not
    # later, by the orphan sweep).
    delete(real, "spark")
    ended = {"CANCELLED", "COMPLETING", ""}
    assert {job(real, status["jobId"])[0], job(real, spark["jobId"])[0]} <= ended


def test_a_cluster_that_dies_is_reported_on_the_session(real: RealStack) -> None:
    assert real.kubectl("apply", "-f", "-", stdin=json.dumps(session("dies"))).returncode == 0
    status = ready(real, "dies")
    spark_id = status["spark"]["jobId"]
    slurm(real, "scancel", str(spark_id), user="alice")
    try:
        status = wait_for(
            lambda: condition(s := real.status("dies"), "SparkReady").get("reason")
            == "SparkClusterEnded" and s.get("spark", {}).get("logTail") and s,
            60, "the ended cluster to be reported", 0.5,
        )  # fmt: skip
    except TimeoutError as error:
        raise AssertionError(f"{error}: {real.status('dies')}") from None
    assert condition(status, "SparkReady")["status"] == "False"
    assert "CANCELLED" in condition(status, "SparkReady")["message"]
    ready_condition = condition(status, "Ready")
    assert (ready_condition["status"], ready_condition["reason"]) == ("False", "SparkClusterEnded")
    assert status["phase"] == "Running"
    assert "Spark master" in status["spark"]["logTail"]  # the cluster's own output
    assert job(real, status["jobId"])[0] == "RUNNING"  # the notebook itself still runs
    delete(real, "dies")


def test_a_crash_after_the_second_sbatch_still_leaves_exactly_two_jobs(real: RealStack) -> None:
    real.operator.stop()
    real.operator.settings["BBP_FAILPOINTS"] = '["after-spark-sbatch"]'
    real.operator.start()
    try:
        assert real.kubectl("apply", "-f", "-", stdin=json.dumps(session("crash"))).returncode == 0
        child = real.operator.child
        assert child is not None
        wait_for(lambda: child.process.poll() is not None, 60, "the failpoint to kill it", 0.5)
        assert child.process.returncode == 137
    finally:
        real.operator.settings.pop("BBP_FAILPOINTS")
    uid = uid_of(real, "crash")
    assert len(tagged(real, uid)) == 2  # the notebook's job and the cluster's, no status yet
    real.operator.start()
    status = ready(real, "crash")
    jobs = tagged(real, uid)
    assert [job_id for job_id, _ in jobs] == sorted([status["jobId"], status["spark"]["jobId"]])
    time.sleep(8)  # past the orphan/duplicate grace (5 s): nothing else appears, nothing is lost
    assert tagged(real, uid) == jobs
    delete(real, "crash")
    assert tagged(real, uid) == []
