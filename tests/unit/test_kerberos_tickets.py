"""Kerberos tickets without a KDC: whose a ticket cache is, until when, and what the operator
decides about it (renew, keep, give up), row by row; the job script's KRB5CCNAME."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from bbp_notebooks.api.kerberos import (
    TicketError,
    job_ccache_path,
    parse_ccache,
    ticket_secret_name,
)
from bbp_notebooks.api.models import SlurmSiteSpec
from bbp_notebooks.api.vocabulary import Reason
from bbp_notebooks.operator.kerberos import judge, renew_margin
from bbp_notebooks.slurm.jobscript import JobScript, render_job_script
from fixtures.ccache import NOW, ccache


def test_a_ticket_cache_says_whose_it_is_and_until_when() -> None:
    ticket = parse_ccache(ccache())
    assert ticket.principal == "alice@BBP.TEST" and ticket.realm == "BBP.TEST"
    assert ticket.end == NOW - dt.timedelta(minutes=1) + dt.timedelta(hours=10)
    assert ticket.forwardable and ticket.renewable
    assert ticket.renew_until == NOW - dt.timedelta(minutes=1) + dt.timedelta(days=7)
    assert "TTTT" not in repr(ticket)  # the cache's bytes never reach a log line


def test_only_the_users_own_ticket_is_accepted() -> None:
    parse_ccache(ccache("alice")).check_owner("alice", "BBP.TEST")
    with pytest.raises(TicketError, match="bob@BBP.TEST, not alice@BBP.TEST"):
        parse_ccache(ccache("bob")).check_owner("alice", "BBP.TEST")
    with pytest.raises(TicketError, match="not alice@BBP.TEST"):
        parse_ccache(ccache("alice", "OTHER.REALM")).check_owner("alice", "BBP.TEST")
    with pytest.raises(TicketError, match="not alice@BBP.TEST"):  # a service, not the user
        parse_ccache(ccache("alice/admin")).check_owner("alice", "BBP.TEST")


@pytest.mark.parametrize(
    "data",
    [b"", b"\x05\x03" + b"\x00" * 40, ccache()[:-10], ccache(client="bob")],
    ids=["empty", "old-format", "truncated", "no-tgt-of-the-default-principal"],
)
def test_what_is_not_a_usable_ticket_cache_is_refused(data: bytes) -> None:
    with pytest.raises(TicketError):
        parse_ccache(data)


RENEW_BEFORE = dt.timedelta(minutes=10)


@pytest.mark.parametrize(
    ("lifetime", "renew_for", "started_ago", "renew", "valid", "reason"),
    [
        # plenty left: keep
        (dt.timedelta(hours=10), dt.timedelta(days=7), dt.timedelta(hours=1), False, True,
         Reason.TICKET_VALID),
        # inside renewBeforeSeconds and renewable: renew
        (dt.timedelta(hours=10), dt.timedelta(days=7), dt.timedelta(hours=9, minutes=55), True,
         True, Reason.TICKET_VALID),
        # a 30 s ticket is renewed at half its life, not at once
        (dt.timedelta(seconds=30), dt.timedelta(minutes=10), dt.timedelta(seconds=5), False,
         True, Reason.TICKET_VALID),
        (dt.timedelta(seconds=30), dt.timedelta(minutes=10), dt.timedelta(seconds=20), True,
         True, Reason.TICKET_VALID),
        # not renewable and nearly over: give up, say so
        (dt.timedelta(seconds=30), None, dt.timedelta(seconds=20), False, False,
         Reason.TICKET_NOT_RENEWABLE),
        # renewable, but not past its renew-until
        (dt.timedelta(hours=10), dt.timedelta(hours=10, minutes=5),
         dt.timedelta(hours=10, minutes=6), False, False, Reason.TICKET_EXPIRED),
        # ended
        (dt.timedelta(seconds=30), None, dt.timedelta(minutes=1), False, False,
         Reason.TICKET_EXPIRED),
    ],
)  # fmt: skip
def test_the_operator_renews_keeps_or_gives_up_on_a_ticket(
    lifetime: dt.timedelta,
    renew_for: dt.timedelta | None,
    started_ago: dt.timedelta,
    renew: bool,
    valid: bool,
    reason: str,
) -> None:
    ticket = parse_ccache(ccache(start=NOW - started_ago, lifetime=lifetime, renew_for=renew_for))
    verdict = judge(ticket, now=NOW, renew_before=RENEW_BEFORE)
    assert (verdict.renew, verdict.valid, verdict.reason) == (renew, valid, reason)
    if not valid:
        assert "log in to the hub again" in verdict.message


def test_a_ticket_whose_renewal_runs_out_is_not_renewed_past_it() -> None:
    ticket = parse_ccache(
        ccache(
            start=NOW - dt.timedelta(seconds=25),
            lifetime=dt.timedelta(seconds=30),
            renew_for=dt.timedelta(seconds=28),
        )
    )
    verdict = judge(ticket, now=NOW, renew_before=RENEW_BEFORE)
    assert verdict.renew is False and verdict.reason == Reason.TICKET_NOT_RENEWABLE
    assert renew_margin(ticket, RENEW_BEFORE) == dt.timedelta(seconds=15)


def test_ticket_secrets_are_named_from_the_user_and_never_collide() -> None:
    assert ticket_secret_name("alice") == "bbp-krb5-alice"
    assert ticket_secret_name("a_b") != ticket_secret_name("a-b")
    assert ticket_secret_name("_svc").startswith("bbp-krb5-x-")


def test_the_job_finds_its_ticket_through_krb5ccname_and_nothing_else_of_it() -> None:
    job = JobScript(
        session_uid="0b1e", session_name="default/s", bind_host="127.0.0.1",
        kerberos_ccache=job_ccache_path("0b1e"),
    )  # fmt: skip
    script = render_job_script(job)
    assert 'export KRB5CCNAME="FILE:$HOME/".bbp-notebooks/0b1e/krb5cc\n' in script
    assert script.endswith('rm -f -- "$HOME/".bbp-notebooks/0b1e/krb5cc\nexit "$bbpnb_status"\n')
    for bad in ("../krb5cc", "/tmp/krb5cc", ".bbp-notebooks/../x", "a b"):
        with pytest.raises(ValueError, match="home directory"):
            render_job_script(
                JobScript(session_uid="0b1e", session_name="s", bind_host="h", kerberos_ccache=bad)
            )


def test_a_gssapi_site_needs_a_realm() -> None:
    base: dict[str, Any] = {
        "displayName": "G", "frontend": {"host": "192.0.2.10"},
        "hostKeys": {"knownHosts": ["x"]}, "partitions": [{"name": "p"}], "monitorUser": "mon",
    }  # fmt: skip
    with pytest.raises(ValueError, match="kerberos.realm"):
        SlurmSiteSpec.model_validate({**base, "auth": {"method": "GSSAPI"}})
    spec = SlurmSiteSpec.model_validate(
        {**base, "auth": {"method": "GSSAPI", "kerberos": {"realm": "BBP.TEST"}}}
    )
    assert spec.auth.kerberos is not None and spec.auth.kerberos.renew_before_seconds == 600


class _Secrets:
    """The operator's Kube, reduced to the Secret reads runtime.ticket makes."""

    def __init__(self, data: dict[str, dict[str, bytes]]) -> None:
        self.data, self.reads = data, []  # type: ignore[var-annotated]

    async def read_secret(self, namespace: str, name: str) -> dict[str, bytes]:
        self.reads.append((namespace, name))
        if name not in self.data:
            from kubernetes_asyncio.client.exceptions import ApiException

            raise ApiException(status=404, reason="Not Found")
        return self.data[name]

    async def read_secret_with_owners(
        self, namespace: str, name: str
    ) -> tuple[dict[str, bytes], frozenset[str], str]:
        return await self.read_secret(namespace, name), frozenset(), "1"


class _NoSsh:
    async def run(self, *_: Any, **__: Any) -> Any:
        raise AssertionError("no ssh may be tried")

    put_file = run

    async def close(self) -> None:
        pass


def _runtime(secrets: dict[str, dict[str, bytes]]) -> Any:
    from bbp_notebooks.api.settings import OperatorSettings
    from bbp_notebooks.operator.runtime import Runtime

    return Runtime(settings=OperatorSettings(), kube=_Secrets(secrets), pool=_NoSsh())  # type: ignore[arg-type]


def _gssapi_site(ca_secret: str | None = None) -> SlurmSiteSpec:
    auth: dict[str, Any] = {"method": "GSSAPI", "kerberos": {"realm": "BBP.TEST"}}
    if ca_secret:
        auth["caSecretName"] = ca_secret
    return SlurmSiteSpec.model_validate(
        {
            "displayName": "G", "frontend": {"host": "192.0.2.10"},
            "hostKeys": {"knownHosts": ["[192.0.2.10]:22 ssh-ed25519 AAAA"]},
            "partitions": [{"name": "p"}], "monitorUser": "mon", "auth": auth,
        }
    )  # fmt: skip


def test_bobs_ticket_in_alices_secret_is_refused_before_any_ssh() -> None:
    from bbp_notebooks.operator.runtime import TicketUnusable

    rt = _runtime({"bbp-krb5-alice": {"ccache": ccache("bob", start=dt.datetime.now(dt.UTC))}})

    async def attempt() -> None:
        await rt.identity("g", _gssapi_site(), "alice", namespace="default")

    with pytest.raises(TicketUnusable, match="belongs to bob@BBP.TEST") as refused:
        asyncio.run(attempt())
    assert refused.value.reason == Reason.TICKET_PRINCIPAL_MISMATCH
    assert rt.kube.reads == [("default", "bbp-krb5-alice")]  # that user's Secret, by name only


def test_alices_own_ticket_becomes_a_gssapi_identity_in_a_private_file() -> None:
    import os
    import stat

    data = ccache("alice", start=dt.datetime.now(dt.UTC))
    rt = _runtime({"bbp-krb5-alice": {"ccache": data}})
    identity = asyncio.run(rt.identity("g", _gssapi_site(), "alice", namespace="default"))
    try:
        assert identity.ccache is not None and identity.ccache.startswith("FILE:")
        path = identity.ccache.removeprefix("FILE:")
        with open(path, "rb") as placed:
            assert placed.read() == data
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    finally:
        asyncio.run(rt.close())


def test_without_a_ticket_a_session_waits_but_a_cancel_uses_the_site_certificate() -> None:
    import asyncssh

    from bbp_notebooks.operator.runtime import TicketUnusable
    from bbp_notebooks.ssh import IdentityKind

    ca = asyncssh.generate_private_key("ssh-ed25519").export_private_key()
    rt = _runtime({"g-ca": {"ca": ca}})
    site = _gssapi_site(ca_secret="g-ca")  # noqa: S106  (a Secret's name)
    with pytest.raises(TicketUnusable, match="log in to the hub again"):
        asyncio.run(rt.identity("g", site, "alice", namespace="default"))
    identity = asyncio.run(rt.identity("g", site, "alice", namespace="default", for_cancel=True))
    assert identity.kind is IdentityKind.CERTIFICATE and identity.username == "alice"
    # Without a CA at the site there is nothing to fall back to: the cancel waits (and the
    # delete gives up after cancelGiveUpSeconds, leaving the job to the sweep).
    with pytest.raises(TicketUnusable):
        asyncio.run(rt.identity("g", _gssapi_site(), "alice", namespace="default", for_cancel=True))


def test_renewing_without_kinit_is_a_ticket_error_not_a_crash(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from bbp_notebooks.ssh import kerberos as transport

    async def no_kinit(*_: Any, **__: Any) -> Any:
        raise FileNotFoundError("kinit")

    monkeypatch.setattr(transport.asyncio, "create_subprocess_exec", no_kinit)
    renew_ticket = transport.renew_ticket
    ticket = parse_ccache(ccache(start=dt.datetime.now(dt.UTC)))
    with pytest.raises(TicketError, match="kinit"):
        asyncio.run(renew_ticket(ticket))
