"""Configuration of mock Slurm sites: pydantic models, loadable from YAML."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from bbp_notebooks.mockslurm.formats import (
    Minutes,
    TimeFormatError,
    expand_hostlist,
    parse_time_limit,
)

POSIX_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
# The overflow user "nobody": refused like a system account (docs/site/authorized-principals).
NOBODY_UID = 65534


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=False)


class NodeConfig(_Model):
    """A group of identical compute nodes."""

    names: str = Field(description='Node names, a Slurm host list such as "gva-cn[01-08]".')
    cpus: int = Field(8, ge=1, description="Cores per node.")
    memory_mb: int = Field(32768, ge=1, description="Memory per node in MiB (RealMemory).")

    def expanded(self) -> list[str]:
        return expand_hostlist(self.names)


class PartitionConfig(_Model):
    name: str = Field(description="Partition name.")
    nodes: str | None = Field(None, description="Host list of member nodes; all nodes if unset.")
    default: bool = Field(False, description="The partition jobs land in without -p.")
    max_time: str = Field("UNLIMITED", description="MaxTime in any Slurm time format.")
    default_time: str | None = Field(
        None, description="DefaultTime for jobs without -t; MaxTime if unset."
    )

    @field_validator("max_time", "default_time")
    @classmethod
    def _valid_time(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                parse_time_limit(value)
            except TimeFormatError as error:
                raise ValueError(f"invalid Slurm time {value!r}") from error
        return value

    @property
    def max_minutes(self) -> Minutes:
        return parse_time_limit(self.max_time)

    @property
    def default_minutes(self) -> Minutes:
        return parse_time_limit(self.default_time) if self.default_time else self.max_minutes


class UserConfig(_Model):
    name: str = Field(description="Login and Slurm user name.")
    accounts: list[str] = Field(default_factory=list, description="Slurm accounts (projects).")
    default_account: str | None = Field(
        None, description="DefaultAccount; the first account if unset."
    )
    authorized_keys: list[str] = Field(
        default_factory=list, description="OpenSSH public key lines accepted for this user."
    )
    uid: int | None = Field(
        None, description="UID shown by Slurm when no POSIX user of this name exists."
    )
    admin_level: Literal["None", "Operator", "Administrator"] = Field(
        "None",
        description="sacctmgr AdminLevel: Operator and Administrator may raise jobs' time "
        "limits (scontrol update), as in Slurm.",
    )

    @field_validator("name")
    @classmethod
    def _posix_name(cls, value: str) -> str:
        if not POSIX_USER.match(value):
            raise ValueError(f"{value!r} is not a POSIX user name")
        return value


class SiteConfig(_Model):
    """One emulated Slurm cluster behind its own ssh login node."""

    name: str = Field(description="Cluster name.")
    address: str = Field("127.0.0.1", description="Listen address (a 127.0.0.x alias).")
    port: int = Field(2222, ge=0, le=65535, description="SSH port; 0 picks a free one.")
    state_dir: Path = Field(description="Spool: job scripts, accounting, generated host key.")
    host_key_path: Path | None = Field(
        None, description="SSH host private key; generated (ed25519) if absent."
    )
    host_certificate_path: Path | None = Field(
        None,
        description="OpenSSH host certificate for the host key (loaded, or written when "
        "host_ca_key_path is set).",
    )
    host_ca_key_path: Path | None = Field(
        None, description="Host CA private key that signs a host certificate at start."
    )
    host_principals: list[str] = Field(
        default_factory=list,
        description="More names the host certificate is valid for, besides the address, the "
        "site's name, <name>-login and localhost: the names clients connect to (in a cluster, "
        "the Service's short and qualified DNS names).",
    )
    user_ca_keys: list[str] = Field(
        default_factory=list, description="Trusted user CA public keys (OpenSSH lines)."
    )
    user_ca_key_files: list[Path] = Field(
        default_factory=list, description="Files holding trusted user CA public keys."
    )
    users: list[UserConfig] = Field(default_factory=list, description="Users and their accounts.")
    require_account: bool = Field(
        False, description="Jobs must name an account with -A (no default account)."
    )
    nodes: list[NodeConfig] = Field(description="Compute nodes.")
    partitions: list[PartitionConfig] = Field(description="Partitions; exactly one default.")
    first_job_id: int = Field(1, ge=1, description="First job id handed out.")
    min_job_age: float = Field(300.0, ge=0, description="Seconds a finished job stays in squeue.")
    sched_interval: float = Field(0.2, gt=0, description="Seconds between scheduler passes.")
    kill_wait: float = Field(30.0, ge=0, description="KillWait: seconds from SIGTERM to SIGKILL.")
    enforce_partition_limits: bool = Field(
        True,
        description="EnforcePartLimits=ALL: over-limit jobs are rejected at submission, "
        "otherwise they pend with reason PartitionTimeLimit.",
    )
    controller_down_delay: float = Field(
        9.0, ge=0, description="Seconds a command waits before reporting the controller down."
    )
    state_save_interval: float = Field(
        5.0, gt=0, description="Seconds between saves of the job table to state_dir/jobs.json."
    )
    max_sessions: int = Field(
        10, ge=1, description="sshd MaxSessions: open channels allowed per connection."
    )
    min_login_uid: int = Field(
        1000,
        ge=0,
        description="Logins as a user whose uid is below this (root, system accounts) or is "
        "nobody's are refused even with a valid certificate, as a site's principals command "
        "refuses them (the POSIX uid, or the configured one for users without a POSIX entry).",
    )
    seconds_per_minute: float = Field(
        60.0,
        gt=0,
        description="Real seconds in one minute of time limit when enforcing walltime; lower it "
        "only to make tests of TIMEOUT fast (what commands print is unchanged).",
    )
    run_as_users: bool = Field(
        True, description="Run jobs as the POSIX user when running as root and the user exists."
    )

    @model_validator(mode="after")
    def _consistent(self) -> SiteConfig:
        names = [name for group in self.nodes for name in group.expanded()]
        if len(names) != len(set(names)):
            raise ValueError("node names must be unique")
        defaults = [p.name for p in self.partitions if p.default]
        if len(defaults) > 1:
            raise ValueError("at most one default partition")
        known = set(names)
        for partition in self.partitions:
            if partition.nodes is not None:
                unknown = set(expand_hostlist(partition.nodes)) - known
                if unknown:
                    raise ValueError(f"partition {partition.name}: unknown nodes {sorted(unknown)}")
        return self

    def login_refused_for_uid(self, uid: int) -> bool:
        return uid < self.min_login_uid or uid == NOBODY_UID

    def user(self, name: str) -> UserConfig | None:
        return next((user for user in self.users if user.name == name), None)

    def ca_public_keys(self) -> list[str]:
        keys = [key.strip() for key in self.user_ca_keys if key.strip()]
        for path in self.user_ca_key_files:
            try:
                text = path.read_text()
            except OSError:
                # Read at every login: a CA file may appear (or rotate) after start.
                continue
            keys.extend(
                line.strip() for line in text.splitlines() if line.strip() and line[0] != "#"
            )
        return keys


class ControlConfig(_Model):
    address: str = Field("127.0.0.1", description="Control interface listen address.")
    port: int = Field(6830, ge=0, le=65535, description="Control interface port; 0 = any.")


class MockSlurmConfig(_Model):
    control: ControlConfig | None = Field(
        default_factory=ControlConfig, description="HTTP control interface; null disables it."
    )
    sites: list[SiteConfig] = Field(description="The sites to run.")

    @model_validator(mode="after")
    def _unique_sites(self) -> MockSlurmConfig:
        names = [site.name for site in self.sites]
        if len(names) != len(set(names)):
            raise ValueError("site names must be unique")
        return self


def load_config(path: Path) -> MockSlurmConfig:
    """Read a YAML file; relative state/key paths resolve against the file's directory."""
    raw: Any = yaml.safe_load(path.read_text())
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    config = MockSlurmConfig.model_validate(raw)
    base = path.parent.resolve()
    for site in config.sites:
        site.state_dir = _resolve(base, site.state_dir)
        for attr in ("host_key_path", "host_certificate_path", "host_ca_key_path"):
            value = getattr(site, attr)
            if value is not None:
                setattr(site, attr, _resolve(base, value))
        site.user_ca_key_files = [_resolve(base, p) for p in site.user_ca_key_files]
    return config


def _resolve(base: Path, path: Path) -> Path:
    expanded = path.expanduser()
    return expanded if expanded.is_absolute() else base / expanded
