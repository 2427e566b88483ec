"""ssh transport to Slurm frontends: pooled connections, identities, error mapping, SlurmClient."""

from bbp_notebooks.ssh.errors import (
    AnswerLost,
    AuthenticationFailed,
    CommandFailed,
    CommandTimeout,
    HostKeyMismatch,
    SiteUnavailable,
    SlurmControllerUnavailable,
    SshError,
    SubmissionRejected,
    may_have_run,
)
from bbp_notebooks.ssh.identity import CertificateAuthority, Identity, IdentityKind, SiteEndpoint
from bbp_notebooks.ssh.pool import CommandResult, Observer, Renewer, SshPool
from bbp_notebooks.ssh.slurmclient import SlurmClient

__all__ = [
    "AnswerLost",
    "AuthenticationFailed",
    "CertificateAuthority",
    "CommandFailed",
    "CommandResult",
    "CommandTimeout",
    "HostKeyMismatch",
    "Identity",
    "IdentityKind",
    "Observer",
    "Renewer",
    "SiteEndpoint",
    "SiteUnavailable",
    "SlurmClient",
    "SlurmControllerUnavailable",
    "SshError",
    "SshPool",
    "SubmissionRejected",
    "may_have_run",
]
