"""The batch script of a session's Spark cluster (its companion job), rendered from data.

The batch step starts the Spark master on the job's first node; ``srun`` starts one worker per
task. Once every worker has registered (the master's own JSON view says so), the job writes
``~/.bbp-notebooks/<uid>/spark/spark-defaults.conf`` (``spark.master`` and the profile's settings)
for the notebook's ``SparkSession.builder.getOrCreate()``, and POSTs the master and UI addresses
to the operator with its own per-job token. The same secrets rules as the notebook's script
(jobscript.py): the token is in the script body (sbatch's stdin), never in argv; it is a shell
variable given only to the report helper. Spark daemons bind to the site's notebook address
(``SPARK_LOCAL_IP``/``--host``), never to a wildcard when the site names one.

Who may use the cluster. A Spark standalone master runs whatever application registers with it,
as the job's user: without authentication any user who can reach the compute node could run code
as the session's owner. Before the master starts, the job draws a secret of its own
(``secrets.token_hex``, in the node's python3) into ``daemon.conf`` next to spark-defaults.conf
(0600 in a 0700 folder of the owner's home; never in argv, the environment or the job's output);
the master and every worker read it with ``--properties-file`` and require it
(``spark.authenticate``), and spark-defaults.conf carries it to the notebook's driver. The web
UIs stay readable (Spark's UI has no authentication of its own here) but cannot kill
(``spark.ui.killEnabled false``). Both files are removed when the cluster job ends.
"""

from __future__ import annotations

import dataclasses
import json
import re
import shlex
from collections.abc import Sequence

from bbp_notebooks.slurm.helpercode import COMMON
from bbp_notebooks.slurm.jobscript import (
    _UID,
    Callback,
    SparkInstall,
    _check,
    spark_conf_dir,
)

__all__ = ["SparkJob", "render_spark_script"]

_PROPERTY = re.compile(r"^spark\.[A-Za-z0-9._-]+$")
# The Spark daemons' own heap (master, worker): small, the executors get the worker's memory.
DAEMON_MEMORY_MIB = 256


@dataclasses.dataclass(frozen=True)
class SparkJob:
    session_uid: str
    session_name: str
    install: SparkInstall
    workers: int
    cores_per_worker: int
    memory_mib_per_worker: int
    # "{node}" is replaced by each task's SLURMD_NODENAME: where the daemons bind and are reached.
    host_template: str
    settings: Sequence[tuple[str, str]] = ()
    callback: Callback | None = None
    start_timeout_s: int = 300

    @property
    def executor_memory_mib(self) -> int:
        return max(128, self.memory_mib_per_worker - DAEMON_MEMORY_MIB)


def _validate(job: SparkJob) -> None:
    if not _UID.match(job.session_uid):
        raise ValueError(f"session uid is not a safe path component: {job.session_uid!r}")
    _check("session name", job.session_name)
    _check("host template", job.host_template)
    if not job.host_template or job.host_template in ("0.0.0.0", "::"):
        raise ValueError("Spark daemons need an address to bind to, not a wildcard")
    for number in (job.workers, job.cores_per_worker, job.memory_mib_per_worker):
        if isinstance(number, bool) or number <= 0:
            raise ValueError(f"not a positive number: {number!r}")
    for name, value in job.settings:
        if not _PROPERTY.match(name):
            raise ValueError(f"not a Spark property: {name!r}")
        _check(f"Spark setting {name}", value)
    if job.callback is not None:
        _check("callback url", job.callback.url)
        _check("callback token", job.callback.token)
        if not job.callback.url.startswith(("http://", "https://")):
            raise ValueError(f"callback url must be http(s): {job.callback.url!r}")


# Runs with the node's python3 (stdlib only). Commands:
#   free-port                 print a port the daemon host can listen on
#   wait-listening PID PORT SECS
#   secret                    draw the cluster's secret into daemon.conf (0600), print its path
#   report                    wait for the workers, write spark-defaults.conf, POST the callback
_HELPER = (
    COMMON
    + """\
import json, secrets, socket, time, urllib.request
host = os.environ["BBPNB_SPARK_HOST"]
folder = os.path.join(os.path.expanduser("~"), os.environ["BBPNB_SPARK_CONF_DIR"])
def private_folder():
    parent = os.path.dirname(folder)
    for path in (os.path.dirname(parent), parent, folder):
        os.makedirs(path, mode=0o700, exist_ok=True)
        os.chmod(path, 0o700)
def write_private(name, lines):
    partial = os.path.join(folder, ".%s.%d" % (name, os.getpid()))
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
        out.write("\\n".join(lines) + "\\n")
    os.replace(partial, os.path.join(folder, name))
command = sys.argv[1]
if command == "free-port":
    with socket.socket() as sock:
        sock.bind((host, 0))
        print(sock.getsockname()[1])
elif command == "wait-listening":
    pid, port, deadline = int(sys.argv[2]), int(sys.argv[3]), time.monotonic() + float(sys.argv[4])
    while time.monotonic() < deadline:
        if not alive(pid):
            sys.exit("bbp-notebooks: the Spark master exited before it listened")
        try:
            socket.create_connection((host, port), timeout=1).close()
            sys.exit(0)
        except OSError:
            time.sleep(0.2)
    sys.exit("bbp-notebooks: the Spark master did not listen within %s s" % sys.argv[4])
elif command == "secret":
    private_folder()
    write_private("daemon.conf", ["spark.authenticate true",
                                  "spark.authenticate.secret " + secrets.token_hex(32),
                                  "spark.ui.killEnabled false"])
    print(os.path.join(folder, "daemon.conf"))
elif command == "report":
    port, ui_port = int(os.environ["BBPNB_MASTER_PORT"]), int(os.environ["BBPNB_UI_PORT"])
    wanted, deadline = int(os.environ["BBPNB_WORKERS"]), time.monotonic() + float(sys.argv[2])
    alive_workers = 0
    while True:
        try:
            url = "http://%s:%d/json/" % (host, ui_port)
            with urllib.request.urlopen(url, timeout=5) as answer:
                view = json.load(answer)
            alive_workers = sum(1 for w in view.get("workers", []) if w.get("state") == "ALIVE")
        except Exception as error:
            print("bbp-notebooks: master view not readable yet: %s" % error, file=sys.stderr)
        if alive_workers >= wanted:
            break
        if time.monotonic() > deadline:
            sys.exit("bbp-notebooks: %d of %d Spark workers registered in %s s"
                     % (alive_workers, wanted, sys.argv[2]))
        time.sleep(0.5)
    master = "spark://%s:%d" % (host, port)
    private_folder()
    with open(os.path.join(folder, "daemon.conf")) as daemon:
        shared = [line.strip() for line in daemon if line.startswith("spark.authenticate")]
    lines = ["spark.master " + master] + shared + json.loads(os.environ["BBPNB_SPARK_SETTINGS"])
    write_private("spark-defaults.conf", lines)
    print("bbp-notebooks: Spark master %s, %d workers, UI http://%s:%d"
          % (master, alive_workers, host, ui_port), file=sys.stderr)
    post_report({"host": host, "port": port, "uiPort": ui_port, "workers": alive_workers,
                 "jobId": int(os.environ["SLURM_JOB_ID"])}, 8)
else:
    sys.exit("bbp-notebooks: unknown helper command %r" % command)
"""
)

# One worker per task; each binds to its own node's address.
_WORKER = (
    'export BBPNB_SPARK_HOST="${BBPNB_SPARK_HOST_TEMPLATE//\\{node\\}/$SLURMD_NODENAME}"; '
    'export SPARK_LOCAL_IP="$BBPNB_SPARK_HOST"; '
    'exec "$0" org.apache.spark.deploy.worker.Worker --host "$BBPNB_SPARK_HOST" '
    '--cores "$1" --memory "$2"m --webui-port 0 --work-dir "$3/worker-$SLURM_PROCID" '
    '--properties-file "$5" "$4"'
)


def render_spark_script(job: SparkJob) -> str:
    """The complete batch script of the Spark cluster job, for ``sbatch`` on stdin."""
    _validate(job)
    q = shlex.quote
    # Executors fill a worker unless the profile says otherwise (Spark's own default, 1 GiB,
    # would get no executor at all on a smaller worker).
    defaults = {
        "spark.executor.memory": f"{job.executor_memory_mib}m",
        "spark.executor.cores": str(job.cores_per_worker),
    }
    chosen = dict(job.settings)
    settings = [f"{name} {value}" for name, value in {**defaults, **chosen}.items()]
    lines = [
        "#!/bin/bash",
        "# bbp-notebooks Spark cluster job. All Slurm options are on the sbatch command line.",
        "set -euo pipefail",
        "",
        f"export BBPNB_SESSION_UID={q(job.session_uid)}",
        f"export BBPNB_SESSION_NAME={q(job.session_name)}",
        f"export BBPNB_SPARK_HOST_TEMPLATE={q(job.host_template)}",
        'export BBPNB_SPARK_HOST="${BBPNB_SPARK_HOST_TEMPLATE//\\{node\\}/$SLURMD_NODENAME}"',
        f"export BBPNB_SPARK_CONF_DIR={q(spark_conf_dir(job.session_uid))}",
        f"export BBPNB_SPARK_SETTINGS={q(json.dumps(settings))}",
        f"export BBPNB_WORKERS={job.workers}",
        # Not exported: only the report helper gets these, in its own environment.
        f"bbpnb_callback_url={q(job.callback.url if job.callback else '')}",
        f"bbpnb_callback_token={q(job.callback.token if job.callback else '')}",
        f"bbpnb_helper={q(_HELPER)}",
        "",
        *job.install.lines(),
        f"export SPARK_DAEMON_MEMORY={DAEMON_MEMORY_MIB}m",
        'export SPARK_LOCAL_IP="$BBPNB_SPARK_HOST"',
        'export SPARK_MASTER_HOST="$BBPNB_SPARK_HOST"',
        'bbpnb_work="$(mktemp -d "${TMPDIR:-/tmp}/bbpnb-spark.XXXXXX")"',
        'bbpnb_conf="$HOME/$BBPNB_SPARK_CONF_DIR/spark-defaults.conf"',
        'bbpnb_daemon_conf="$HOME/$BBPNB_SPARK_CONF_DIR/daemon.conf"',
        # The notebook must never find the address of a cluster that is gone.
        "bbpnb_pids=()",
        "bbpnb_stop() {",
        '    kill -TERM "${bbpnb_pids[@]}" 2>/dev/null || true',
        '    rm -f -- "$bbpnb_conf" "$bbpnb_daemon_conf"',
        "}",
        "trap bbpnb_stop EXIT",
        "trap 'exit 143' TERM INT HUP",
        # The secret the master and workers require (see the module's docstring).
        'bbpnb_daemon_conf="$(python3 -c "$bbpnb_helper" secret)"',
        'BBPNB_MASTER_PORT="$(python3 -c "$bbpnb_helper" free-port)"',
        'BBPNB_UI_PORT="$(python3 -c "$bbpnb_helper" free-port)"',
        "export BBPNB_MASTER_PORT BBPNB_UI_PORT",
        '"$bbpnb_spark_class" org.apache.spark.deploy.master.Master --host "$BBPNB_SPARK_HOST" '
        '--port "$BBPNB_MASTER_PORT" --webui-port "$BBPNB_UI_PORT" '
        '--properties-file "$bbpnb_daemon_conf" &',
        "bbpnb_pids+=($!)",
        f'python3 -c "$bbpnb_helper" wait-listening "${{bbpnb_pids[0]}}" "$BBPNB_MASTER_PORT" '
        f"{job.start_timeout_s}",
        f"srun --ntasks={job.workers} --cpus-per-task={job.cores_per_worker} --kill-on-bad-exit=1 "
        f'bash -c {q(_WORKER)} "$bbpnb_spark_class" {job.cores_per_worker} '
        f'{job.executor_memory_mib} "$bbpnb_work" '
        '"spark://$BBPNB_SPARK_HOST:$BBPNB_MASTER_PORT" "$bbpnb_daemon_conf" &',
        "bbpnb_pids+=($!)",
        'BBPNB_CALLBACK_URL="$bbpnb_callback_url" BBPNB_CALLBACK_TOKEN="$bbpnb_callback_token" \\',
        f'    python3 -c "$bbpnb_helper" report {job.start_timeout_s}',
        "",
        # The cluster lives until the master or the workers' step ends (or the job is cancelled).
        "set +e",
        'wait -n "${bbpnb_pids[@]}"',
        "bbpnb_status=$?",
        'echo "bbp-notebooks: the Spark cluster stopped (status $bbpnb_status)" >&2',
        'exit "$bbpnb_status"',
    ]
    return "\n".join(lines) + "\n"
