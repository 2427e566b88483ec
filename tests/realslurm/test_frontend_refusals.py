"""The site guide's frontend rules, on the real clusters: sshd lets in only regular users even
with a valid certificate from the trusted CA, slurmctld runs no job as root, and a certificate
bound to other source addresses is useless here. The configuration under test is the one
charts/bbp-notebooks/README.md gives sites, with docs/site/authorized-principals as is."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import pwd
import re
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import pytest

from bbp_notebooks.devtools import realslurm
from bbp_notebooks.devtools.controlplane import repo_root
from bbp_notebooks.devtools.realslurm import SiteInfo
from bbp_notebooks.devtools.stack import free_port
from bbp_notebooks.ssh import CertificateAuthority
from fixtures.realslurm import RealSlurm, UserIdentity, connect_as, mint_user_identity

pytestmark = [pytest.mark.realslurm, pytest.mark.timeout(180)]

SITES = ["geneva", "lugano"]
# A system account (uid < 1000) with a real shell and an unlocked password field, so that
# nothing but the principals rule stands between its certificate and a shell.
SYSTEM_USER = "bbpnb-sysacct"
NOT_A_PRINCIPAL = "Certificate does not contain an authorized principal"
GUIDE = repo_root() / "charts" / "bbp-notebooks" / "README.md"
PRINCIPALS_COMMAND = repo_root() / realslurm.PRINCIPALS_COMMAND_SOURCE


@pytest.fixture(scope="module")
def system_user() -> Iterator[str]:
    created = False
    try:
        pwd.getpwnam(SYSTEM_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/",
             "--shell", "/bin/bash", SYSTEM_USER],
            check=True, timeout=30,
        )  # fmt: skip
        created = True
    subprocess.run(["usermod", "-p", "*", SYSTEM_USER], check=True, timeout=30)
    assert pwd.getpwnam(SYSTEM_USER).pw_uid < 1000
    try:
        yield SYSTEM_USER
    finally:
        if created:
            subprocess.run(["userdel", SYSTEM_USER], check=False, timeout=30)


def sshd_log(real_slurm: RealSlurm, site: str) -> Path:
    return real_slurm.root / "logs" / f"{site}-sshd.out"


async def log_after(log: Path, offset: int, wanted: str, limit_s: float = 10.0) -> str:
    """What sshd wrote to `log` after `offset`, once it contains `wanted` (sshd logs async)."""
    deadline = time.monotonic() + limit_s
    while True:
        with log.open("rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
        if wanted in text:
            return text
        if time.monotonic() >= deadline:
            pytest.fail(f"{log.name} never said {wanted!r}; it said:\n{text}")
        await asyncio.sleep(0.05)


async def refused(site: SiteInfo, identity: UserIdentity, known_hosts: str | None = None) -> bool:
    try:
        async with connect_as(site, identity, known_hosts=known_hosts):
            return False
    except asyncssh.PermissionDenied:
        return True


async def whoami(conn: asyncssh.SSHClientConnection) -> str:
    result = await conn.run("echo $(id -un) $(id -u)", check=True, timeout=30)
    assert isinstance(result.stdout, str)
    return result.stdout.strip()


@pytest.mark.parametrize("site_name", SITES)
@pytest.mark.parametrize("user", ["root", "daemon", SYSTEM_USER])
async def test_a_valid_certificate_for_root_or_a_system_account_is_refused(
    real_slurm: RealSlurm, system_user: str, site_name: str, user: str
) -> None:
    site = real_slurm.sites[site_name]
    log = sshd_log(real_slurm, site_name)
    offset = log.stat().st_size
    assert await refused(site, mint_user_identity(site, user))
    said = await log_after(log, offset, f"Failed publickey for {user} from 127.0.0.1")
    # The certificate was signed by the trusted CA and names the user: the principals command
    # printed nothing for it, so sshd found no authorized principal.
    assert NOT_A_PRINCIPAL in said
    assert f"Accepted publickey for {user}" not in said


@pytest.mark.parametrize("site_name", SITES)
async def test_a_regular_users_certificate_is_accepted(
    real_slurm: RealSlurm, site_name: str
) -> None:
    site = real_slurm.sites[site_name]
    log = sshd_log(real_slurm, site_name)
    offset = log.stat().st_size
    async with connect_as(site, mint_user_identity(site, "alice")) as conn:
        name, uid = (await whoami(conn)).split()
    assert name == "alice" and int(uid) >= 1000
    said = await log_after(log, offset, "Accepted publickey for alice from 127.0.0.1")
    assert NOT_A_PRINCIPAL not in said


def test_the_frontends_run_the_site_guides_principals_command_byte_for_byte(
    real_slurm: RealSlurm,
) -> None:
    installed = realslurm.SharedPaths(real_slurm.root).principals_command
    assert installed.read_bytes() == PRINCIPALS_COMMAND.read_bytes()
    status = installed.stat()
    assert (status.st_uid, status.st_mode & 0o7777) == (0, 0o755)
    for site in SITES:
        config = (real_slurm.root / site / "sshd_config").read_text().splitlines()
        assert f"AuthorizedPrincipalsCommand {installed} %u" in config
        assert "AuthorizedPrincipalsCommandUser nobody" in config
        assert "PermitRootLogin no" in config


@pytest.mark.parametrize("user", ["alice", "root", "daemon", "nobody", SYSTEM_USER, "nosuchuser"])
def test_the_principals_command_names_regular_users_only(system_user: str, user: str) -> None:
    result = subprocess.run(
        ["runuser", "-u", "nobody", "--", str(PRINCIPALS_COMMAND), user],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert result.returncode == 0
    assert result.stdout == ("alice\n" if user == "alice" else "")


def listening(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1):
        return True
    return False


@dataclasses.dataclass(frozen=True)
class Variant:
    site: SiteInfo
    known_hosts: str
    log: Path


@pytest.fixture
def frontend_without_principals_command(real_slurm: RealSlurm) -> Iterator[Variant]:
    """A second sshd with geneva's configuration minus the principals command (and minus the
    host certificate: it is checked by its plain key) on a port of its own."""
    folder = real_slurm.root / "geneva"
    port = free_port("127.0.0.1")
    lines = []
    for line in (folder / "sshd_config").read_text().splitlines():
        if line.startswith(("AuthorizedPrincipalsCommand", "HostCertificate")):
            continue
        if line.startswith("ListenAddress "):
            line = f"ListenAddress 127.0.0.1:{port}"
        if line.startswith("PidFile "):
            line = f"PidFile {folder}/sshd-variant.pid"
        lines.append(line)
    config = folder / "sshd_config.without-principals-command"
    config.write_text("\n".join(lines) + "\n")
    log = real_slurm.root / "logs" / "geneva-sshd-variant.out"
    with log.open("ab") as out:
        process = subprocess.Popen(
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stdout=out, stderr=out
        )
    try:
        deadline = time.monotonic() + 10
        while not listening("127.0.0.1", port):
            assert process.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the variant sshd did not listen within 10 s"
            time.sleep(0.05)
        public = (folder / "ssh_host_ed25519_key.pub").read_text().split()
        site = dataclasses.replace(real_slurm.sites["geneva"], ssh_host="127.0.0.1", ssh_port=port)
        yield Variant(site, f"[127.0.0.1]:{port} {public[0]} {public[1]}\n", log)
    finally:
        process.terminate()
        process.wait(timeout=10)


async def test_without_the_principals_command_root_still_meets_permitrootlogin_and_a_system_account_gets_in(  # noqa: E501
    frontend_without_principals_command: Variant, system_user: str
) -> None:
    """Each rule does its own part: PermitRootLogin no is a second wall for root, while the
    system account is kept out by the principals command alone."""
    variant = frontend_without_principals_command
    site, hosts, log = variant.site, variant.known_hosts, variant.log
    offset = log.stat().st_size
    assert await refused(site, mint_user_identity(site, "root"), known_hosts=hosts)
    said = await log_after(log, offset, "ROOT LOGIN REFUSED FROM 127.0.0.1")
    assert NOT_A_PRINCIPAL not in said
    async with connect_as(site, mint_user_identity(site, system_user), known_hosts=hosts) as conn:
        name, uid = (await whoami(conn)).split()
    assert name == system_user and int(uid) < 1000


def test_slurmctld_refuses_a_job_from_root(real_slurm: RealSlurm) -> None:
    for name in SITES:
        env = {"PATH": realslurm.DAEMON_PATH, "SLURM_CONF": real_slurm.sites[name].slurm_conf}
        config = subprocess.run(
            ["scontrol", "show", "config"], env=env, capture_output=True, text=True, timeout=30,
            check=True,
        ).stdout  # fmt: skip
        assert re.search(r"^DisableRootJobs\s*=\s*Yes$", config, re.MULTILINE)
        submitted = subprocess.run(
            ["sbatch", "--parsable", "-J", "bbpnb-root-refused", "-t", "1"],
            input="#!/bin/bash\nid -u\n", env=env, capture_output=True, text=True, timeout=30,
            check=False,
        )  # fmt: skip
        assert submitted.returncode == 1, submitted.stdout
        assert submitted.stderr == "sbatch: error: Batch job submission failed: Invalid user id\n"


async def test_a_certificate_bound_to_other_source_addresses_is_refused_by_the_frontend(
    real_slurm: RealSlurm,
) -> None:
    site = real_slurm.sites["geneva"]
    ca = CertificateAuthority(await asyncio.to_thread(Path(site.user_ca_key).read_text))
    log = sshd_log(real_slurm, "geneva")
    for sources, accepted in ((["192.0.2.0/24"], False), (["192.0.2.0/24", "127.0.0.1"], True)):
        minted = ca.mint("alice", source_addresses=sources)
        assert minted.key is not None and minted.certificate is not None
        identity = UserIdentity("alice", minted.key, minted.certificate)
        offset = log.stat().st_size
        if accepted:
            async with connect_as(site, identity) as conn:
                assert (await whoami(conn)).split()[0] == "alice"
        else:
            assert await refused(site, identity)
            await log_after(log, offset, "not from a permitted source address (127.0.0.1)")


def test_the_site_guides_sshd_settings_are_the_fixtures() -> None:
    """Every line of the guide's sshd_config block is in the frontends' configuration (paths
    differ: a line naming a file is compared without it)."""
    guide = GUIDE.read_text()
    block = re.search(r"```\n(# /etc/ssh/sshd_config.*?)```", guide, re.DOTALL)
    assert block is not None, "the site guide has no sshd_config block"
    shared = realslurm.SharedPaths(Path("/srv/rs"))
    fixture = realslurm.sshd_config(
        realslurm.GENEVA, realslurm.ClusterPaths(Path("/srv/rs/geneva")), shared
    ).splitlines()
    wanted = [line for line in block.group(1).splitlines() if line and not line.startswith("#")]
    assert wanted
    for line in wanted:
        words = shlex.split(line)
        pattern = [w for w in words if not w.startswith("/")]
        assert any(
            [w for w in shlex.split(have) if not w.startswith("/")] == pattern
            and len(shlex.split(have)) == len(words)
            for have in fixture
        ), f"the guide's {line!r} is not in the fixture's sshd_config"
    assert str(realslurm.PRINCIPALS_COMMAND_SOURCE) in guide
    slurm = realslurm.slurm_conf(
        realslurm.GENEVA,
        realslurm.ClusterPaths(Path("/srv/rs/geneva")),
        shared,
        hostname="vm",
    ).splitlines()
    assert "DisableRootJobs=YES" in guide and "DisableRootJobs=YES" in slurm
    assert os.access(PRINCIPALS_COMMAND, os.X_OK)
