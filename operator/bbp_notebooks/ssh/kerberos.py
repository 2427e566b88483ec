"""Kerberos tickets as the operator's transport uses them: renewed, kept in 0600 cache files.

Renewal runs ``kinit -R`` on a private copy (argv holds only a file path, never ticket bytes).
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path

from bbp_notebooks.api.kerberos import Ticket, TicketError, parse_ccache

__all__ = [
    "Ticket",
    "TicketError",
    "TicketFiles",
    "parse_ccache",
    "renew_ticket",
]


async def renew_ticket(ticket: Ticket, *, timeout: float = 20.0) -> Ticket:  # noqa: ASYNC109
    """A renewed TGT from the KDC (``kinit -R`` on a private 0600 copy), same principal."""
    if not ticket.renewable:
        raise TicketError(f"the ticket of {ticket.principal} is not renewable")
    with tempfile.TemporaryDirectory(prefix="bbp-krb5-renew-") as folder:
        path = Path(folder) / "ccache"
        _write_private(path, ticket.data)
        try:
            process = await asyncio.create_subprocess_exec(
                "kinit",
                "-R",
                "-c",
                f"FILE:{path}",
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
        except FileNotFoundError:
            raise TicketError(
                "cannot renew tickets here: kinit (krb5-user) is not installed"
            ) from None
        try:
            async with asyncio.timeout(timeout):
                _, stderr = await process.communicate()
        except TimeoutError:
            process.kill()
            await process.wait()
            raise TicketError(f"renewing the ticket of {ticket.principal} timed out") from None
        if process.returncode != 0:
            why = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no reason"]
            raise TicketError(f"the KDC did not renew {ticket.principal}'s ticket: {why[0]}")
        renewed = parse_ccache(path.read_bytes())
    if renewed.principal != ticket.principal:
        raise TicketError("renewal returned a ticket of another principal")
    return renewed


def _write_private(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class TicketFiles:
    """One 0600 ccache file per (site, user) in a 0700 folder, for GSSAPI in this process.

    python-gssapi reads credentials from the store given per connection (asyncssh's gss_store),
    never from $KRB5CCNAME, so two users' logins cannot pick up each other's cache.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self._folder = folder or Path(tempfile.mkdtemp(prefix="bbp-krb5-"))
        self._folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self._folder, 0o700)

    def write(self, key: str, ticket: Ticket) -> str:
        """The cache's path (atomically replaced), for gss_store={'ccache': path}."""
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)
        final = self._folder / f"{safe}.ccache"
        partial = self._folder / f".{safe}.{os.getpid()}.partial"
        _write_private(partial, ticket.data)
        os.replace(partial, final)
        return f"FILE:{final}"

    def close(self) -> None:
        for path in self._folder.glob("*"):
            path.unlink(missing_ok=True)
        self._folder.rmdir()
