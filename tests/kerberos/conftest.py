"""The Kerberos lane's fixtures (a real MIT KDC, a real sshd with GSSAPI) live in fixtures.kdc."""

from fixtures.kdc import gssapi_sshd, kdc

__all__ = ["gssapi_sshd", "kdc"]
