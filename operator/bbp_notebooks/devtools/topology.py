"""The dev/test sites, defined once: names, loopback addresses, nodes, partitions, accounts, first
job ids and time zones of the two emulated Slurm sites (geneva, lugano) that `make dev`, the
operator tests and the mock Slurm fixtures use, and the builders of their mock Slurm config and
SlurmSite objects. `examples/sites.yaml` and `examples/mockslurm-sites.yaml` are generated from it
(`make examples`; a unit test fails when they drift):

    python -m bbp_notebooks.devtools.topology --root . [--check]

The real Slurm clusters of the tests (devtools.realslurm) are another topology, on other
addresses (127.0.0.10-12, sshd on port 2222) with their own node names and accounts; they are
named here too (REAL_SLURM_*), so every 127.0.0.x in use is in this file.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from bbp_notebooks.api.constants import API_VERSION

# Loopback only (the project's network rule): the control interfaces and the notebooks bind here,
# the emulated frontends on 127.0.0.2x, the real-Slurm fixture on 127.0.0.1x.
LOOPBACK = "127.0.0.1"
MONITOR_USER = "bbpmon"
# The site account with sacctmgr AdminLevel=Operator that raises running jobs' time limits (users
# may not raise their own); make dev's SlurmSites name it as adminUser.
ADMIN_USER = "bbpops"
USER_CA_SECRET = "bbp-user-ca"  # noqa: S105  (a Secret's name, not a secret)
# user -> Slurm accounts (the first is the default) at every emulated site; the monitor user owns
# no jobs but may log in (a uid of 1000 or more).
USERS: Mapping[str, tuple[str, ...]] = {
    "alice": ("proj-a", "proj-b"),
    "bob": ("proj-b",),
    MONITOR_USER: (),
    ADMIN_USER: (),
}


class Partition(NamedTuple):
    name: str
    max_time: str  # any Slurm time format
    default: bool = False


@dataclass(frozen=True)
class EmulatedSite:
    """One emulated Slurm site: its frontend on a loopback alias, its nodes and partitions."""

    name: str
    display_name: str
    address: str
    node_names: str  # a Slurm host list
    nodes: int
    cpus: int
    memory_mb: int
    first_job_id: int
    require_account: bool
    partitions: tuple[Partition, ...]
    time_zone: str = "UTC"  # IANA zone the mock prints times in (SlurmSite.spec.timeZone)


GENEVA = EmulatedSite(
    name="geneva",
    display_name="Geneva",
    address="127.0.0.21",
    node_names="gva-cn[01-08]",
    nodes=8,
    cpus=8,
    memory_mb=65536,
    first_job_id=1_000_000,
    require_account=False,
    partitions=(Partition("prod", "1-00:00:00", True), Partition("debug", "1:00:00")),
)
LUGANO = EmulatedSite(
    name="lugano",
    display_name="Lugano",
    address="127.0.0.22",
    node_names="lug-cn[01-04]",
    nodes=4,
    cpus=16,
    memory_mb=65536,
    first_job_id=2_000_000,
    require_account=True,
    partitions=(Partition("prod", "1-00:00:00", True),),
)
EMULATED_SITES = (GENEVA, LUGANO)

# How the emulator behaves in `make dev` and the operator tests (fast, but Slurm's defaults where
# the operator cares: over-limit jobs pend).
MOCK_TIMING: Mapping[str, float] = {
    "sched_interval": 0.1,
    "kill_wait": 2.0,
    "controller_down_delay": 1.0,
}
DEFAULT_MIN_JOB_AGE_S = 300.0

# The examples' fixed ports (`make dev` and the tests pick free ones).
EXAMPLE_SSH_PORT = 2222
EXAMPLE_CONTROL_PORT = 6830
EXAMPLE_POLL_INTERVAL_S = 10
EXAMPLE_HOST_CA = (
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDbdC43OqCfO+TcRwHod/TbEi2AV2yaqOuW5OCkFewoK"
    " example-host-ca"
)

# The real Slurm clusters (devtools.realslurm): MariaDB on REAL_SLURM_SHARED_ADDRESS, each
# cluster's sshd on its address and REAL_SLURM_SSH_PORT; the Slurm daemons bind to the address
# the hostname resolves to, which must be LOOPBACK.
REAL_SLURM_SHARED_ADDRESS = "127.0.0.10"
REAL_SLURM_ADDRESSES: Mapping[str, str] = {"geneva": "127.0.0.11", "lugano": "127.0.0.12"}
REAL_SLURM_SSH_PORT = 2222


def mock_time_zone(sites: Sequence[EmulatedSite]) -> str:
    """The TZ of the one mock process serving `sites` (it prints its local time)."""
    zones = {site.time_zone for site in sites}
    if len(zones) != 1:
        raise ValueError(f"one mock Slurm process serves one time zone, not {sorted(zones)}")
    return zones.pop()


def mockslurm_site_config(
    site: EmulatedSite,
    *,
    port: int,
    state_dir: str,
    user_ca: Mapping[str, Any],
    host_key_path: str | None = None,
    min_job_age: float = DEFAULT_MIN_JOB_AGE_S,
) -> dict[str, Any]:
    """One site of a bbp-notebooks-mockslurm config; `user_ca` is {"user_ca_keys": [...]} or
    {"user_ca_key_files": [...]}."""
    config: dict[str, Any] = {
        "name": site.name,
        "address": site.address,
        "port": port,
        "state_dir": state_dir,
        **({"host_key_path": host_key_path} if host_key_path else {}),
        **user_ca,
        "users": [
            {
                "name": u,
                "accounts": list(a),
                **({"admin_level": "Operator"} if u == ADMIN_USER else {}),
            }
            for u, a in USERS.items()
        ],
        "require_account": site.require_account,
        "nodes": [{"names": site.node_names, "cpus": site.cpus, "memory_mb": site.memory_mb}],
        "partitions": [
            {"name": p.name, "max_time": p.max_time, "default": p.default} for p in site.partitions
        ],
        "first_job_id": site.first_job_id,
        "min_job_age": min_job_age,
        **MOCK_TIMING,
        # Slurm's default (and our real test clusters'): over-limit jobs pend.
        "enforce_partition_limits": False,
    }
    return config


def slurm_site_object(
    site: EmulatedSite,
    *,
    port: int,
    host_keys: Mapping[str, list[str]],
    poll_interval: int,
    notebook_host: str | None = None,
    admin_user: str | None = None,
) -> dict[str, Any]:
    """The SlurmSite for an emulated site; `host_keys` is its spec.hostKeys."""
    spec: dict[str, Any] = {
        "displayName": site.display_name,
        "frontend": {"host": site.address, "port": port},
        "hostKeys": dict(host_keys),
        "partitions": [
            {"name": p.name, **({"default": True} if p.default else {})} for p in site.partitions
        ],
        "accountPolicy": "Required" if site.require_account else "Optional",
        "auth": {"method": "Certificate", "caSecretName": USER_CA_SECRET},
        "monitorUser": MONITOR_USER,
        "pollIntervalSeconds": poll_interval,
        "timeZone": site.time_zone,
    }
    if notebook_host is not None:
        spec["notebookHost"] = notebook_host
    if admin_user is not None:
        spec["adminUser"] = admin_user
    return {
        "apiVersion": API_VERSION,
        "kind": "SlurmSite",
        "metadata": {"name": site.name},
        "spec": spec,
    }


# -- the examples ------------------------------------------------------------------------------

GENERATED = "Generated from bbp_notebooks/devtools/topology.py by `make examples`: edit it there."

SITES_EXAMPLE_HEADER = f"""\
# Sample SlurmSites (cluster-scoped) for the emulated sites of `make dev`. The host CA key below is
# an example: replace it with your sites' host CA (make dev generates its own).
# {GENERATED}
"""

MOCKSLURM_EXAMPLE_HEADER = f"""\
# The two mock Slurm sites of `make dev` on fixed ports: run with
#   bbp-notebooks-mockslurm --config examples/mockslurm-sites.yaml
# Relative paths resolve against this file's directory; the user CA file is the public half of
# the key the operator mints certificates with. examples/sites.yaml describes the same sites.
# {GENERATED}
"""


def examples() -> dict[str, str]:
    """examples/<name> -> its text."""
    sites = [
        slurm_site_object(
            site,
            port=EXAMPLE_SSH_PORT,
            host_keys={"certificateAuthorities": [EXAMPLE_HOST_CA]},
            poll_interval=EXAMPLE_POLL_INTERVAL_S,
            admin_user=ADMIN_USER,
        )
        for site in EMULATED_SITES
    ]
    mock = {
        "control": {"address": LOOPBACK, "port": EXAMPLE_CONTROL_PORT},
        "sites": [
            mockslurm_site_config(
                site,
                port=EXAMPLE_SSH_PORT,
                state_dir=f"../.dev/mockslurm/{site.name}",
                user_ca={"user_ca_key_files": ["../.dev/keys/user_ca.pub"]},
            )
            for site in EMULATED_SITES
        ],
    }
    return {
        "sites.yaml": SITES_EXAMPLE_HEADER + yaml.safe_dump_all(sites, sort_keys=False),
        "mockslurm-sites.yaml": MOCKSLURM_EXAMPLE_HEADER + yaml.safe_dump(mock, sort_keys=False),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="write (or --check) the examples of the topology")
    parser.add_argument("--root", type=Path, default=Path("."), help="repository root")
    parser.add_argument("--check", action="store_true", help="fail if a file differs")
    args = parser.parse_args(argv)
    stale = []
    for name, text in examples().items():
        path = args.root / "examples" / name
        if args.check:
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        else:
            path.write_text(text)
    if stale:
        print(f"stale (run `make examples`): {', '.join(stale)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
