"""The emulator's ``srun``: a job step as real processes on this machine, one per task.

Written into each job's spool (``bin/srun``, first on the batch script's PATH) and run by the
node's python3, so it must be standalone (stdlib only). What it does, as Slurm 22.05 does within
an allocation: ``-n/--ntasks`` tasks (default: the job's SLURM_NTASKS) each with SLURM_PROCID,
SLURM_LOCALID, SLURM_NODEID, SLURM_STEP_ID, SLURM_NTASKS; waits for all and exits with the
highest task status ("srun: error: <node>: task <n>: Exited with exit code <c>" on stderr);
``--kill-on-bad-exit`` ends the others when one fails; SIGTERM/SIGINT are passed to the tasks.
Options it does not know are refused (exit 255, as srun does), so nothing is silently ignored.
"""

from __future__ import annotations

SCRIPT = r"""#!/usr/bin/env python3
import os, signal, subprocess, sys, time
VALUED = {"-n": "ntasks", "--ntasks": "ntasks", "-c": "cpus", "--cpus-per-task": "cpus",
          "-N": "nodes", "--nodes": "nodes", "--mem": "mem", "-J": "name", "--job-name": "name"}
FLAGS = {"--kill-on-bad-exit", "-K", "--kill-on-bad-exit=1", "-K1"}
args, options, kill_on_bad_exit = sys.argv[1:], {}, False
while args and args[0].startswith("-"):
    word = args.pop(0)
    if word == "--":
        break
    if word in FLAGS:
        kill_on_bad_exit = True
        continue
    name, _, value = word.partition("=")
    if name not in VALUED or (not value and not args):
        print("srun: unrecognized option '%s'\nTry \"srun --help\" for more information"
              % word, file=sys.stderr)
        sys.exit(255)
    options[VALUED[name]] = value or args.pop(0)
if not args:
    sys.exit("srun: fatal: No command given to execute.")
if "SLURM_JOB_ID" not in os.environ:
    sys.exit("srun: error: the emulator runs steps only inside a job")
ntasks = int(options.get("ntasks") or os.environ.get("SLURM_NTASKS") or 1)
node = os.environ.get("SLURMD_NODENAME", "localhost")
step = os.environ.get("BBPNB_MOCK_NEXT_STEP", "0")
tasks = []
for rank in range(ntasks):
    env = dict(os.environ, SLURM_PROCID=str(rank), SLURM_LOCALID=str(rank), SLURM_NODEID="0",
               SLURM_STEP_ID=step, SLURM_STEPID=step, SLURM_NTASKS=str(ntasks),
               SLURM_NPROCS=str(ntasks), SLURM_STEP_NUM_TASKS=str(ntasks))
    if "cpus" in options:
        env["SLURM_CPUS_PER_TASK"] = options["cpus"]
    tasks.append(subprocess.Popen(args, env=env))
def forward(signum, _frame):
    for task in tasks:
        if task.poll() is None:
            task.send_signal(signum)
for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
    signal.signal(signum, forward)
worst, done = 0, set()
while len(done) < len(tasks):
    for rank, task in enumerate(tasks):
        if rank in done or task.poll() is None:
            continue
        done.add(rank)
        code = task.returncode if task.returncode >= 0 else 128 - task.returncode
        if code:
            print("srun: error: %s: task %d: Exited with exit code %d" % (node, rank, code),
                  file=sys.stderr)
            worst = max(worst, code)
            if kill_on_bad_exit:
                forward(signal.SIGKILL, None)
    time.sleep(0.05)
sys.exit(worst)
"""
