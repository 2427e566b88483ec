#!/bin/bash
# bbp-notebooks session job. All Slurm options are on the sbatch command line.
set -euo pipefail

export BBPNB_SESSION_UID=0b3c5d1e-7f00-4a8e-9d2b-1c2d3e4f5a6b
export BBPNB_SESSION_NAME='alice/my notebook'
export BBPNB_BIND_HOST=0.0.0.0
export BBPNB_ADVERTISE_HOST=''
bbpnb_callback_url=https://operator.example/v1/sessions/x/endpoint
bbpnb_callback_token=cb-token-that-must-stay-out-of-argv
bbpnb_helper='import os, sys
def alive(pid):
    try:
        os.kill(pid, 0)
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False
def post_report(body, attempts):
    url = os.environ.get("BBPNB_CALLBACK_URL")
    if not url:
        return
    import json, time, urllib.request
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json",
                 "Authorization": "Bearer " + os.environ["BBPNB_CALLBACK_TOKEN"]})
    for attempt in range(attempts):
        try:
            urllib.request.urlopen(request, timeout=10).close()
            return
        except Exception as error:
            print("bbp-notebooks: callback failed: %s" % error, file=sys.stderr)
            time.sleep(min(2 ** attempt, 8))
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
'

export JUPYTERHUB_API_TOKEN=hub-token
export JUPYTERHUB_USER=alice

set +u
module load nix/hpc/neuron
module load nix/py/jupyter
set -u

echo 'bbp-notebooks: running the kernel setup script' >&2
bash -e /dev/fd/3 3<<'BBPNB_KERNEL_SETUP_1ac7b035f21f'
python3 -m venv ~/venv
~/venv/bin/pip install ipykernel
BBPNB_KERNEL_SETUP_1ac7b035f21f

coproc bbpnb_helper { BBPNB_CALLBACK_URL="$bbpnb_callback_url" \
    BBPNB_CALLBACK_TOKEN="$bbpnb_callback_token" \
    exec python3 -I -S -c "$bbpnb_helper" serve 300; }
bbpnb_helper_pid=$bbpnb_helper_PID bbpnb_to_helper=${bbpnb_helper[1]}
read -r BBPNB_PORT <&"${bbpnb_helper[0]}"
export BBPNB_PORT
jupyterhub-singleuser --ip="${BBPNB_BIND_HOST}" --port="${BBPNB_PORT}" &
bbpnb_notebook_pid=$!
trap 'kill -TERM "$bbpnb_notebook_pid" 2>/dev/null || true' TERM INT HUP
echo "$bbpnb_notebook_pid" >&"$bbpnb_to_helper"
bbpnb_wait_exited() {
    wait "$1"
    while kill -0 "$1" 2>/dev/null; do
        wait "$1"
    done
    wait "$1"
    bbpnb_status=$?
}
set +e
bbpnb_wait_exited "$bbpnb_helper_pid"
set -e
if [ "$bbpnb_status" -ne 0 ]; then
    kill -TERM "$bbpnb_notebook_pid" 2>/dev/null || true
    wait "$bbpnb_notebook_pid" || true
    exit 1
fi

set +e
bbpnb_wait_exited "$bbpnb_notebook_pid"
exit "$bbpnb_status"
