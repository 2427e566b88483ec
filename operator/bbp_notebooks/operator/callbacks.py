"""Whether a job's endpoint report is accepted. Pure: the HTTP server and the API calls are
around it (operator/http.py, handlers.record_endpoint).

A report moves the user's proxy route, so it must come from the session's current job, once, and
name the node Slurm allocated to that job. Every refusal has its own reason and HTTP status.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydantic import BaseModel, Field

from bbp_notebooks.api.models import NotebookSessionStatus, SlurmSiteSpec

# Notebook servers never need a privileged port; one below this is refused.
FIRST_UNPRIVILEGED_PORT = 1024


class EndpointReport(BaseModel):
    """What a job posts once its notebook server listens."""

    host: str = Field(
        min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$"
    )
    port: int = Field(ge=1, le=65535)
    job_id: int = Field(alias="jobId", ge=1)


class Refusal(StrEnum):
    INVALID_TOKEN = "InvalidToken"  # noqa: S105 - a reason, not a secret
    SESSION_ENDED = "SessionEnded"
    JOB_NOT_RECORDED = "JobNotRecorded"
    WRONG_JOB = "WrongJob"
    ALREADY_REPORTED = "AlreadyReported"
    PRIVILEGED_PORT = "PrivilegedPort"
    NODE_UNKNOWN = "NodeUnknown"
    FOREIGN_HOST = "ForeignHost"


# What each refusal means to the job: 503 asks it to retry (the operator is behind), 4xx is final.
HTTP_STATUS: dict[Refusal, int] = {
    Refusal.INVALID_TOKEN: 403,
    Refusal.SESSION_ENDED: 409,
    Refusal.JOB_NOT_RECORDED: 503,
    Refusal.WRONG_JOB: 403,
    Refusal.ALREADY_REPORTED: 409,
    Refusal.PRIVILEGED_PORT: 422,
    Refusal.NODE_UNKNOWN: 503,
    Refusal.FOREIGN_HOST: 403,
}


@dataclass(frozen=True)
class Verdict:
    refusal: Refusal | None
    message: str

    @property
    def accepted(self) -> bool:
        return self.refusal is None

    @property
    def http_status(self) -> int:
        return 200 if self.refusal is None else HTTP_STATUS[self.refusal]


ACCEPTED = Verdict(None, "accepted")


def first_node(nodelist: str) -> str:
    """The batch host of a job (where its script, hence the notebook, runs): the first node of
    Slurm's compressed list, e.g. ``gva-cn[07-09,12],gva-gpu1`` -> ``gva-cn07``."""
    head = nodelist.strip()
    bracket = head.find("[")
    comma = head.find(",")
    if bracket == -1 or (comma != -1 and comma < bracket):
        return head.split(",", 1)[0]
    inside = head[bracket + 1 : head.find("]", bracket)]
    return head[:bracket] + inside.split(",", 1)[0].split("-", 1)[0]


def allowed_hosts(site: SlurmSiteSpec, nodelist: str) -> frozenset[str]:
    """The addresses a job on ``nodelist`` may report: the site's fixed notebookHost, or its
    node-address rule applied to the job's batch host."""
    if site.notebook_host:
        return frozenset({site.notebook_host})
    return frozenset({site.node_address_template.replace("{node}", first_node(nodelist))})


@dataclass(frozen=True)
class _Claim:
    """A report as the rules see it: the job it names, where it says it listens, and what the
    session's status records of the job its token was made for."""

    job_id: int
    host: str
    ports: tuple[int, ...]
    recorded_job: int | None
    already_reported: bool
    which: str  # how a message names the job while it is not recorded ("the session's job")


def _judge(
    claim: _Claim,
    *,
    token_matches: bool,
    status: NotebookSessionStatus,
    site: SlurmSiteSpec,
    node: str | None,
) -> Verdict:
    """The one rule sequence for every report a job makes (the notebook's, the Spark cluster's)."""
    if not token_matches:
        return Verdict(Refusal.INVALID_TOKEN, "invalid token")
    if status.phase is not None and status.phase.is_terminal:
        return Verdict(Refusal.SESSION_ENDED, f"the session has ended ({status.phase.value})")
    job = claim.recorded_job
    if job is None:
        return Verdict(Refusal.JOB_NOT_RECORDED, f"{claim.which} is not recorded yet; retry")
    if claim.job_id != job:
        return Verdict(Refusal.WRONG_JOB, f"the token belongs to job {job}, not {claim.job_id}")
    if claim.already_reported:
        return Verdict(Refusal.ALREADY_REPORTED, f"job {job} has already reported")
    if min(claim.ports) < FIRST_UNPRIVILEGED_PORT:
        return Verdict(Refusal.PRIVILEGED_PORT, f"port {min(claim.ports)} is privileged")
    if not node:
        return Verdict(Refusal.NODE_UNKNOWN, f"job {job} has no node yet; retry")
    hosts = allowed_hosts(site, node)
    if claim.host not in hosts:
        return Verdict(
            Refusal.FOREIGN_HOST,
            f"job {job} runs on {node}: it may report {', '.join(sorted(hosts))}, not {claim.host}",
        )
    return ACCEPTED


def judge(
    report: EndpointReport,
    *,
    token_matches: bool,
    status: NotebookSessionStatus,
    site: SlurmSiteSpec,
    node: str | None,
) -> Verdict:
    """Accept ``report`` for a session whose status is ``status`` and whose job runs on ``node``
    (from status, or asked from squeue when status does not know it yet)."""
    claim = _Claim(
        job_id=report.job_id,
        host=report.host,
        ports=(report.port,),
        recorded_job=status.job_id,
        already_reported=status.endpoint is not None,
        which="the session's job",
    )
    return _judge(claim, token_matches=token_matches, status=status, site=site, node=node)


# --- the Spark cluster job's report (PySpark profiles) -----------------------------------------


class SparkClusterReport(BaseModel):
    """What a Spark cluster job posts once its master runs and every worker registered."""

    host: str = Field(
        min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$"
    )
    port: int = Field(ge=1, le=65535)
    ui_port: int = Field(alias="uiPort", ge=1, le=65535)
    workers: int = Field(ge=0, le=100000)
    job_id: int = Field(alias="jobId", ge=1)


def judge_spark(
    report: SparkClusterReport,
    *,
    token_matches: bool,
    status: NotebookSessionStatus,
    site: SlurmSiteSpec,
    node: str | None,
) -> Verdict:
    """Accept a cluster report for the companion job recorded in ``status.spark`` (running on
    ``node``): the notebook's rules (`_judge`), against the companion's token and job."""
    spark = status.spark
    if spark is None:  # no companion: no token of one can match
        return Verdict(Refusal.INVALID_TOKEN, "invalid token")
    claim = _Claim(
        job_id=report.job_id,
        host=report.host,
        ports=(report.port, report.ui_port),
        recorded_job=spark.job_id,
        already_reported=spark.master_url is not None,
        which="the Spark cluster job",
    )
    return _judge(claim, token_matches=token_matches, status=status, site=site, node=node)
