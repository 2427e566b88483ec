"""``kubectl notebooks``: a kubectl plugin (installed as the console script kubectl-notebooks)
for devops. ``logs NAME`` prints the tail of the job's output that the operator read when the
job failed or ended early (status.logTail); ``describe NAME`` shows the session, its Slurm job
and its site in one view. Everything comes from the API server through kubectl itself, so the
caller's kubeconfig, context and RBAC apply; nothing here logs in to a Slurm site.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from bbp_notebooks.api.constants import SESSION_PLURAL, SITE_PLURAL


class PluginError(Exception):
    pass


def _get(kind: str, name: str, namespace: str | None) -> dict[str, Any]:
    argv = ["kubectl", "get", kind, name, "-o", "json"]
    if namespace:
        argv[2:2] = ["-n", namespace]
    result = subprocess.run(argv, capture_output=True, text=True, check=False, timeout=60)  # noqa: S603
    if result.returncode != 0:
        raise PluginError(result.stderr.strip() or f"kubectl get {kind} {name} failed")
    found: dict[str, Any] = json.loads(result.stdout)
    return found


def logs_text(session: dict[str, Any]) -> str:
    status = session.get("status", {})
    tail = status.get("logTail")
    if tail:
        return str(tail) + "\n"
    phase = status.get("phase", "Pending")
    return (
        f"# no job output recorded for this session (phase {phase}); the operator reads it "
        "when a job fails or ends before its time limit\n"
    )


def describe_text(session: dict[str, Any], site: dict[str, Any] | None) -> str:
    meta, spec, status = session["metadata"], session.get("spec", {}), session.get("status", {})
    resources = spec.get("resources") or {}
    lines = [
        f"Session:    {meta.get('namespace')}/{meta['name']}",
        f"  User:     {spec.get('user')}    Profile: {spec.get('profile')}    "
        f"Site asked: {spec.get('site', 'auto')}",
        f"  Phase:    {status.get('phase', '-')}",
        f"  Message:  {status.get('message', '')}",
        f"  Endpoint: {(status.get('endpoint') or {}).get('url', '-')}",
        "Job:",
        f"  Id:       {status.get('jobId', '-')}    Node: {status.get('node', '-')}",
        f"  Start:    {status.get('startTime', '-')}    End: {status.get('endTime', '-')}",
        f"  Limit:    {status.get('timeLimitMinutes', '-')} min"
        f" (asked: {resources.get('timeLimitMinutes', 'profile default')})"
        f"    Ends: {status.get('expectedEndTime', '-')}",
        "Conditions:",
    ]
    for c in status.get("conditions", []):
        lines.append(f"  {c['type']:<16} {c['status']:<8} {c['reason']:<24} {c.get('message', '')}")
    if site is not None:
        sstatus = site.get("status", {})
        reachable = next(
            (c for c in sstatus.get("conditions", []) if c["type"] == "Reachable"), None
        )
        lines += [
            f"Site:       {site['metadata']['name']}"
            f" ({site.get('spec', {}).get('displayName', '')})",
            f"  Reachable: {reachable['status'] if reachable else '-'}"
            f" {reachable.get('message', '') if reachable else ''}".rstrip(),
            f"  Slurm:    {sstatus.get('slurmVersion', '-')}    Last poll: "
            f"{sstatus.get('lastPollTime', '-')}",
            f"  Jobs:     {sstatus.get('runningJobs', '-')} running, "
            f"{sstatus.get('pendingJobs', '-')} pending;"
            f" idle nodes {sstatus.get('idleNodes', '-')}",
        ]
    tail = status.get("logTail")
    if tail:
        lines += ["Last output:", *(f"  {line}" for line in str(tail).splitlines()[-10:])]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kubectl notebooks", description=__doc__)
    parser.add_argument("-n", "--namespace", default=None, help="the session's namespace")
    commands = parser.add_subparsers(dest="command", required=True)
    for name, text in (
        ("logs", "print the job's output tail"),
        ("describe", "session, job and site in one view"),
    ):
        sub = commands.add_parser(name, help=text)
        sub.add_argument("name", help="the NotebookSession")
        sub.add_argument("-n", "--namespace", default=argparse.SUPPRESS, help="its namespace")
    args = parser.parse_args(argv)
    try:
        session = _get(SESSION_PLURAL, args.name, args.namespace)
        if args.command == "logs":
            sys.stdout.write(logs_text(session))
            return 0
        site_name = session.get("status", {}).get("site")
        site = _get(SITE_PLURAL, site_name, None) if site_name else None
        sys.stdout.write(describe_text(session, site))
    except PluginError as error:
        print(f"kubectl notebooks: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
