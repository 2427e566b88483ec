"""The batch script of a notebook session, rendered from data; every user value is shell-quoted.

Where secrets go. The session environment (e.g. ``JUPYTERHUB_API_TOKEN``) and the callback token
are written into the script body, which travels over ssh on sbatch's stdin; they are never in argv,
job names or comments. Slurm keeps the script in StateSaveLocation (readable by SlurmUser only) and
in the compute node's spool; ``scontrol show job`` does not print it, ``scontrol write
batch_script`` gives it to its owner and admins only. We chose this over a 0600 env file written
through ssh because that needs shell access on the frontend (sites that allow only Slurm commands,
and the mock, have none), and it leaves a secret on a shared file system that outlives the job.
Sites that store job scripts in slurmdbd (AccountingStoreFlags=job_script) keep the script longer;
tokens are per session and revoked when the session ends. The callback token is a shell variable,
not exported: the notebook never sees it, only the short helper that posts the address gets it.

How the operator learns the address. The job picks a free port itself, starts the notebook, waits
until it listens, then POSTs {"host", "port", "jobId"} to the operator with the per-session token,
and writes ``~/.bbp-notebooks/<uid>/connection.json`` (0600). The operator relies on the callback;
the file is a fallback read with :func:`connection_file_argv` only on sites that allow a plain
``cat`` over ssh (the mock Slurm and ForceCommand frontends run Slurm commands only).

No ``#SBATCH`` lines: every Slurm option is in sbatch's argv (see ``commands.sbatch_argv``), and the
first command follows the shebang directly, so nothing later in the script is read as a directive.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shlex
from collections.abc import Mapping, Sequence

from bbp_notebooks.slurm.helpercode import COMMON
from bbp_notebooks.slurm.values import SlurmOutputError

__all__ = [
    "DEFAULT_NOTEBOOK_ARGV",
    "Callback",
    "SparkInstall",
    "spark_conf_dir",
    "Connection",
    "JobScript",
    "connection_file_argv",
    "connection_file_path",
    "parse_connection",
    "render_job_script",
]

# "{host}" and "{port}" in an argv element become the bind host and the port the job picked.
DEFAULT_NOTEBOOK_ARGV = ("jupyterhub-singleuser", "--ip={host}", "--port={port}")

_UID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,63}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLACEHOLDER = re.compile(r"\{(host|port)\}")
_RELATIVE_PATH = re.compile(r"^(?!.*(^|/)\.\.?(/|$))[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")
# Names that change how bash or the dynamic linker behave before any of our code runs.
_FORBIDDEN_ENV = frozenset(
    {"BASH_ENV", "ENV", "SHELLOPTS", "BASHOPTS", "IFS", "PS4", "PROMPT_COMMAND", "CDPATH"}
)
_FORBIDDEN_ENV_PREFIXES = ("BBPNB_", "BASH_FUNC_", "LD_", "SLURM_")


@dataclasses.dataclass(frozen=True)
class Callback:
    """Where the job reports its address, and the per-session token that authorises it."""

    url: str
    token: str = dataclasses.field(repr=False)


@dataclasses.dataclass(frozen=True)
class SparkInstall:
    """Where Spark comes from: kind "module", "path" (SPARK_HOME) or "virtualenv"."""

    kind: str
    value: str

    def lines(self) -> list[str]:
        """Bash that makes ``$bbpnb_spark_class`` run Spark's launcher (and, for a virtualenv,
        puts its python with pyspark first on PATH)."""
        q = shlex.quote
        _check("spark installation", self.value)
        if self.kind == "module":
            if not self.value.strip():
                raise ValueError("module name must not be empty")
            return [
                "set +u",
                f"module load {q(self.value)}",
                "set -u",
                "bbpnb_spark_class=spark-class",
            ]
        if not self.value.startswith("/"):
            raise ValueError(f"not an absolute path: {self.value!r}")
        if self.kind == "path":
            return [
                f"export SPARK_HOME={q(self.value)}",
                'bbpnb_spark_class="$SPARK_HOME/bin/spark-class"',
            ]
        if self.kind == "virtualenv":
            return [
                "set +u",
                f"source {q(self.value.rstrip('/') + '/bin/activate')}",
                "set -u",
                # pyspark's wheel carries Spark itself (jars and bin/spark-class).
                "SPARK_HOME=\"$(python3 -c 'import os, pyspark; print(os.path.dirname("
                "pyspark.__file__))')\"",
                "export SPARK_HOME",
                'bbpnb_spark_class="$SPARK_HOME/bin/spark-class"',
            ]
        raise ValueError(f"unknown Spark installation kind {self.kind!r}")


def spark_conf_dir(session_uid: str) -> str:
    """Relative to the home directory: where the cluster job writes spark-defaults.conf and the
    notebook's Spark finds it (SPARK_CONF_DIR)."""
    if not _UID.match(session_uid):
        raise ValueError(f"session uid is not a safe path component: {session_uid!r}")
    return f".bbp-notebooks/{session_uid}/spark"


@dataclasses.dataclass(frozen=True)
class JobScript:
    """Everything the batch script needs; Slurm options (cores, memory, time) live in JobSpec."""

    session_uid: str
    session_name: str
    bind_host: str
    modules: Sequence[str] = ()
    kernel_setup: str = ""
    environment: Mapping[str, str] = dataclasses.field(default_factory=dict, repr=False)
    notebook_argv: Sequence[str] = DEFAULT_NOTEBOOK_ARGV
    # The host reported to the operator, "{node}" replaced by the batch host's Slurm name
    # (SLURMD_NODENAME); None: the bind host, or the node's FQDN for a wildcard.
    advertise_host: str | None = None
    callback: Callback | None = None
    start_timeout_s: int = 300
    # GSSAPI sites: the user's ticket cache, relative to the home directory, that the operator
    # wrote (0600, 0700 folder) over SFTP before sbatch and rewrites after each renewal. Only its
    # path is in the script; the job and the notebook find it through KRB5CCNAME.
    kerberos_ccache: str | None = None
    # PySpark profiles: the notebook's Spark comes from here and connects to the session's
    # cluster through SPARK_CONF_DIR (the spark-defaults.conf the cluster job writes).
    spark: SparkInstall | None = None


def _check(what: str, value: str, *, allow_newlines: bool = False) -> str:
    text = value.replace("\n", "").replace("\t", "") if allow_newlines else value
    if _CONTROL.search(text) or "\x00" in value:
        raise ValueError(f"{what} must not contain control characters: {value[:80]!r}")
    return value


def _validate(job: JobScript) -> None:
    if not _UID.match(job.session_uid):
        raise ValueError(f"session uid is not a safe path component: {job.session_uid!r}")
    _check("session name", job.session_name)
    if not job.bind_host:
        raise ValueError("bind host must not be empty")
    _check("bind host", job.bind_host)
    if job.advertise_host is not None:
        _check("advertise host", job.advertise_host)
    for module in job.modules:
        if not module.strip():
            raise ValueError("module name must not be empty")
        _check("module name", module)
    _check("kernel setup script", job.kernel_setup, allow_newlines=True)
    for name, value in job.environment.items():
        if not _ENV_NAME.match(name):
            raise ValueError(f"not an environment variable name: {name!r}")
        if name in _FORBIDDEN_ENV or name.startswith(_FORBIDDEN_ENV_PREFIXES):
            raise ValueError(f"environment variable {name} may not be set by a session")
        if "\x00" in value:
            raise ValueError(f"environment variable {name} contains a NUL byte")
    if not job.notebook_argv:
        raise ValueError("notebook command must not be empty")
    for argument in job.notebook_argv:
        if "\x00" in argument:
            raise ValueError("notebook command contains a NUL byte")
    if job.callback is not None:
        _check("callback url", job.callback.url)
        _check("callback token", job.callback.token)
        if not job.callback.url.startswith(("http://", "https://")):
            raise ValueError(f"callback url must be http(s): {job.callback.url!r}")
    if job.start_timeout_s <= 0:
        raise ValueError("start timeout must be positive")
    if job.kerberos_ccache is not None and not _RELATIVE_PATH.match(job.kerberos_ccache):
        raise ValueError(f"not a path inside the home directory: {job.kerberos_ccache!r}")


def _notebook_command(argv: Sequence[str]) -> str:
    words = []
    for argument in argv:
        pieces = []
        position = 0
        for match in _PLACEHOLDER.finditer(argument):
            if match.start() > position:
                pieces.append(shlex.quote(argument[position : match.start()]))
            variable = "BBPNB_BIND_HOST" if match[1] == "host" else "BBPNB_PORT"
            pieces.append(f'"${{{variable}}}"')
            position = match.end()
        if position < len(argument) or not pieces:
            pieces.append(shlex.quote(argument[position:]))
        words.append("".join(pieces))
    return " ".join(words)


def _heredoc_delimiter(prefix: str, text: str) -> str:
    """A delimiter that no line of ``text`` equals, stable for the same text (golden tests)."""
    lines = set(text.splitlines())
    digest = hashlib.sha256(text.encode()).hexdigest()
    for length in range(12, len(digest) + 1, 4):
        delimiter = f"{prefix}_{digest[:length]}"
        if delimiter not in lines:
            return delimiter
    raise ValueError("cannot find a heredoc delimiter for the kernel setup script")


# Runs inside the job with the node's python3 (3.6+, stdlib only), started once per job: an
# interpreter start costs 0.25-0.45 s on a loaded node, so one process does it all and its
# start-up overlaps the notebook's (``-I -S``: no site-packages scan and no PYTHON* variables,
# half the start-up here). ``serve SECS`` prints a port the bind host can listen on, reads the
# notebook's pid from stdin, waits until the notebook accepts connections (exit 1 if it died
# first or SECS passed), writes the connection file, then POSTs it to the callback (if any).
_HELPER = (
    COMMON
    + """\
import socket
host = os.environ["BBPNB_BIND_HOST"]
wildcard = host in ("0.0.0.0", "::")
def family():
    return socket.getaddrinfo(host, 0, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
if sys.argv[1:2] != ["serve"]:
    sys.exit("bbp-notebooks: unknown helper command %r" % sys.argv[1:])
fam, kind, proto, _, address = family()
with socket.socket(fam, kind, proto) as sock:
    sock.bind(address)
    port = sock.getsockname()[1]
print(port, flush=True)
import json, time, urllib.request  # while the notebook starts: not before the port is known
line = sys.stdin.readline().strip()
if not line.isdigit():
    sys.exit("bbp-notebooks: the notebook did not start")
pid, deadline = int(line), time.monotonic() + float(sys.argv[2])
target = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
while True:
    if not alive(pid):
        sys.exit("bbp-notebooks: the notebook exited before it listened")
    try:
        socket.create_connection((target, port), timeout=1).close()
        break
    except OSError:
        if time.monotonic() >= deadline:
            sys.exit("bbp-notebooks: the notebook did not listen within %s s" % sys.argv[2])
        time.sleep(0.05)
node = os.environ.get("SLURMD_NODENAME", "")
advertised = os.environ.get("BBPNB_ADVERTISE_HOST", "").replace("{node}", node)
advertised = advertised or (socket.getfqdn() if wildcard else host)
body = {"host": advertised, "port": port, "jobId": int(os.environ["SLURM_JOB_ID"])}
parent = os.path.join(os.path.expanduser("~"), ".bbp-notebooks")
folder = os.path.join(parent, os.environ["BBPNB_SESSION_UID"])
for path in (parent, folder):
    os.makedirs(path, mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)
partial = os.path.join(folder, ".connection.json.%d" % os.getpid())
with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
    json.dump(body, out)
os.replace(partial, os.path.join(folder, "connection.json"))
post_report(body, 5)
"""
)


def render_job_script(job: JobScript) -> str:
    """The complete batch script for ``sbatch`` on stdin."""
    _validate(job)
    q = shlex.quote
    lines = [
        "#!/bin/bash",
        "# bbp-notebooks session job. All Slurm options are on the sbatch command line.",
        "set -euo pipefail",
        "",
        f"export BBPNB_SESSION_UID={q(job.session_uid)}",
        f"export BBPNB_SESSION_NAME={q(job.session_name)}",
        f"export BBPNB_BIND_HOST={q(job.bind_host)}",
        f"export BBPNB_ADVERTISE_HOST={q(job.advertise_host or '')}",
        # Not exported: only the report helper gets these, in its own environment.
        f"bbpnb_callback_url={q(job.callback.url if job.callback else '')}",
        f"bbpnb_callback_token={q(job.callback.token if job.callback else '')}",
        f"bbpnb_helper={q(_HELPER)}",
    ]
    if job.environment:
        lines.append("")
        lines += [f"export {name}={q(job.environment[name])}" for name in sorted(job.environment)]
    if job.kerberos_ccache is not None:
        lines += ["", f'export KRB5CCNAME="FILE:$HOME/"{q(job.kerberos_ccache)}']
    if job.modules:
        # Environment Modules and Lmod read unset variables; nounset would abort them.
        lines += ["", "set +u"]
        lines += [f"module load {q(module)}" for module in job.modules]
        lines.append("set -u")
    if job.spark is not None:
        lines += ["", *job.spark.lines()]
        lines.append(f'export SPARK_CONF_DIR="$HOME/"{q(spark_conf_dir(job.session_uid))}')
        if job.bind_host not in ("0.0.0.0", "::"):
            # The driver (and its UI) bind where the notebook does.
            lines.append('export SPARK_LOCAL_IP="$BBPNB_BIND_HOST"')
    if job.kernel_setup.strip():
        text = job.kernel_setup if job.kernel_setup.endswith("\n") else job.kernel_setup + "\n"
        delimiter = _heredoc_delimiter("BBPNB_KERNEL_SETUP", text)
        # Quoted delimiter: the text reaches bash verbatim; fd 3 keeps the job's stdin free.
        lines += [
            "",
            "echo 'bbp-notebooks: running the kernel setup script' >&2",
            f"bash -e /dev/fd/3 3<<'{delimiter}'",
            text + delimiter,
        ]
    lines += [
        "",
        # The helper runs beside the script (a coprocess: bash keeps its pipes from the
        # notebook); only it gets the callback token, in its own environment.
        'coproc bbpnb_helper { BBPNB_CALLBACK_URL="$bbpnb_callback_url" \\',
        '    BBPNB_CALLBACK_TOKEN="$bbpnb_callback_token" \\',
        f'    exec python3 -I -S -c "$bbpnb_helper" serve {job.start_timeout_s}; }}',
        "bbpnb_helper_pid=$bbpnb_helper_PID bbpnb_to_helper=${bbpnb_helper[1]}",
        'read -r BBPNB_PORT <&"${bbpnb_helper[0]}"',
        "export BBPNB_PORT",
        f"{_notebook_command(job.notebook_argv)} &",
        "bbpnb_notebook_pid=$!",
        "trap 'kill -TERM \"$bbpnb_notebook_pid\" 2>/dev/null || true' TERM INT HUP",
        # Not in a subshell: bash closes a coprocess's pipes there. (The helper is alive here: it
        # waits on this line, having printed the port.)
        'echo "$bbpnb_notebook_pid" >&"$bbpnb_to_helper"',
        # A trapped signal interrupts wait (status > 128) while the process may still be
        # running (the helper finishing its report, the notebook shutting down): wait until it
        # has really exited, then ask once more for its own status, which bash keeps for a
        # reaped child (it may have ended between the cut-short wait and kill -0: 143 then
        # made a job whose notebook ended cleanly on SIGTERM exit 1).
        "bbpnb_wait_exited() {",
        '    wait "$1"',
        '    while kill -0 "$1" 2>/dev/null; do',
        '        wait "$1"',
        "    done",
        '    wait "$1"',
        "    bbpnb_status=$?",
        "}",
        "set +e",
        'bbpnb_wait_exited "$bbpnb_helper_pid"',
        "set -e",
        'if [ "$bbpnb_status" -ne 0 ]; then',
        '    kill -TERM "$bbpnb_notebook_pid" 2>/dev/null || true',
        '    wait "$bbpnb_notebook_pid" || true',
        "    exit 1",
        "fi",
        "",
        "set +e",
        'bbpnb_wait_exited "$bbpnb_notebook_pid"',
    ]
    if job.kerberos_ccache is not None:
        # The ticket does not outlive the notebook on the shared home.
        lines.append(f'rm -f -- "$HOME/"{q(job.kerberos_ccache)}')
    lines.append('exit "$bbpnb_status"')
    return "\n".join(lines) + "\n"


# --- the connection file, for sites where the operator may run `cat` over ssh ------------------


@dataclasses.dataclass(frozen=True)
class Connection:
    host: str
    port: int
    job_id: int


def connection_file_path(session_uid: str) -> str:
    """Relative to the home directory, where every ssh command starts."""
    if not _UID.match(session_uid):
        raise ValueError(f"session uid is not a safe path component: {session_uid!r}")
    return f".bbp-notebooks/{session_uid}/connection.json"


def connection_file_argv(session_uid: str) -> list[str]:
    return ["cat", "--", connection_file_path(session_uid)]


def parse_connection(stdout: str) -> Connection:
    try:
        data = json.loads(stdout)
        host, port, job_id = data["host"], data["port"], data["jobId"]
    except (ValueError, KeyError, TypeError):
        raise SlurmOutputError(f"not a connection file: {stdout[:200]!r}") from None
    if not isinstance(host, str) or not host or _CONTROL.search(host):
        raise SlurmOutputError(f"bad host in connection file: {host!r}")
    for value in (port, job_id):
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise SlurmOutputError(f"bad number in connection file: {value!r}")
    if port > 65535:
        raise SlurmOutputError(f"bad port in connection file: {port!r}")
    return Connection(host=host, port=port, job_id=job_id)
