"""Identities and the certificate authority: what a minted certificate allows, and for how long."""

from __future__ import annotations

import datetime as dt
import os
import pathlib
import subprocess

import asyncssh
import pytest

from bbp_notebooks.ssh import CertificateAuthority, Identity, IdentityKind, SiteEndpoint

NOW = dt.datetime(2026, 11, 25, 10, 0, 0, tzinfo=dt.UTC)


@pytest.fixture(scope="module")
def ca() -> CertificateAuthority:
    key = asyncssh.generate_private_key("ssh-ed25519")
    return CertificateAuthority(key.export_private_key())


def keygen_listing(identity: Identity, folder: pathlib.Path) -> str:
    assert identity.certificate is not None
    path = folder / "id-cert.pub"
    path.write_bytes(identity.certificate.export_certificate())
    listing = subprocess.run(
        ["ssh-keygen", "-L", "-f", str(path)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
        env={**os.environ, "TZ": "UTC"},  # the listing prints validity in local time
    )
    return listing.stdout


@pytest.mark.openssh  # ssh-keygen -L reads the certificate
def test_a_minted_certificate_is_for_one_user_briefly_and_allows_nothing_interactive(
    ca: CertificateAuthority, tmp_path: pathlib.Path
) -> None:
    identity = ca.mint("alice", dt.timedelta(minutes=10), now=NOW)
    listing = keygen_listing(identity, tmp_path)
    assert "ssh-ed25519-cert-v01@openssh.com user certificate" in listing
    assert "Principals: \n                alice\n" in listing
    assert "Valid: from 2026-11-25T09:59:00 to 2026-11-25T10:10:00" in listing
    assert "Critical Options: (none)" in listing
    assert "Extensions: (none)" in listing  # no pty, no port/agent/X11 forwarding, no user rc
    assert identity.kind is IdentityKind.CERTIFICATE
    assert identity.valid_before == NOW + dt.timedelta(minutes=10)


@pytest.mark.openssh  # ssh-keygen -L reads the certificate
def test_source_addresses_become_the_source_address_critical_option(
    ca: CertificateAuthority, tmp_path: pathlib.Path
) -> None:
    identity = ca.mint(
        "alice", dt.timedelta(minutes=10), now=NOW, source_addresses=["192.0.2.3", "fd00::/64"]
    )
    listing = keygen_listing(identity, tmp_path)
    assert "Critical Options: \n                source-address 192.0.2.3/32,fd00::/64\n" in listing
    assert "Principals: \n                alice\n" in listing
    assert "Extensions: (none)" in listing


@pytest.mark.parametrize("addresses", [["192.0.2.300"], ["example.org"], ["192.0.2.1,192.0.2.2"]])
def test_a_source_address_sshd_could_not_parse_is_refused_at_minting(
    ca: CertificateAuthority, addresses: list[str]
) -> None:
    with pytest.raises(ValueError, match="not an IP address or CIDR"):
        ca.mint("alice", source_addresses=addresses)


def test_one_address_given_as_a_bare_string_is_refused(ca: CertificateAuthority) -> None:
    with pytest.raises(TypeError):
        ca.mint("alice", source_addresses="192.0.2.1")


def test_every_mint_uses_a_fresh_key(ca: CertificateAuthority) -> None:
    first, second = ca.mint("alice"), ca.mint("alice")
    assert first.fingerprint != second.fingerprint


def test_expiry_is_known_and_checked(ca: CertificateAuthority) -> None:
    identity = ca.mint("alice", dt.timedelta(minutes=10), now=NOW)
    assert not identity.expires_within(dt.timedelta(minutes=1), now=NOW)
    assert identity.expires_within(dt.timedelta(minutes=1), now=NOW + dt.timedelta(minutes=9))
    reloaded = Identity.from_private_key(
        "alice",
        identity.key.export_private_key() if identity.key else b"",
        identity.certificate.export_certificate() if identity.certificate else None,
    )
    assert reloaded.valid_before == identity.valid_before


@pytest.mark.parametrize("user", ["root;id", "Alice", "", "a" * 40, "-oProxyCommand=x"])
def test_only_posix_user_names_are_minted(ca: CertificateAuthority, user: str) -> None:
    with pytest.raises(ValueError):
        ca.mint(user)


def test_a_plain_key_identity_never_expires_and_hides_its_key() -> None:
    key = asyncssh.generate_private_key("ssh-ed25519")
    identity = Identity.from_private_key("bob", key.export_private_key().decode())
    assert identity.kind is IdentityKind.KEY
    assert identity.valid_before is None and not identity.expires_within(dt.timedelta(days=999))
    assert "PRIVATE" not in repr(identity) and "key=" not in repr(identity)


def test_a_kerberos_identity_has_a_ticket_cache_and_no_key() -> None:
    identity = Identity.gssapi("alice", "FILE:/tmp/alice.ccache")
    assert identity.kind is IdentityKind.GSSAPI
    assert identity.fingerprint == "gssapi"
    with pytest.raises(ValueError, match="either a key or"):
        Identity("alice", None)


def test_the_ca_public_key_is_an_authorized_keys_line(ca: CertificateAuthority) -> None:
    assert ca.public_key.startswith("ssh-ed25519 ")
    assert "\n" not in ca.public_key


@pytest.mark.parametrize("known_hosts", ["", "\n  \n", "@cert-authority\n", "@revoked\n"])
def test_a_site_needs_readable_known_hosts(known_hosts: str) -> None:
    with pytest.raises(ValueError):
        SiteEndpoint("geneva", "127.0.0.11", 22, known_hosts)


def test_a_site_repr_does_not_dump_its_known_hosts() -> None:
    endpoint = SiteEndpoint("geneva", "127.0.0.11", 22, "127.0.0.11 ssh-ed25519 AAAAC3Nza\n")
    assert "ssh-ed25519" not in repr(endpoint)
