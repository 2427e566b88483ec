"""Prometheus metrics of the operator, in one registry served at /metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

SESSIONS = Gauge(
    "bbp_notebooks_sessions",
    "NotebookSessions by site, profile and phase.",
    ["site", "profile", "phase"],
    registry=REGISTRY,
)
SUBMISSIONS = Counter(
    "bbp_notebooks_submissions_total",
    "Slurm jobs submitted (adopted jobs are not counted).",
    ["site"],
    registry=REGISTRY,
)
SUBMISSION_FAILURES = Counter(
    "bbp_notebooks_submission_failures_total",
    "Sessions that could not be submitted, by reason.",
    ["site", "reason"],
    registry=REGISTRY,
)
CALLBACKS = Counter(
    "bbp_notebooks_endpoint_reports_total",
    "Endpoint reports from jobs, by outcome (Accepted or the refusal's reason).",
    ["outcome"],
    registry=REGISTRY,
)
USER_REFUSALS = Counter(
    "bbp_notebooks_user_refusals_total",
    "Sessions refused because of who they would run as, by site and reason.",
    ["site", "reason"],
    registry=REGISTRY,
)
_WAIT_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200)
QUEUE_WAIT = Histogram(
    "bbp_notebooks_queue_wait_seconds",
    "Time from submission to the job running.",
    ["site", "profile"],
    buckets=_WAIT_BUCKETS,
    registry=REGISTRY,
)
TIME_TO_READY = Histogram(
    "bbp_notebooks_time_to_ready_seconds",
    "Time from session creation to the notebook endpoint being reported.",
    ["site", "profile"],
    buckets=_WAIT_BUCKETS,
    registry=REGISTRY,
)
SLURM_COMMAND_SECONDS = Histogram(
    "bbp_notebooks_slurm_command_seconds",
    "Latency of Slurm commands over ssh.",
    ["site", "command"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)
SLURM_COMMAND_ERRORS = Counter(
    "bbp_notebooks_slurm_command_errors_total",
    "Slurm commands that failed, by outcome.",
    ["site", "command", "outcome"],
    registry=REGISTRY,
)
SSH_CONNECTIONS = Gauge(
    "bbp_notebooks_ssh_connections", "Open pooled ssh connections.", registry=REGISTRY
)
SSH_CHANNELS = Gauge("bbp_notebooks_ssh_channels_in_use", "ssh channels in use.", registry=REGISTRY)
RECONCILE_ERRORS = Counter(
    "bbp_notebooks_reconcile_errors_total",
    "Errors in reconciliation, by handler and kind.",
    ["handler", "kind"],
    registry=REGISTRY,
)
POLL_SECONDS = Histogram(
    "bbp_notebooks_site_poll_seconds",
    "Duration of one site poll (Slurm commands, status computation and writes).",
    ["site"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60),
    registry=REGISTRY,
)
SITE_POLLS = Counter(
    "bbp_notebooks_site_polls_total",
    "Site polls, by outcome.",
    ["site", "outcome"],
    registry=REGISTRY,
)
DUPLICATES_CANCELLED = Counter(
    "bbp_notebooks_duplicate_jobs_cancelled_total",
    "Second tagged jobs of a live session, cancelled by the poll.",
    ["site"],
    registry=REGISTRY,
)
SQUEUE_ROWS_DROPPED = Counter(
    "bbp_notebooks_squeue_rows_dropped_total",
    "squeue records that did not read as one job (e.g. a job name forging a row) and were "
    "dropped, by site.",
    ["site"],
    registry=REGISTRY,
)


def observe_command(site: str, command: str, seconds: float, outcome: str) -> None:
    """Observer for the ssh layer: one call per Slurm command."""
    SLURM_COMMAND_SECONDS.labels(site, command).observe(seconds)
    if outcome != "ok":
        SLURM_COMMAND_ERRORS.labels(site, command, outcome).inc()
