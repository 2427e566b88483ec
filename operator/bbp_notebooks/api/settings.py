"""Operator settings, read from the environment (BBP_*) and an optional YAML file.

The same model generates the Helm chart's values.schema.json section for the operator, so a
setting is described once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

# System accounts on a Debian/RHEL frontend; nobody's notebook runs as these.
DEFAULT_PROTECTED_USERS = (
    "root",
    "daemon",
    "bin",
    "sys",
    "sync",
    "games",
    "man",
    "lp",
    "mail",
    "news",
    "uucp",
    "proxy",
    "www-data",
    "backup",
    "list",
    "irc",
    "nobody",
    "systemd-network",
    "sshd",
    "messagebus",
    "polkitd",
    "munge",
    "slurm",
    "mysql",
    "adm",
    "operator",
    "halt",
    "shutdown",
    "ftp",
    "postfix",
    "chrony",
)


class OperatorSettings(BaseSettings):
    """How the operator runs. Every field may be set as BBP_<FIELD> in the environment."""

    model_config = SettingsConfigDict(env_prefix="BBP_", extra="forbid")

    namespace: str = Field(
        default="bbp-notebooks",
        description="Namespace of the operator: holds CA and key Secrets, and the peering object.",
    )
    watch_namespaces: list[str] = Field(
        default_factory=list,
        description="Namespaces whose NotebookSessions are served; empty means all.",
    )
    peering: bool = Field(
        default=False,
        description="Coordinate replicas through kopf peering (needs the ClusterKopfPeering "
        "CRD); without it the operator runs standalone and must have one replica.",
    )
    peering_name: str = Field(default="bbp-notebooks", description="kopf peering object name.")
    shard: str = Field(
        default="",
        max_length=20,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?)?$",
        description="This operator's shard (operator/shards.py); empty: one operator serves "
        "every site. A shard serves only the sessions of its `sites`, with its own finalizer, "
        "annotations and (give each its own) peeringName.",
    )
    sites: list[str] = Field(
        default_factory=list,
        description="The SlurmSites this shard serves (required with `shard`; each site in "
        "exactly one shard).",
    )
    places_auto: bool = Field(
        default=False,
        description="With `shard`: this shard places `site: auto` sessions, choosing among all "
        "sites, and the chosen site's shard submits them. Exactly one shard should.",
    )
    priority: int = Field(
        default=0,
        ge=0,
        le=1000,
        description="kopf peering priority; replicas must have distinct values.",
    )
    peering_lifetime_seconds: int = Field(
        default=60,
        ge=5,
        le=3600,
        description="How long a replica's peering record lives without a refresh: a standby "
        "takes over this long after the active replica died.",
    )
    http_host: str = Field(
        default="127.0.0.1", description="Address of the callback and /metrics HTTP server."
    )
    http_port: int = Field(default=8089, ge=1, le=65535, description="Port of that server.")
    callback_url: str = Field(
        default="http://127.0.0.1:8089",
        description="Base URL that jobs on compute nodes use to report their endpoint.",
    )
    notebook_command: list[str] = Field(
        default_factory=lambda: ["jupyterhub-singleuser", "--ip={host}", "--port={port}"],
        description="Command (argv) that starts the notebook server in the job; {host} and "
        "{port} are replaced by the address the job binds.",
    )
    installation_id: str = Field(
        default="default",
        min_length=1,
        max_length=20,
        pattern=r"^[a-z0-9]+$",
        description="Names this installation in its Slurm job names (bbpnb-<id>-<session uid>): "
        "the orphan sweep only ever considers jobs carrying its own id, so two installations "
        "at one site never cancel each other's jobs. Give each installation its own.",
    )
    require_admission_policy: bool = Field(
        default=True,
        description="Serve sessions only while the chart's ValidatingAdmissionPolicy and its "
        "binding are installed: the policy is what makes spec.user and the groups annotation "
        "trustworthy. Without it sessions stay Pending with reason AdmissionPolicyMissing.",
    )
    admission_policy_name: str = Field(
        default="bbp-notebooks-sessions",
        max_length=253,
        description="Name of that ValidatingAdmissionPolicy (and of its binding).",
    )
    protected_users: list[str] = Field(
        default_factory=lambda: list(DEFAULT_PROTECTED_USERS),
        description="POSIX users no session may run as, at any site (checked before any "
        "certificate is minted, in addition to the admission policy). Every site's "
        "monitorUser is protected too.",
    )
    certificate_source_addresses: list[str] = Field(
        default_factory=list,
        description="The operator's egress addresses or CIDRs as seen by the frontends; when "
        "set, minted certificates carry them as the source-address critical option, so a "
        "stolen certificate is useless from anywhere else.",
    )
    orphan_sweep_every_polls: int = Field(
        default=4, ge=1, le=1000, description="Sweep for orphan jobs every N site polls."
    )
    orphan_grace_seconds: int = Field(
        default=120,
        ge=0,
        le=86400,
        description="A tagged job younger than this is never treated as an orphan.",
    )
    endpoint_fallback_after_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="At sites with connectionFileFallback, how long a running job may go without "
        "reporting its endpoint before the operator reads its connection file.",
    )
    cancel_give_up_seconds: int = Field(
        default=600,
        ge=1,
        le=86400,
        description="How long a deleted session waits for its job's cancel to succeed before it "
        "is released anyway (with a Warning Event); the orphan sweep then cancels the job once "
        "the site answers again.",
    )
    missing_job_grace_seconds: int = Field(
        default=60,
        ge=1,
        le=3600,
        description="How long after submission a job may be absent from every view before it is "
        "looked for as its owner (at least three poll intervals are always allowed).",
    )
    warning_lead_minutes: int = Field(
        default=15,
        ge=1,
        le=1440,
        description="How long before a running job's expected end its session gets the "
        "TimeLimit=False EndingSoon condition and a Warning Event EndingSoon.",
    )
    submission_settle_seconds: int = Field(
        default=60,
        ge=0,
        le=3600,
        description="After an sbatch whose answer was lost (a timeout after it started, a "
        "dropped connection), how long to wait before looking for the job by its tag: a slow "
        "controller may register it late. Nothing is submitted again before that look.",
    )
    command_timeout_seconds: int = Field(
        default=30, ge=1, le=600, description="Deadline for one Slurm command over ssh."
    )
    max_channels_per_connection: int = Field(
        default=8, ge=1, le=10, description="Concurrent ssh channels per connection (sshd: 10)."
    )
    max_handshakes_per_frontend: int = Field(
        default=4, ge=1, le=64, description="Concurrent ssh handshakes per frontend."
    )
    failpoints: list[str] = Field(
        default_factory=list,
        description="Fault injection for tests only (operator/failpoints.py, like etcd's "
        "gofail): 'after-sbatch' kills the process right after a successful sbatch, before the "
        "status write; 'after-spark-sbatch' the same after a PySpark session's second sbatch "
        "(its Spark cluster).",
    )
    settings_file: Path | None = Field(
        default=None, description="Optional YAML file with these settings (environment wins)."
    )

    @model_validator(mode="after")
    def _a_shard_has_sites(self) -> OperatorSettings:
        if self.shard and not self.sites:
            raise ValueError(f"shard {self.shard!r} serves no site: set `sites`")
        if self.sites and not self.shard:
            raise ValueError("`sites` needs `shard` (a name for this operator's share)")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings, env_settings, _YamlFileSource(settings_cls))


class _YamlFileSource(PydanticBaseSettingsSource):
    """Settings from the YAML file named by BBP_SETTINGS_FILE."""

    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        import os

        import yaml

        path = os.environ.get("BBP_SETTINGS_FILE")
        if not path:
            return {}
        data = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        return {key.replace("-", "_"): value for key, value in data.items()}
