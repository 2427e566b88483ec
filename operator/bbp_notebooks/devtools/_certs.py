"""The throw-away PKI of a local control plane: a CA, the API server's serving certificate, an admin
client certificate and the service-account signing key, written as PEM files into one directory."""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

# Long enough for a `make dev` session that runs for days, short enough to stay throw-away.
VALIDITY = datetime.timedelta(days=30)
ADMIN_USER = "bbp-notebooks-admin"
# Members of system:masters bypass RBAC: the cluster-admin of a fresh cluster.
ADMIN_GROUP = "system:masters"


@dataclass(frozen=True)
class PkiFiles:
    ca_cert: Path
    serving_cert: Path
    serving_key: Path
    admin_cert: Path
    admin_key: Path
    service_account_public_key: Path
    service_account_private_key: Path


def write_pki(directory: Path, *, ip_addresses: list[str], dns_names: list[str]) -> PkiFiles:
    """Generate fresh keys and certificates into `directory` (keys mode 0600)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)

    ca_key = _new_key()
    ca_name = _name("bbp-notebooks-dev-ca")
    ca_cert = (
        _builder(ca_name, ca_name, ca_key.public_key(), now)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(
            x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )

    def leaf(
        subject: x509.Name, usage: x509.ObjectIdentifier, sans: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = _new_key()
        builder = (
            _builder(subject, ca_name, key.public_key(), now)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(cert_sign=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                critical=False,
            )
        )
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    serving_sans: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    serving_sans += [x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses]
    serving_cert, serving_key = leaf(
        _name("kube-apiserver"), ExtendedKeyUsageOID.SERVER_AUTH, serving_sans
    )
    admin_cert, admin_key = leaf(
        _name(ADMIN_USER, organization=ADMIN_GROUP), ExtendedKeyUsageOID.CLIENT_AUTH, []
    )
    service_account_key = _new_key()

    files = PkiFiles(
        ca_cert=directory / "ca.crt",
        serving_cert=directory / "apiserver.crt",
        serving_key=directory / "apiserver.key",
        admin_cert=directory / "admin.crt",
        admin_key=directory / "admin.key",
        service_account_public_key=directory / "service-account.pub",
        service_account_private_key=directory / "service-account.key",
    )
    _write_cert(files.ca_cert, ca_cert)
    _write_cert(files.serving_cert, serving_cert)
    _write_key(files.serving_key, serving_key)
    _write_cert(files.admin_cert, admin_cert)
    _write_key(files.admin_key, admin_key)
    _write_key(files.service_account_private_key, service_account_key)
    files.service_account_public_key.write_bytes(
        service_account_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    # The CA key is never written: nothing after start-up signs with it, so it dies with this call.
    return files


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: accepted by Go's TLS stack and by the API server as a service-account (ES256) key,
    # and generated in microseconds where RSA takes a noticeable part of the start-up budget.
    return ec.generate_private_key(ec.SECP256R1())


def _name(common_name: str, *, organization: str | None = None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organization is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization))
    return x509.Name(attributes)


def _builder(
    subject: x509.Name,
    issuer: x509.Name,
    public_key: ec.EllipticCurvePublicKey,
    now: datetime.datetime,
) -> x509.CertificateBuilder:
    return (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(public_key)
        .serial_number(x509.random_serial_number())
        # Tolerate small clock differences between this process and the API server.
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + VALIDITY)
    )


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as stream:
        os.fchmod(stream.fileno(), 0o600)  # also when the file already existed
        stream.write(pem)
