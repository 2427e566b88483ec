"""The contract: pydantic models of NotebookSession, NotebookProfile and SlurmSite.

These models are the single source of truth for the CRDs (see ``crdgen``); the operator and the hub
spawner parse objects through them so that what the API server accepts and what the code expects
cannot drift apart.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field, model_validator

from bbp_notebooks.api.constants import DNS_LABEL_PATTERN, POSIX_USER_PATTERN

# Reusable constrained types -------------------------------------------------------------------

ObjectName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=DNS_LABEL_PATTERN,
        description="A Kubernetes object name (DNS label: lower-case letters, digits and '-').",
    ),
]
PosixUser = Annotated[
    str,
    Field(
        min_length=1,
        max_length=32,
        pattern=POSIX_USER_PATTERN,
        description="A POSIX user name at the Slurm sites (lower-case, starts with a letter).",
    ),
]
SlurmAccount = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="A Slurm account (project) name.",
    ),
]
PartitionName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="A Slurm partition name.",
    ),
]
ModuleName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=256,
        pattern=r"^[A-Za-z0-9_][A-Za-z0-9_./+:@-]*$",
        description="An environment module, as given to `module load` (e.g. nix/hpc/neuron/8.2).",
    ),
]
GroupName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_.@-]+$",
        description="A hub group name.",
    ),
]
Timestamp = Annotated[dt.datetime, Field(description="An RFC 3339 timestamp.")]


class Model(BaseModel):
    """Base for spec objects: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True, alias_generator=None)


class StatusModel(BaseModel):
    """Base for status objects: written only by the operator, tolerant when reading old objects."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# Conditions (Kubernetes API conventions) ------------------------------------------------------


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class Condition(StatusModel):
    """The latest observation of one aspect of an object's state."""

    type: str = Field(
        max_length=316,
        pattern=r"^[A-Z][A-Za-z0-9]*$",
        description="Condition type in CamelCase, e.g. Submitted, Running, Ready, SiteReachable.",
    )
    status: ConditionStatus = Field(description="True, False or Unknown.")
    reason: str = Field(
        max_length=1024,
        pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$",
        description="A programmatic CamelCase identifier for the cause of the last transition.",
    )
    message: str = Field(
        default="", max_length=32768, description="A human-readable explanation of the transition."
    )
    last_transition_time: Timestamp = Field(
        alias="lastTransitionTime",
        description="When the condition last changed from one status to another.",
    )
    observed_generation: int | None = Field(
        default=None,
        alias="observedGeneration",
        ge=0,
        description="The .metadata.generation the condition was set for.",
    )


# NotebookSession ------------------------------------------------------------------------------


class ResourceOverrides(Model):
    """Resources asked for beyond the profile's defaults; the profile's maxima still apply."""

    cores: int | None = Field(
        default=None, ge=1, le=1024, description="CPU cores for the notebook."
    )
    memory_mib: int | None = Field(
        default=None,
        alias="memoryMiB",
        ge=128,
        le=4194304,
        description="Memory in MiB for the notebook.",
    )
    time_limit_minutes: int | None = Field(
        default=None,
        alias="timeLimitMinutes",
        ge=1,
        le=43200,
        description="Wall-clock limit in minutes; at most the profile's maxTimeLimitMinutes.",
    )


class SecretReference(Model):
    """A Secret in the session's namespace."""

    name: ObjectName


def _same(path: str) -> str:
    """CEL: ``path`` (under spec; optional fields and parents included) is unchanged."""
    parts = path.split(".")
    new = " && ".join(f"has(self.{'.'.join(parts[: i + 1])})" for i in range(len(parts)))
    old = new.replace("self.", "oldSelf.")
    return f"(({new}) == ({old}) && (!({new}) || self.{path} == oldSelf.{path}))"


# Everything in a session's spec is fixed at creation but the time limit, which may only grow:
# the one request a running session may make (an extension), still bounded by the operator.
_SPEC_UNCHANGED_BUT_TIME = " && ".join(
    _same(path)
    for path in (
        "user",
        "profile",
        "site",
        "account",
        "serverName",
        "environmentSecretRef",
        "resources.cores",
        "resources.memoryMiB",
    )
)
_TIME_ONLY_GROWS = (
    "!(has(oldSelf.resources) && has(oldSelf.resources.timeLimitMinutes))"
    " || (has(self.resources) && has(self.resources.timeLimitMinutes)"
    " && self.resources.timeLimitMinutes >= oldSelf.resources.timeLimitMinutes)"
)


class NotebookSessionSpec(Model):
    """What the scientist asked for: who, with which profile, where. Immutable once created,
    except resources.timeLimitMinutes, which may only grow (asking for more time)."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": _SPEC_UNCHANGED_BUT_TIME,
                    "message": "a session's spec is immutable (only resources.timeLimitMinutes "
                    "may grow): delete it and create a new one",
                },
                {
                    "rule": _TIME_ONLY_GROWS,
                    "message": "resources.timeLimitMinutes may only grow",
                },
            ]
        }
    )

    user: PosixUser = Field(description="The POSIX user the job runs as at the Slurm site.")
    profile: ObjectName = Field(description="The name of the NotebookProfile to run.")
    site: str = Field(
        default="auto",
        max_length=63,
        pattern=r"^(auto|[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)$",
        description="The SlurmSite to run at, or 'auto' for the reachable site with most free "
        "capacity that the profile allows.",
    )
    account: SlurmAccount | None = Field(
        default=None,
        description="The Slurm account (project) to charge; required at sites whose "
        "accountPolicy is Required.",
    )
    server_name: str = Field(
        default="",
        alias="serverName",
        max_length=63,
        pattern=r"^[A-Za-z0-9._-]*$",
        description="The JupyterHub named server this session backs; empty for the default server.",
    )
    resources: ResourceOverrides | None = Field(
        default=None, description="Optional resource overrides, bounded by the profile's maxima."
    )
    environment_secret_ref: SecretReference | None = Field(
        default=None,
        alias="environmentSecretRef",
        description="A Secret whose keys become environment variables of the notebook "
        "(e.g. the hub API token). Its values never appear in argv, job names or comments.",
    )


class SessionPhase(StrEnum):
    PENDING = "Pending"
    QUEUED = "Queued"
    RUNNING = "Running"
    READY = "Ready"
    COMPLETED = "Completed"
    FAILED = "Failed"
    CANCELLED = "Cancelled"
    TIMEOUT = "Timeout"
    INVALID_SPEC = "InvalidSpec"

    @property
    def is_terminal(self) -> bool:
        return self in _TERMINAL_PHASES


_TERMINAL_PHASES = frozenset(
    {
        SessionPhase.COMPLETED,
        SessionPhase.FAILED,
        SessionPhase.CANCELLED,
        SessionPhase.TIMEOUT,
        SessionPhase.INVALID_SPEC,
    }
)


class Endpoint(StatusModel):
    """Where the notebook server listens."""

    host: str = Field(max_length=253, description="Host name or address of the compute node.")
    port: int = Field(ge=1, le=65535, description="TCP port of the notebook server.")
    url: str = Field(max_length=2048, description="The notebook server's base URL.")


class QueueInfo(StatusModel):
    """Why the job waits, and when Slurm expects it to start."""

    reason: str | None = Field(default=None, max_length=256, description="Slurm's pending reason.")
    estimated_start: Timestamp | None = Field(
        default=None, alias="estimatedStart", description="Slurm's estimated start time."
    )


class SparkStatus(StatusModel):
    """The session's Spark cluster (its companion Slurm job)."""

    job_id: int | None = Field(
        default=None, alias="jobId", ge=0, description="The companion Slurm job's id."
    )
    state: str | None = Field(
        default=None, max_length=64, description="The companion job's Slurm state."
    )
    reason: str | None = Field(
        default=None, max_length=256, description="Slurm's reason while the companion pends."
    )
    node: str | None = Field(default=None, max_length=253, description="Its batch host.")
    master_url: str | None = Field(
        default=None, alias="masterURL", max_length=512, description="spark://host:port."
    )
    ui_url: str | None = Field(
        default=None, alias="uiURL", max_length=512, description="The master's web UI."
    )
    workers_registered: int | None = Field(
        default=None,
        alias="workersRegistered",
        ge=0,
        description="Workers registered with the master when the cluster reported.",
    )
    log_tail: str | None = Field(
        default=None,
        alias="logTail",
        max_length=8192,
        description="The last lines of the companion's output, once it ended before the notebook.",
    )
    callback_token_sha256: str | None = Field(
        default=None,
        alias="callbackTokenSHA256",
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the companion job's own callback token.",
    )


class NotebookSessionStatus(StatusModel):
    """What the operator observed."""

    phase: SessionPhase | None = Field(default=None, description="A one-word summary for humans.")
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Submitted, Running, Ready, SiteReachable, TimeLimit (and CredentialsValid "
        "at GSSAPI sites, SparkReady for PySpark profiles).",
    )
    job_id: int | None = Field(default=None, alias="jobId", ge=0, description="The Slurm job id.")
    site: str | None = Field(default=None, max_length=63, description="The site the job runs at.")
    node: str | None = Field(default=None, max_length=253, description="The compute node.")
    endpoint: Endpoint | None = Field(default=None, description="The notebook's address.")
    queue: QueueInfo | None = Field(default=None, description="Queue details while pending.")
    start_time: Timestamp | None = Field(default=None, alias="startTime", description="Job start.")
    end_time: Timestamp | None = Field(default=None, alias="endTime", description="Job end.")
    time_limit_minutes: int | None = Field(
        default=None,
        alias="timeLimitMinutes",
        ge=0,
        description="The job's current wall-clock limit, as squeue reports it (an extension "
        "raises it).",
    )
    expected_end_time: Timestamp | None = Field(
        default=None,
        alias="expectedEndTime",
        description="When the job's time limit ends it (Slurm's start time + current limit), "
        "while it runs; absent while queued and once ended.",
    )
    log_tail: str | None = Field(
        default=None,
        alias="logTail",
        max_length=8192,
        description="The last lines of the job's output file (control characters removed), "
        "read when the job failed or ended before its time limit.",
    )
    credentials_expiry: Timestamp | None = Field(
        default=None,
        alias="credentialsExpiry",
        description="When the credentials the operator holds for this session's user end (a "
        "Kerberos ticket at a GSSAPI site; see the CredentialsValid condition).",
    )
    callback_token_sha256: str | None = Field(
        default=None,
        alias="callbackTokenSHA256",
        pattern=r"^[0-9a-f]{64}$",
        description="SHA-256 of the random token given to this session's current job for its "
        "endpoint callback (the token itself is only in the job's script). Written before "
        "sbatch, so it survives restarts and every replica can check a report.",
    )
    spark: SparkStatus | None = Field(
        default=None, description="The Spark cluster of a PySpark profile's session."
    )
    message: str | None = Field(default=None, max_length=4096, description="Latest explanation.")
    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", ge=0, description="The generation last seen."
    )


class NotebookSession(BaseModel):
    """A scientist's notebook server, run as a Slurm job at an HPC site."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    KIND: ClassVar[str] = "NotebookSession"

    spec: NotebookSessionSpec
    status: NotebookSessionStatus = Field(default_factory=NotebookSessionStatus)


# NotebookProfile ------------------------------------------------------------------------------


class SparkInstallation(Model):
    """Where Spark comes from on the compute nodes: exactly one of an environment module, a
    Spark distribution's path (SPARK_HOME), or a virtualenv with pyspark installed."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "[has(self.module), has(self.path), has(self.virtualenv)]"
                    ".filter(x, x).size() == 1",
                    "message": "set exactly one of module, path and virtualenv",
                }
            ]
        }
    )

    module: ModuleName | None = Field(
        default=None, description="An environment module that puts spark-class on PATH."
    )
    path: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        pattern=r"^/[^\x00-\x1f\x7f]*$",
        description="An absolute path to a Spark distribution (SPARK_HOME).",
    )
    virtualenv: str | None = Field(
        default=None,
        min_length=1,
        max_length=4096,
        pattern=r"^/[^\x00-\x1f\x7f]*$",
        description="An absolute path to a virtualenv with pyspark (and its bundled Spark); "
        "the notebook job activates it too.",
    )

    @model_validator(mode="after")
    def _exactly_one(self) -> SparkInstallation:
        if sum(x is not None for x in (self.module, self.path, self.virtualenv)) != 1:
            raise ValueError("set exactly one of module, path and virtualenv")
        return self


class SparkSetting(Model):
    """One line of spark-defaults.conf."""

    name: str = Field(
        min_length=1,
        max_length=256,
        pattern=r"^spark\.[A-Za-z0-9._-]+$",
        description="A Spark property (spark.*), e.g. spark.executor.memory.",
    )
    value: str = Field(
        max_length=4096, pattern=r"^[^\x00-\x1f\x7f]*$", description="Its value (one line)."
    )


# Properties the operator sets itself: the cluster the notebook connects to, loopback-safe
# binding, and the cluster's own secret (slurm/sparkscript.py); a profile may not override them.
SPARK_RESERVED_SETTINGS = frozenset(
    {
        "spark.master",
        "spark.driver.host",
        "spark.driver.bindAddress",
        "spark.authenticate",
        "spark.authenticate.secret",
    }
)


class SparkSection(Model):
    """A Spark cluster started as a companion Slurm job that the notebook connects to."""

    workers: int = Field(ge=1, le=256, description="Number of Spark workers (one Slurm task each).")
    cores_per_worker: int = Field(
        alias="coresPerWorker", ge=1, le=1024, description="Cores per Spark worker."
    )
    memory_mib_per_worker: int = Field(
        alias="memoryMiBPerWorker", ge=512, le=4194304, description="Memory per worker in MiB."
    )
    extra_minutes: int = Field(
        default=0,
        alias="extraMinutes",
        ge=0,
        le=1440,
        description="The cluster job's time limit is the notebook's plus this (never shorter "
        "than the notebook's; an extension of the notebook does not extend the cluster).",
    )
    installation: SparkInstallation = Field(description="Where Spark comes from.")
    settings: list[SparkSetting] = Field(
        default_factory=list,
        max_length=128,
        description="Extra spark-defaults.conf lines for the notebook's Spark applications.",
    )

    @model_validator(mode="after")
    def _not_reserved(self) -> SparkSection:
        names = [s.name for s in self.settings]
        if reserved := sorted(set(names) & SPARK_RESERVED_SETTINGS):
            raise ValueError(f"set by the operator, not the profile: {', '.join(reserved)}")
        if len(set(names)) != len(names):
            raise ValueError("each Spark setting may appear once")
        return self


class NotebookProfileSpec(Model):
    """A kind of notebook: resources, software environment, and who may use it."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "!has(self.defaultTimeLimitMinutes) || !has(self.maxTimeLimitMinutes)"
                    " || self.defaultTimeLimitMinutes <= self.maxTimeLimitMinutes",
                    "message": "defaultTimeLimitMinutes must not exceed maxTimeLimitMinutes",
                }
            ]
        }
    )

    display_name: str = Field(
        alias="displayName", min_length=1, max_length=128, description="Name shown in the form."
    )
    description: str = Field(default="", max_length=2048, description="Shown under the name.")
    cores: int = Field(ge=1, le=1024, description="CPU cores by default.")
    memory_mib: int = Field(
        alias="memoryMiB", ge=128, le=4194304, description="Memory in MiB by default."
    )
    max_cores: int | None = Field(
        default=None, alias="maxCores", ge=1, le=1024, description="Most cores a session may ask."
    )
    max_memory_mib: int | None = Field(
        default=None, alias="maxMemoryMiB", ge=128, le=4194304, description="Most memory (MiB)."
    )
    default_time_limit_minutes: int = Field(
        default=60, alias="defaultTimeLimitMinutes", ge=1, le=43200, description="Default walltime."
    )
    max_time_limit_minutes: int = Field(
        default=480, alias="maxTimeLimitMinutes", ge=1, le=43200, description="Longest walltime."
    )
    kernel_setup: str = Field(
        default="",
        alias="kernelSetup",
        max_length=65536,
        description="A bash script run in the job before the notebook starts (e.g. builds a "
        "virtualenv and installs ipykernel). It runs as the user, verbatim.",
    )
    modules: list[ModuleName] = Field(
        default_factory=list, max_length=64, description="Environment modules loaded in order."
    )
    allowed_sites: list[ObjectName] = Field(
        default_factory=list,
        alias="allowedSites",
        max_length=32,
        description="SlurmSites this profile may run at; empty means all.",
    )
    allowed_groups: list[GroupName] = Field(
        default_factory=list,
        alias="allowedGroups",
        max_length=64,
        description="Hub groups whose members may use this profile; empty means everyone.",
    )
    spark: SparkSection | None = Field(default=None, description="Optional Spark cluster.")


class NotebookProfile(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    KIND: ClassVar[str] = "NotebookProfile"

    spec: NotebookProfileSpec


# SlurmSite ------------------------------------------------------------------------------------


class Frontend(Model):
    """The login node the operator ssh's to."""

    host: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$",
        description="Host name or IPv4 address of the frontend.",
    )
    port: int = Field(default=22, ge=1, le=65535, description="sshd port.")


class HostKeyTrust(Model):
    """How the frontend's host key is verified. Never skipped: at least one entry is required."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "(has(self.knownHosts) ? size(self.knownHosts) : 0)"
                    " + (has(self.certificateAuthorities) ? size(self.certificateAuthorities) : 0)"
                    " > 0",
                    "message": "host key checking cannot be disabled: give knownHosts or "
                    "certificateAuthorities",
                }
            ]
        }
    )

    known_hosts: list[Annotated[str, Field(max_length=16384)]] = Field(
        default_factory=list,
        alias="knownHosts",
        max_length=64,
        description="known_hosts lines for the frontend (host patterns, key type, key).",
    )
    certificate_authorities: list[Annotated[str, Field(max_length=16384)]] = Field(
        default_factory=list,
        alias="certificateAuthorities",
        max_length=16,
        description="Public keys of host CAs (OpenSSH format) that sign the frontend's host key.",
    )


class Partition(Model):
    """A partition notebooks may be submitted to."""

    name: PartitionName
    default: bool = Field(default=False, description="Used when a profile names no partition.")


class AccountPolicy(StrEnum):
    REQUIRED = "Required"
    OPTIONAL = "Optional"


class AuthMethod(StrEnum):
    CERTIFICATE = "Certificate"
    USER_KEY = "UserKey"
    GSSAPI = "GSSAPI"


class KerberosAuth(Model):
    """How sessions of a GSSAPI site log in: whose tickets are accepted, for which host."""

    realm: str = Field(
        min_length=1,
        max_length=255,
        pattern=r"^[A-Za-z0-9._-]+$",
        description="The Kerberos realm of the site's users: a ticket is used for a session only "
        "when its client principal is exactly <user>@<realm>.",
    )
    host_principal_host: str | None = Field(
        default=None,
        alias="hostPrincipalHost",
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$",
        description="The host part of the frontend's service principal host/<host>@<realm> "
        "(default: frontend.host).",
    )
    renew_before_seconds: int = Field(
        default=600,
        alias="renewBeforeSeconds",
        ge=1,
        le=86400,
        description="Renew a session's ticket (and refresh the job's copy) when it has less "
        "than this left; at most half of the ticket's lifetime is used instead when shorter.",
    )


class SiteAuth(Model):
    """How the operator logs in as the session's user."""

    model_config = ConfigDict(
        json_schema_extra={
            "x-kubernetes-validations": [
                {
                    "rule": "self.method != 'GSSAPI' || has(self.kerberos)",
                    "message": "the GSSAPI method needs kerberos.realm",
                }
            ]
        }
    )

    @model_validator(mode="after")
    def _kerberos_for_gssapi(self) -> SiteAuth:
        if self.method == AuthMethod.GSSAPI and self.kerberos is None:
            raise ValueError("the GSSAPI method needs kerberos.realm")
        return self

    method: AuthMethod = Field(
        default=AuthMethod.CERTIFICATE,
        description="Certificate: short-lived OpenSSH user certificates minted from a CA key in "
        "a Secret. UserKey: a per-user key Secret named <userKeySecretPrefix><user>. GSSAPI: "
        "Kerberos: the ticket the hub obtained at the user's login (a Secret per user in the "
        "session's namespace), delegated to the frontend; the monitor user and cancels whose "
        "ticket has ended use certificates from caSecretName.",
    )
    kerberos: KerberosAuth | None = Field(
        default=None,
        description="Realm and host principal for the GSSAPI method (required with it).",
    )
    ca_secret_name: str | None = Field(
        default=None,
        alias="caSecretName",
        max_length=253,
        description="Secret (in the operator's namespace) with key 'ca' holding the user CA key.",
    )
    user_key_secret_prefix: str = Field(
        default="bbp-ssh-key-",
        alias="userKeySecretPrefix",
        max_length=200,
        pattern=r"^[a-z0-9-]*$",
        description="Prefix of per-user key Secrets for the UserKey method.",
    )
    certificate_validity_minutes: int = Field(
        default=10,
        alias="certificateValidityMinutes",
        ge=1,
        le=1440,
        description="Lifetime of minted user certificates.",
    )


class UserPolicy(Model):
    """Which POSIX users sessions may run as at this site: the operator's own check, decided
    before any certificate is minted, behind the admission policy."""

    allowed_pattern: str = Field(
        default=POSIX_USER_PATTERN,
        alias="allowedPattern",
        max_length=256,
        description="A regular expression (Python syntax, matched against the whole name) that "
        "every session's user must match.",
    )
    denied_users: list[PosixUser] = Field(
        default_factory=list,
        alias="deniedUsers",
        max_length=1024,
        description="Users refused at this site, in addition to the operator's protected users "
        "and the site's monitorUser.",
    )
    require_association: bool = Field(
        default=False,
        alias="requireAssociation",
        description="Refuse users without a Slurm association at the site (from the sacctmgr "
        "data in status.userAccounts). A site whose association table is not known yet "
        "refuses too.",
    )


class SlurmSiteSpec(Model):
    """A Slurm cluster reachable over ssh."""

    display_name: str = Field(
        alias="displayName", min_length=1, max_length=128, description="Name shown in the form."
    )
    frontend: Frontend
    host_keys: HostKeyTrust = Field(
        alias="hostKeys",
        description="How the frontend's host key is verified. Never skipped: give knownHosts "
        "or certificateAuthorities.",
    )
    partitions: list[Partition] = Field(
        min_length=1, max_length=64, description="Partitions notebooks may use."
    )
    account_policy: AccountPolicy = Field(
        default=AccountPolicy.OPTIONAL,
        alias="accountPolicy",
        description="Required: every session must name a Slurm account (project).",
    )
    auth: SiteAuth = Field(default_factory=SiteAuth, description="How the operator logs in.")
    monitor_user: PosixUser = Field(
        alias="monitorUser",
        description="The site account used for site-wide queries (sinfo, batched squeue/sacct).",
    )
    admin_user: PosixUser | None = Field(
        default=None,
        alias="adminUser",
        description="A site account with sacctmgr AdminLevel=Operator, used only to raise a "
        "running session's time limit (scontrol update JobId=... TimeLimit=...; users may not "
        "raise their own). Protected like monitorUser: no session runs as it. Without it, "
        "extensions are refused.",
    )
    poll_interval_seconds: int = Field(
        default=15, alias="pollIntervalSeconds", ge=1, le=3600, description="Polling period."
    )
    user_policy: UserPolicy = Field(
        default_factory=UserPolicy,
        alias="userPolicy",
        description="Which users sessions may run as here (pattern, denied users, Slurm "
        "association required).",
    )
    node_address_template: str = Field(
        default="{node}",
        alias="nodeAddressTemplate",
        max_length=253,
        pattern=r"^[A-Za-z0-9{}]([A-Za-z0-9.{}-]*[A-Za-z0-9}])?$",
        description="How a compute node's Slurm name becomes the address its notebook is "
        "reached at: {node} is replaced by the node name (e.g. '{node}.cluster.example.org'). "
        "A job's endpoint report is accepted only for that address of the node Slurm "
        "allocated to it (or for notebookHost, when set).",
    )
    connection_file_fallback: bool = Field(
        default=False,
        alias="connectionFileFallback",
        description="When a running job has not reported its endpoint within a minute, read the "
        "connection file it wrote (~/.bbp-notebooks/<session uid>/connection.json) over ssh as "
        "the user. Needs a frontend that allows `cat`, not only Slurm commands.",
    )
    time_zone: str = Field(
        default="UTC",
        alias="timeZone",
        max_length=64,
        pattern=r"^[A-Za-z0-9_+/-]+$",
        description="IANA time zone of the Slurm controller; Slurm prints local times without "
        "an offset.",
    )
    notebook_host: str | None = Field(
        default=None,
        alias="notebookHost",
        max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$",
        description="Address notebooks bind and are reached at; default is the node's FQDN.",
    )


class PartitionStatus(StatusModel):
    """Availability of one partition."""

    name: str = Field(max_length=64, description="Partition name.")
    idle_nodes: int = Field(alias="idleNodes", ge=0, description="Nodes with nothing running.")
    total_nodes: int = Field(alias="totalNodes", ge=0, description="Nodes in the partition.")
    idle_cores: int = Field(alias="idleCores", ge=0, description="Unallocated cores.")
    total_cores: int = Field(alias="totalCores", ge=0, description="Cores in the partition.")


class UserAccounts(StatusModel):
    """The Slurm accounts (projects) one user may charge at the site."""

    user: str = Field(max_length=32, description="POSIX user name.")
    accounts: list[Annotated[str, Field(max_length=64)]] = Field(
        default_factory=list, max_length=256, description="Accounts, as sacctmgr reports them."
    )


class SlurmSiteStatus(StatusModel):
    """Live state of the site, refreshed every poll interval."""

    conditions: list[Condition] = Field(
        default_factory=list,
        description="Reachable, and JobsVisible (False when many sessions' jobs vanish from the "
        "monitor's view at once).",
    )
    partitions: list[PartitionStatus] = Field(
        default_factory=list, description="Live availability per partition."
    )
    idle_nodes: int | None = Field(
        default=None,
        alias="idleNodes",
        ge=0,
        description="Idle nodes in the default partition (where sessions run).",
    )
    pending_jobs: int | None = Field(
        default=None, alias="pendingJobs", ge=0, description="Pending jobs at the site."
    )
    running_jobs: int | None = Field(
        default=None, alias="runningJobs", ge=0, description="Running jobs at the site."
    )
    user_accounts: list[UserAccounts] = Field(
        default_factory=list,
        alias="userAccounts",
        max_length=10000,
        description="Each user's accounts at the site (refreshed every few minutes), so the "
        "spawner can offer the projects a user may charge.",
    )
    slurm_version: str | None = Field(
        default=None, alias="slurmVersion", max_length=64, description="Reported by sinfo -V."
    )
    last_poll_time: Timestamp | None = Field(
        default=None, alias="lastPollTime", description="When the site last answered."
    )
    observed_generation: int | None = Field(
        default=None, alias="observedGeneration", ge=0, description="The generation last seen."
    )


class SlurmSite(BaseModel):
    model_config = ConfigDict(extra="ignore", populate_by_name=True)
    KIND: ClassVar[str] = "SlurmSite"

    spec: SlurmSiteSpec
    status: SlurmSiteStatus = Field(default_factory=SlurmSiteStatus)


def dump(model: BaseModel) -> dict[str, Any]:
    """A model as it goes on the wire: camelCase aliases, no nulls, JSON types."""
    return model.model_dump(mode="json", by_alias=True, exclude_none=True)
