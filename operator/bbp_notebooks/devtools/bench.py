"""`make bench`: the operator at centre scale, each figure next to its reference from the same run.

One run starts a real kube-apiserver + etcd, the two emulated Slurm sites and the operator (as
`make dev` and the tests wire them), then measures in this order: a bare client's status PATCH
rate; RUNNING -> Ready latency with no other sessions; a burst of sessions created at once (time
to submitted, duplicates, the operator's status-write rate); the latency again with the burst
standing; N sessions in steady state (Slurm commands per poll and site, poll duration, RSS, CPU,
API requests); an operator restart over them. Last, without the stack, the busy-queue comparison
on real Slurm (devtools.bench_busy). Prints one table and writes JSON.

    python -m bbp_notebooks.devtools.bench --sessions 10000 --burst 1000   # the quiet full run

Every size is an option; every wait has a deadline.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bbp_notebooks.api.constants import GROUP, JOB_NAME_PREFIX, VERSION
from bbp_notebooks.devtools import admission, bench_busy
from bbp_notebooks.devtools.controlplane import ControlPlane, repo_root
from bbp_notebooks.devtools.stack import (
    MONITOR_USER,
    Keys,
    MockSlurm,
    Operator,
    install_objects,
)
from bbp_notebooks.devtools.waiting import wait_until

PLURAL = "notebooksessions"
# The notebook: an HTTP server on the address the job script chose (its start-up is part of
# RUNNING -> Ready, as a real notebook's would be).
NOTEBOOK = ["python3", "-m", "http.server", "--bind", "{host}", "{port}"]
REPORTED = re.compile(r"^\[([0-9-]+ [0-9:,]+)\] .* session ([0-9a-f-]{36}): job \d+ reported ")
WRITE_VERBS = ("POST", "PUT", "PATCH", "DELETE")
CREATE_THREADS = 8
PATCH_THREADS = 16  # as many as the operator's own status writes in flight (sites.py)


@dataclasses.dataclass(frozen=True)
class Sizes:
    sessions: int = 2000  # total at the end of the steady-state step (burst included)
    burst: int = 1000
    ready: int = 8  # sessions whose RUNNING -> Ready latency is measured, per load
    poll_interval: int = 5
    steady_seconds: float = 30.0
    busy_other_jobs: int = 2000
    busy_ours: int = 100
    busy_repeats: int = 5
    skip_busy: bool = False
    # 2: the operator as two shards by site (operator/shards.py), geneva's placing `auto`
    # sessions; per-process figures are then the larger shard's, CPU and writes both together.
    shards: int = 1
    deadline_seconds: float = 3600.0  # for any one wait


# --- Prometheus text ------------------------------------------------------------------------


def samples(text: str) -> Iterator[tuple[str, dict[str, str], float]]:
    """(name, labels, value) of every sample in Prometheus' text format."""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        head, _, value = line.rpartition(" ")
        name, _, rest = head.partition("{")
        labels: dict[str, str] = {}
        for part in rest.rstrip("}").split('",'):
            key, _, raw = part.partition('="')
            if key:
                labels[key.strip(",")] = raw.rstrip('"')
        try:
            yield name, labels, float(value)
        except ValueError:
            continue


def total(text: str, name: str, **match: str) -> float:
    return sum(
        v for n, labels, v in samples(text)
        if n == name and all(labels.get(k) == want for k, want in match.items())
    )  # fmt: skip


def histogram_quantile(before: str, after: str, name: str, q: float) -> float | None:
    """The q-quantile of the observations between two scrapes (Prometheus' interpolation)."""
    buckets: dict[float, float] = {}
    for text, sign in ((after, 1), (before, -1)):
        for n, labels, v in samples(text):
            if n == f"{name}_bucket":
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + sign * v
    ordered = sorted(buckets.items())
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower, below = 0.0, 0.0
    for le, count in ordered:
        if count >= rank:
            if le == float("inf"):
                return lower
            return lower + (le - lower) * (rank - below) / max(count - below, 1e-9)
        lower, below = le, count
    return lower


def apiserver_requests(text: str, verbs: tuple[str, ...] | None = None, **match: str) -> float:
    """Resource requests the API server served (its own counter; /metrics and other
    non-resource requests are left out)."""
    return sum(
        v for n, labels, v in samples(text)
        if n == "apiserver_request_total" and labels.get("resource")
        and (verbs is None or labels.get("verb") in verbs)
        and all(labels.get(k) == want for k, want in match.items())
    )  # fmt: skip


# --- the process --------------------------------------------------------------------------


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# --- sessions -------------------------------------------------------------------------------


def session_body(name: str, namespace: str, site: str, user: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "NotebookSession",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "annotations": admission.admin_annotations(),
        },
        # lugano requires an account; both users have proj-b at both emulated sites.
        "spec": {"user": user, "profile": "bluepy", "site": site, "account": "proj-b"},
    }


class Watcher:
    """Every NotebookSession event as it arrives (a thread): when each session first showed a
    job id, an endpoint, or any status change after a moment asked for."""

    def __init__(self, plane: ControlPlane) -> None:
        self.plane = plane
        self.lock = threading.Lock()
        self.job: dict[str, float] = {}
        self.endpoint: dict[str, float] = {}
        self.status: dict[str, str] = {}
        self.changed: dict[str, list[float]] = {}
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()

    def _run(self) -> None:
        from kubernetes import client, watch

        api = self.plane.api_client()
        custom = client.CustomObjectsApi(api)
        version = ""
        while not self.stopping.is_set():
            stream = watch.Watch()  # type: ignore[no-untyped-call]
            try:
                for event in stream.stream(  # type: ignore[no-untyped-call]
                    custom.list_cluster_custom_object, GROUP, VERSION, PLURAL,
                    resource_version=version, timeout_seconds=60,
                ):  # fmt: skip
                    self._seen(event["object"], time.time())
                    version = event["object"]["metadata"]["resourceVersion"]
                    if self.stopping.is_set():
                        break
            except Exception:  # a watch that expired or broke: start again from the list
                version = ""
                time.sleep(0.5)

    def _seen(self, body: Mapping[str, Any], now: float) -> None:
        key = f"{body['metadata']['namespace']}/{body['metadata']['name']}"
        status = body.get("status") or {}
        text = json.dumps(status, sort_keys=True)
        with self.lock:
            if status.get("jobId") is not None:
                self.job.setdefault(key, now)
            if status.get("endpoint"):
                self.endpoint.setdefault(key, now)
            if self.status.get(key) not in (None, text):
                self.changed.setdefault(key, []).append(now)
            self.status[key] = text

    def count(self, mapping: str, keys: list[str]) -> int:
        with self.lock:
            found = getattr(self, mapping)
            return sum(1 for k in keys if k in found)

    def changes_after(self, keys: list[str], moment: float) -> dict[str, float]:
        with self.lock:
            return {
                k: next(t for t in self.changed[k] if t >= moment)
                for k in keys
                if any(t >= moment for t in self.changed.get(k, []))
            }


@dataclasses.dataclass
class Bench:
    sizes: Sizes
    workdir: Path
    plane: ControlPlane | None = None
    mock: MockSlurm | None = None
    operators: list[Operator] = dataclasses.field(default_factory=list)
    watcher: Watcher | None = None
    created: dict[str, list[str]] = dataclasses.field(default_factory=dict)  # site -> keys
    results: dict[str, Any] = dataclasses.field(default_factory=dict)
    log: Callable[[str], None] = print
    partial: Path | None = None  # the results so far, rewritten after every step

    # --- wiring ---

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        assert self.plane is not None
        return subprocess.run(
            ["kubectl", *args], input=stdin, env=self.plane.env, capture_output=True, text=True,
            timeout=300, check=False,
        )  # fmt: skip

    def apiserver_metrics(self) -> str:
        result = self.kubectl("get", "--raw", "/metrics")
        if result.returncode != 0:
            raise RuntimeError(f"apiserver /metrics: {result.stderr}")
        return result.stdout

    def start(self) -> None:
        self.plane = ControlPlane(self.workdir / "controlplane")
        self.plane.start()
        self.plane.install_crds(repo_root() / "crds")
        admission.install_admission_policy(self.plane, protected_users=[MONITOR_USER])
        self.mock = MockSlurm(self.workdir / "mockslurm", Keys.create(self.workdir / "keys"))
        self.mock.start()
        install_objects(
            self.kubectl,
            self.mock,
            poll_interval=self.sizes.poll_interval,
            profiles=repo_root() / "examples" / "profiles.yaml",
        )
        for namespace in ("bench", "bare"):
            self.plane.ensure_namespace(namespace)
        settings = {"BBP_NOTEBOOK_COMMAND": json.dumps(NOTEBOOK)}
        if self.sizes.shards == 1:
            self.operators = [Operator(self.workdir / "operator", self.plane.kubeconfig, settings)]
        elif self.sizes.shards == 2:
            self.operators = [
                Operator(self.workdir / f"operator-{site}", self.plane.kubeconfig,
                         {**settings, "BBP_SHARD": site, "BBP_SITES": json.dumps([site]),
                          "BBP_PLACES_AUTO": str(site == "geneva").lower()})
                for site in ("geneva", "lugano")
            ]  # fmt: skip
        else:
            raise ValueError("--shards is 1 or 2 (one per emulated site)")
        self.watcher = Watcher(self.plane)
        self.watcher.start()

    def stop(self) -> None:
        for part in (self.watcher, *self.operators, self.mock, self.plane):
            if part is not None:
                try:
                    part.stop()
                except Exception as error:  # stop the rest whatever one did
                    self.log(f"stopping {type(part).__name__}: {error}")

    @property
    def seen(self) -> Watcher:
        assert self.watcher is not None, "not started"
        return self.watcher

    @property
    def pids(self) -> list[int]:
        found = [o.process.pid for o in self.operators if o.process is not None]
        assert found and len(found) == len(self.operators), "not started"
        return found

    def start_operators(self) -> None:
        """Every operator (shards together, as a rollout starts them), each until healthy."""
        with ThreadPoolExecutor(len(self.operators)) as pool:
            list(pool.map(Operator.start, self.operators))

    def metrics(self) -> str:
        """Every operator's /metrics, one after the other (sums and histograms add up)."""
        return "\n".join(o.metrics() for o in self.operators)

    def logs(self) -> str:
        return "\n".join(o.log_path.read_text(errors="replace") for o in self.operators)

    def wait(self, predicate: Callable[[], Any], what: str, timeout: float | None = None) -> Any:
        return wait_until(predicate, timeout or self.sizes.deadline_seconds, what, 0.2)

    def create(self, site: str, count: int, namespace: str = "bench") -> list[str]:
        """``count`` new sessions at ``site`` (alice and bob in turn), created concurrently."""
        from kubernetes import client

        assert self.plane is not None
        start = len(self.created.setdefault(f"{namespace}:{site}", []))
        names = [f"{site[:3]}-{i:05d}" for i in range(start, start + count)]
        api = self.plane.api_client()
        custom = client.CustomObjectsApi(api)

        def one(name: str) -> None:
            body = session_body(name, namespace, site, ("alice", "bob")[hash(name) % 2])
            custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, body)

        try:
            with ThreadPoolExecutor(CREATE_THREADS) as pool:
                list(pool.map(one, names))
        finally:
            api.close()
        keys = [f"{namespace}/{n}" for n in names]
        self.created[f"{namespace}:{site}"] += names
        return keys

    def all_keys(self) -> list[str]:
        return [
            f"{group.split(':')[0]}/{n}"
            for group, names in self.created.items()
            if group.startswith("bench:")
            for n in names
        ]

    # --- scenarios ---

    def bare_patch_rate(self, count: int) -> float:
        """Status PATCHes per second of a plain client (the operator is not running yet)."""
        from kubernetes import client

        assert self.plane is not None
        keys = self.create("geneva", count, namespace="bare")
        api = self.plane.api_client()
        custom = client.CustomObjectsApi(api)

        def patch(key: str) -> None:
            name = key.split("/", 1)[1]
            custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, "bare", PLURAL, name,
                {"status": {"message": f"bare client write {time.time()}"}},
            )  # fmt: skip

        started = time.perf_counter()
        with ThreadPoolExecutor(PATCH_THREADS) as pool:
            list(pool.map(patch, keys))
        rate = count / (time.perf_counter() - started)
        custom.delete_collection_namespaced_custom_object(GROUP, VERSION, "bare", PLURAL)
        api.close()
        return rate

    def ready_latency(self, count: int) -> dict[str, float]:
        """RUNNING (the emulated slurmctld's start time) -> endpoint in status, as seen by a
        watch, for ``count`` sessions at geneva (nodes free, so they start at once)."""
        assert self.watcher is not None and self.mock is not None
        keys = self.create("geneva", count)
        self.wait(lambda: self.seen.count("endpoint", keys) == len(keys), f"{count} Ready", 300)
        starts = {j["name"]: j["start_time"] for j in self.mock.jobs("geneva") if j["start_time"]}
        uids = self._uids(keys)
        latencies = []
        for key in keys:
            started = starts.get(f"{JOB_NAME_PREFIX}{self._installation()}-{uids[key]}")
            if started is not None:
                latencies.append(self.seen.endpoint[key] - started)
        if len(latencies) != len(keys):
            raise RuntimeError(f"start times of {len(keys) - len(latencies)} jobs not found")
        # The endpoint against the operator's log line of the report (written after the status
        # patch, so about 0): the latency is the job's, from its start to its report.
        reported = self._reports()
        shares = [self.seen.endpoint[k] - reported[uids[k]] for k in keys if uids[k] in reported]
        return {"p50_s": _quantile(latencies, 0.5), "p95_s": _quantile(latencies, 0.95),
                "max_s": max(latencies), "n": len(latencies),
                "after_report_log_p50_s": _quantile(shares, 0.5) if shares else None,
                "after_report_log_p95_s": _quantile(shares, 0.95) if shares else None}  # fmt: skip

    def _reports(self) -> dict[str, float]:
        """When the operator logged each session's endpoint report (local time, as it logs)."""
        found = {}
        for line in self.logs().splitlines():
            match = REPORTED.match(line)
            if match:
                moment = dt.datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S,%f")
                found[match.group(2)] = moment.timestamp()
        return found

    def _installation(self) -> str:
        from bbp_notebooks.api.settings import OperatorSettings

        default: str = OperatorSettings.model_fields["installation_id"].default
        return default  # the bench's operator keeps the default

    def _uids(self, keys: list[str]) -> dict[str, str]:
        found = {}
        for namespace in {k.split("/")[0] for k in keys}:
            listed = json.loads(self.kubectl("get", PLURAL, "-n", namespace, "-o", "json").stdout)[
                "items"
            ]
            for item in listed:
                found[f"{namespace}/{item['metadata']['name']}"] = item["metadata"]["uid"]
        return {k: found[k] for k in keys}

    def duplicates(self) -> int:
        """Jobs beyond the first with the same session tag, at both sites (cancelled or not)."""
        assert self.mock is not None
        names = [
            j["name"] for site in ("geneva", "lugano") for j in self.mock.jobs(site)
            if str(j["name"]).startswith(JOB_NAME_PREFIX)
        ]  # fmt: skip
        return len(names) - len(set(names))

    def burst(self, count: int) -> dict[str, float]:
        """``count`` sessions created at once at lugano (held pending): time until every one
        has a job id; then the site goes down, and the operator writes every one of them."""
        assert self.watcher is not None and self.mock is not None
        self.mock.faults("lugano", stuck_pending=True)
        started = time.time()
        keys = self.create("lugano", count)
        created = time.time() - started
        self.wait(lambda: self.seen.count("job", keys) == count, f"{count} submitted")
        submitted = max(self.seen.job[k] for k in keys) - started
        self.wait(lambda: self.seen.count("job", keys) == count and self._queued(keys),
                  "the burst observed in the queue")  # fmt: skip
        time.sleep(2 * self.sizes.poll_interval)  # settled: nothing left to write
        down = time.time()
        self.mock.faults("lugano", controller_down=True)
        self.wait(lambda: len(self.seen.changes_after(keys, down)) == count,
                  "every burst session told the site is down")  # fmt: skip
        moments = sorted(self.seen.changes_after(keys, down).values())
        self.mock.faults("lugano", controller_down=False)
        up = time.time()
        self.wait(lambda: len(self.seen.changes_after(keys, up)) == count,
                  "every burst session told the site is back")  # fmt: skip
        spread = max(moments[-1] - moments[0], 1e-3)
        log = self.logs()
        return {
            # Create handlers that ran again and found their job by its tag (no second sbatch).
            "adoptions": log.count("adopted existing job"),
            "sessions": count,
            "create_s": created,
            "all_submitted_s": submitted,
            "duplicates": self.duplicates(),
            "status_writes_per_s": (count - 1) / spread,
        }

    def _queued(self, keys: list[str]) -> bool:
        with self.seen.lock:
            statuses = [json.loads(self.seen.status.get(k, "{}")) for k in keys]
        return all(s.get("queue") for s in statuses)

    def steady(self, label: str) -> dict[str, Any]:
        """One window of steady state: Slurm commands per poll and site, poll duration, RSS,
        CPU and API requests from the operator (nothing else talks to the API server)."""
        assert self.mock is not None and self.operators
        sites = ("geneva", "lugano")
        window = self.sizes.steady_seconds
        for site in sites:
            self.mock.reset_commands(site)
        metrics0, api0 = self.metrics(), self.apiserver_metrics()
        cpu0, t0 = sum(cpu_seconds(p) for p in self.pids), time.monotonic()
        time.sleep(window)
        cpu1, t1 = sum(cpu_seconds(p) for p in self.pids), time.monotonic()
        commands = {site: sum(self.mock.commands(site).values()) for site in sites}
        metrics1, api1 = self.metrics(), self.apiserver_metrics()
        polls = {
            site: total(metrics1, "bbp_notebooks_site_polls_total", site=site, outcome="ok")
            - total(metrics0, "bbp_notebooks_site_polls_total", site=site, outcome="ok")
            for site in sites
        }
        quantiles = {
            q: histogram_quantile(metrics0, metrics1, "bbp_notebooks_site_poll_seconds", q)
            for q in (0.5, 0.95)
        }
        result = {
            "label": label,
            "sessions": len(self.all_keys()),
            "window_s": t1 - t0,
            "commands_per_poll": {s: commands[s] / max(polls[s], 1) for s in sites},
            "commands_per_interval": {
                s: commands[s] * self.sizes.poll_interval / (t1 - t0) for s in sites
            },
            "polls": polls,
            "poll_p50_s": quantiles[0.5],
            "poll_p95_s": quantiles[0.95],
            # The largest operator process (the one replica or the larger shard), and all.
            "rss_mb": max(each := [rss_mb(p) for p in self.pids]),
            "rss_mb_each": each,
            "cpu_cores": (cpu1 - cpu0) / (t1 - t0),
            "api_requests_per_s": (apiserver_requests(api1) - apiserver_requests(api0)) / (t1 - t0),
        }
        return result

    def fill(self, target: int) -> dict[str, float]:
        """Sessions at both sites (held pending) until there are ``target``; time until every
        one is submitted and seen in its site's queue. At geneva they are held jobs (JobHeldAdmin)
        and the rest of its queue schedules, so RUNNING -> Ready is measured with them standing."""
        assert self.mock is not None and self.watcher is not None
        missing = target - len(self.all_keys())
        if missing <= 0:
            return {"added": 0, "observe_s": 0.0}
        self.mock.faults("geneva", hold_new=True)
        started = time.time()
        keys = self.create("geneva", missing // 2) + self.create("lugano", missing - missing // 2)
        self.wait(lambda: self.seen.count("job", keys) == len(keys) and self._queued(keys),
                  f"{len(keys)} sessions submitted and observed")  # fmt: skip
        observed = time.time() - started
        self.mock.faults("geneva", hold_new=False)  # the held jobs stay held
        return {"added": len(keys), "observe_s": observed}

    def restart(self) -> dict[str, float]:
        """Operator stopped and started over every session: time until each site has polled
        with every session in the index, and the API writes meanwhile."""
        expected = len(self.all_keys())
        for operator in self.operators:
            operator.stop()
        before = self.apiserver_metrics()
        started = time.monotonic()
        self.start_operators()

        answers: list[float] = []  # how long each /metrics took once it first answered
        unanswered = [0]

        def probe() -> str | None:
            asked = time.monotonic()
            text = _metrics_or_none(self)
            if text is None and answers:
                unanswered[0] += 1
            if text is not None or answers:
                answers.append(time.monotonic() - asked)
            return text

        def indexed() -> str | None:
            text = probe()
            return text if text and total(text, "bbp_notebooks_sessions") >= expected else None

        text = self.wait(indexed, "the restarted operator's index of every session")
        polls = {s: total(text, "bbp_notebooks_site_polls_total", site=s, outcome="ok")
                 for s in ("geneva", "lugano")}  # fmt: skip

        def polled_again() -> bool:
            now = probe()
            return now is not None and all(
                total(now, "bbp_notebooks_site_polls_total", site=s, outcome="ok") > n
                for s, n in polls.items()
            )

        self.wait(polled_again, "a poll of each site over the whole index")
        observed = time.monotonic() - started
        time.sleep(2 * self.sizes.poll_interval)  # the polls after it write nothing either
        after = self.apiserver_metrics()
        return {
            "sessions": expected,
            "observed_s": observed,
            "session_writes": apiserver_requests(after, WRITE_VERBS, resource=PLURAL)
            - apiserver_requests(before, WRITE_VERBS, resource=PLURAL),
            "all_writes": apiserver_requests(after, WRITE_VERBS)
            - apiserver_requests(before, WRITE_VERBS),
            # /metrics while the restarted operator resumes every session (the liveness
            # probe's /healthz is served by the same event loop)
            "metrics_slowest_s": max(answers, default=0.0),
            "metrics_unanswered": unanswered[0],
            "metrics_asked": len(answers),
        }

    def step(self, key: str, action: Callable[[], Any]) -> None:
        """One measurement, logged and kept at once (a later failure keeps it)."""
        self.results[key] = action()
        self.log(f"{key}: {json.dumps(self.results[key], default=str)}")
        if self.partial is not None:
            self.partial.write_text(json.dumps(self.results, indent=2, default=str) + "\n")

    def run(self) -> dict[str, Any]:
        sizes = self.sizes
        self.start()
        self.results["poll_interval"] = sizes.poll_interval
        self.results["shards"] = sizes.shards
        try:
            self.step("bare_patch_per_s", lambda: self.bare_patch_rate(sizes.burst))
            self.start_operators()
            self.step("ready_alone", lambda: self.ready_latency(sizes.ready))
            self.step("steady_small", lambda: self.steady("small"))
            self.step("burst", lambda: self.burst(sizes.burst))
            others = len(self.all_keys())
            self.step("ready_loaded", lambda: {**self.ready_latency(sizes.ready), "others": others})
            self.step("steady_burst", lambda: self.steady("after burst"))
            self.step("fill", lambda: self.fill(sizes.sessions))
            self.step("steady_full", lambda: self.steady("full"))
            full = len(self.all_keys())
            self.step("ready_full", lambda: {**self.ready_latency(sizes.ready), "others": full})
            self.step("restart", self.restart)
            self.step("duplicates_final", self.duplicates)
        finally:
            self.stop()
        if not sizes.skip_busy:
            busy = bench_busy.run(sizes.busy_other_jobs, sizes.busy_ours, sizes.busy_repeats)
            self.results["busy"] = dataclasses.asdict(busy)
            self.results["busy_table"] = bench_busy.table(busy)
        return self.results


def _metrics_or_none(source: Bench) -> str | None:
    """The operators' /metrics, or None while one does not answer in time (a restarting
    operator is busy with every session at once: seen to stall its event loop for over 5 s)."""
    try:
        return source.metrics()
    except OSError:  # TimeoutError and connection errors alike: not yet
        return None


def _quantile(values: list[float], q: float) -> float:
    if len(values) == 1:
        return values[0]
    return statistics.quantiles(values, n=100, method="inclusive")[round(q * 100) - 1]


# --- the table ------------------------------------------------------------------------------

TARGET_SESSIONS = 10_000
STEADY_POLL_S = 30  # the poll interval the CPU target is stated for


@dataclasses.dataclass(frozen=True)
class Row:
    figure: str
    value: str
    reference: str
    target: str
    met: bool | None  # None: no target

    @property
    def verdict(self) -> str:
        return "-" if self.met is None else ("met" if self.met else "MISSED")


def rows(results: Mapping[str, Any]) -> list[Row]:
    small, full = results["steady_small"], results["steady_full"]
    shards = results.get("shards", 1)  # CPU and API figures are of every shard together
    burst, restart = results["burst"], results["restart"]
    n, n0 = full["sessions"], small["sessions"]
    # The slope between the two loaded points (the first sessions also pay one-off costs), unless
    # the one from the smallest point is steeper: right after the burst the allocator may still
    # hold what the burst freed (2026-12-02: 203 MB at 1,016, 176 MB at 2,000), and a falling
    # line would extrapolate to a target met. The steeper of the two is the one reported.
    loaded = results["steady_burst"] if results["steady_burst"]["sessions"] < n else small
    candidates = [(loaded, (full["rss_mb"] - loaded["rss_mb"]) / max(n - loaded["sessions"], 1))]
    if loaded is not small:
        candidates.append((small, (full["rss_mb"] - small["rss_mb"]) / max(n - n0, 1)))
    base, per_session = max(candidates, key=lambda pair: pair[1])
    slope = max(per_session, 0.0) * 1000
    rss_10k = full["rss_mb"] + slope * max(TARGET_SESSIONS - n, 0) / 1000
    cpu_slope = (full["cpu_cores"] - small["cpu_cores"]) / max(n - n0, 1)
    cpu_10k = full["cpu_cores"] + max(cpu_slope, 0) * max(TARGET_SESSIONS - n, 0)
    # The target is for 30 s polls; a poll's work is per poll, so CPU scales with 1/interval.
    interval = results.get("poll_interval", STEADY_POLL_S)
    cpu_10k_30s = cpu_10k * interval / STEADY_POLL_S
    extrapolated = " (extrapolated)" if n < TARGET_SESSIONS else ""
    per_poll = max(full["commands_per_poll"].values())
    per_poll_ref = max(small["commands_per_poll"].values())
    ratio = burst["status_writes_per_s"] / results["bare_patch_per_s"]
    found: list[Row] = [
        Row(
            f"time to submit and observe {results['fill']['added']} more sessions",
            f"{results['fill']['observe_s']:.0f} s",
            "",
            "",
            None,
        ),
        Row(
            "Slurm commands per poll, per site",
            f"{per_poll:.1f} at {n}",
            f"{per_poll_ref:.1f} at {n0}",
            "independent of N (<= ref + 1)",
            per_poll <= per_poll_ref + 1,
        ),
        Row(
            "Slurm commands per interval, per site",
            f"{max(full['commands_per_interval'].values()):.1f} at {n}",
            f"{max(small['commands_per_interval'].values()):.1f} at {n0}",
            "",
            None,
        ),
        Row(
            "poll duration p50 / p95",
            f"{_s(full['poll_p50_s'])} / {_s(full['poll_p95_s'])}",
            f"{_s(small['poll_p50_s'])} / {_s(small['poll_p95_s'])} at {n0}",
            "",
            None,
        ),
        Row(
            "operator RSS" if shards == 1 else f"operator RSS, the larger of {shards} shards",
            f"{full['rss_mb']:.0f} MB at {n}",
            f"{small['rss_mb']:.0f} MB at {n0}",
            "",
            None,
        ),
        *(
            [
                Row(
                    f"RSS of the {shards} shards together",
                    f"{sum(full['rss_mb_each']):.0f} MB at {n}",
                    f"{sum(small['rss_mb_each']):.0f} MB at {n0}",
                    "",
                    None,
                )
            ]
            if shards > 1
            else []
        ),  # fmt: skip
        Row(
            "RSS per 1,000 sessions (slope)",
            f"{slope:.1f} MB",
            f"between {base['sessions']} and {n}",
            "",
            None,
        ),
        Row(
            f"RSS at {TARGET_SESSIONS}{extrapolated}",
            f"{rss_10k:.0f} MB",
            "",
            "<= 256 MB",
            rss_10k <= 256,
        ),
        Row(
            "steady CPU",
            f"{full['cpu_cores']:.3f} core at {n}",
            f"{small['cpu_cores']:.3f} at {n0}",
            "",
            None,
        ),
        Row(
            f"steady CPU at {TARGET_SESSIONS}{extrapolated}",
            f"{cpu_10k:.3f} core",
            "",
            "",
            None,
        ),
        Row(
            f"steady CPU at {TARGET_SESSIONS}, 30 s polls{extrapolated}",
            f"{cpu_10k_30s:.3f} core",
            f"measured at {interval} s polls",
            "<= 0.25 core",
            cpu_10k_30s <= 0.25,
        ),
        Row(
            "API requests/s from the operator",
            f"{full['api_requests_per_s']:.2f} at {n}",
            f"{small['api_requests_per_s']:.2f} at {n0}",
            "",
            None,
        ),
        Row(
            f"burst of {burst['sessions']}: all submitted",
            f"{burst['all_submitted_s']:.1f} s",
            f"created in {burst['create_s']:.1f} s",
            "",
            None,
        ),
        Row(
            "burst: create handlers run again (job found by tag)",
            f"{burst.get('adoptions', 0)}",
            f"{burst['sessions']} sessions",
            "",
            None,
        ),
        Row(
            "duplicates (burst and overall)",
            f"{burst['duplicates']} / {results['duplicates_final']}",
            "",
            "0",
            burst["duplicates"] == 0 and results["duplicates_final"] == 0,
        ),
        Row(
            "status writes/s, operator vs bare client",
            f"{burst['status_writes_per_s']:.0f}/s",
            f"{results['bare_patch_per_s']:.0f}/s",
            ">= 50 %",
            ratio >= 0.5,
        ),
    ]
    for key, label in (
        ("ready_alone", "alone"),
        ("ready_loaded", "loaded"),
        ("ready_full", "full"),
    ):
        if key not in results:  # runs before ready_full was measured
            continue
        ready = results[key]
        others = ready.get("others", 0)
        target = (others >= 1000 or label == "alone") and label != "full"  # the target: at 1,000
        found.append(
            Row(f"RUNNING -> Ready p50 / p95, {others} other sessions",
                f"{ready['p50_s']:.2f} / {ready['p95_s']:.2f} s",
                f"n={ready['n']}",
                "p95 <= 1 s (at 1,000)" if target else "",
                ready["p95_s"] <= 1.0 if others >= 1000 and label != "full" else None)
        )  # fmt: skip
    found += [
        Row(f"restart over {restart['sessions']}: all observed again",
            f"{restart['observed_s']:.1f} s", "", "", None),
        Row("restart: slowest /metrics once up (timeouts at 5 s)",
            f"{restart.get('metrics_slowest_s', 0):.2f} s",
            f"{restart.get('metrics_unanswered', 0)} of {restart.get('metrics_asked', 0)} "
            "timed out",
            "", None),
        Row("restart: session writes / all API writes",
            f"{restart['session_writes']:.0f} / {restart['all_writes']:.0f}",
            f"{restart['sessions']} sessions", "< 1 per session",
            restart["session_writes"] < restart["sessions"]),
    ]  # fmt: skip
    busy = results.get("busy")
    if busy:
        forms = {f["form"]: f for f in busy["forms"]}
        chosen = forms[busy["chosen"]]
        peer = forms["per session: squeue -j ID (batchspawner)"]
        share = chosen["controller_us_per_interval"] / max(peer["controller_us_per_interval"], 1)
        found.append(
            Row(f"busy queue ({busy['other_jobs']} others): ctld time, {busy['chosen']}",
                f"{chosen['controller_us_per_interval'] / 1000:.2f} ms/poll",
                f"{peer['controller_us_per_interval'] / 1000:.2f} ms per-session polling of "
                f"{busy['our_jobs']}", "<= 1/10", share <= 0.1)
        )  # fmt: skip
    return found


def _s(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f} s"


def table(results: Mapping[str, Any]) -> str:
    found = rows(results)
    widths = [max(len(getattr(r, f)) for r in found) for f in ("figure", "value", "reference")]
    header = ("figure", "value", "reference (same run)", "target", "")
    lines = [
        f"{header[0]:{widths[0]}} | {header[1]:{widths[1]}} | {header[2]:{max(widths[2], 20)}} "
        f"| target | verdict",
    ]
    for r in found:
        lines.append(
            f"{r.figure:{widths[0]}} | {r.value:{widths[1]}} | {r.reference:{max(widths[2], 20)}} "
            f"| {r.target} | {r.verdict}"
        )
    return "\n".join(lines)


def commit() -> str:
    result = subprocess.run(
        ["git", "-C", str(repo_root()), "rev-parse", "--short", "HEAD"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    return result.stdout.strip() or "unknown"


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def _terminated(*_: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup
    sys.exit(143)


def main(argv: list[str] | None = None) -> int:
    defaults = Sizes()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for field in dataclasses.fields(Sizes):
        option = "--" + field.name.replace("_", "-")
        if field.type == "bool":
            parser.add_argument(option, action="store_true")
        else:
            kind = float if isinstance(getattr(defaults, field.name), float) else int
            parser.add_argument(option, type=kind, default=getattr(defaults, field.name))
    parser.add_argument("--json", type=Path, help="default: artifacts/bench/<commit>.json")
    parser.add_argument("--show", type=Path, help="print the table of an earlier run's JSON")
    args = parser.parse_args(argv)
    if args.show:
        report = json.loads(args.show.read_text())
        report["results"].setdefault("poll_interval", report["sizes"]["poll_interval"])
        print(render(report))
        return 0
    # SIGTERM (timeout, Ctrl-C from make) stops the stack's children too: they run in sessions
    # of their own, so only the finally clauses reach them.
    signal.signal(signal.SIGTERM, _terminated)
    # The emulated jobs' python3 is this interpreter itself, as a node's is, not a version
    # manager's shim found first on PATH (pyenv's runs `pyenv exec`: +0.13 s per start here,
    # and RUNNING -> Ready starts python twice in a row).
    os.environ["PATH"] = os.pathsep.join((str(Path(sys.executable).parent), os.environ["PATH"]))
    sizes = Sizes(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Sizes)})
    workdir = Path(tempfile.mkdtemp(prefix="bbp-bench-"))
    started = dt.datetime.now(dt.UTC)
    at = commit()  # the commit the run started from (others may commit meanwhile)
    path = args.json or repo_root() / "artifacts" / "bench" / f"{at}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".partial.json")
    results = Bench(sizes, workdir, log=_log, partial=partial).run()
    report = {
        "commit": at,
        "date": started.isoformat(timespec="seconds"),
        "sizes": dataclasses.asdict(sizes),
        "results": results,
        "rows": [dataclasses.asdict(r) | {"verdict": r.verdict} for r in rows(results)],
    }
    path.write_text(json.dumps(report, indent=2) + "\n")
    partial.unlink(missing_ok=True)
    print(render(report))
    print(f"\nJSON: {path}")
    return 0


def render(report: Mapping[str, Any]) -> str:
    """The printed form of a run's report (also: python -m bbp_notebooks.devtools.bench --show)."""
    results = report["results"]
    parts = [
        f"make bench, {report['date']}, commit {report['commit']}, sizes {report['sizes']}",
        table(results),
    ]
    if "busy_table" in results:
        parts.append(results["busy_table"])
    return "\n\n".join(parts)


if __name__ == "__main__":
    sys.exit(main())
