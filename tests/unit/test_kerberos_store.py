"""The hub's ticket store without a KDC: credentials from a fabricated FILE ccache, stored by
_stored while another Python thread allocates, always land in the hub's own file.

python-gssapi turns a str cred-store key or value into a temporary bytes object and hands its
pointer to gss_store_cred_into after freeing it, and the call runs without the GIL: any other
thread allocating meanwhile garbles the key (MIT krb5 then stores into the process's default
ccache and reports success) or the value (a ccache of another name). Seen in the Kerberos lane
as "the ticket of alice@BBP.TEST could not be stored", with the test's ArgvWatch thread running.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import gssapi
import gssapi.raw
import pytest

from bbp_notebooks.api.kerberos import parse_ccache
from bbp_notebooks.hub.kerberos import TicketNotStored, _cred_store, _stored
from fixtures.ccache import ccache

KRB5 = gssapi.OID.from_int_seq("1.2.840.113554.1.2.2")


@pytest.fixture
def krb5_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A krb5.conf of this test's own, a default ccache in tmp_path and tmp_path as the working
    directory: a misdirected store shows up there (and never in /tmp/krb5cc_<uid>)."""
    conf = tmp_path / "krb5.conf"
    conf.write_text("[libdefaults]\n  default_realm = BBP.TEST\n")
    monkeypatch.setenv("KRB5_CONFIG", str(conf))
    monkeypatch.setenv("KRB5CCNAME", f"FILE:{tmp_path / 'default-ccache'}")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _creds(folder: Path, lifetime_s: int) -> gssapi.raw.Creds:
    source = folder / "source-ccache"
    now = dt.datetime.now(dt.UTC)
    source.write_bytes(ccache(start=now, lifetime=dt.timedelta(seconds=lifetime_s), renew_for=None))
    store = _cred_store(ccache=f"FILE:{source}")
    return gssapi.raw.acquire_cred_from(store, mechs=[KRB5], usage="initiate").creds


@pytest.fixture
def allocating_thread() -> Iterator[None]:
    """Another Python thread allocating small objects all the time (as ArgvWatch does)."""
    stop = threading.Event()

    def churn() -> None:
        while not stop.is_set():
            junk = [f"{n}-{'x' * (n % 90)}".encode() for n in range(200)]
            junk.clear()

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    yield
    stop.set()
    thread.join(timeout=10)


def test_the_cred_store_is_bytes_only() -> None:
    store = _cred_store(ccache="FILE:/x/ccache", keytab="/etc/k.keytab")
    assert store == {b"ccache": b"FILE:/x/ccache", b"keytab": b"/etc/k.keytab"}


def test_a_stored_ticket_is_always_the_hubs_own_file_while_other_threads_allocate(
    krb5_env: Path, allocating_thread: None
) -> None:
    creds = _creds(krb5_env, lifetime_s=30)
    before = {p.name for p in krb5_env.iterdir()}
    for _ in range(100):
        ticket = parse_ccache(_stored("alice@BBP.TEST", creds))
        assert ticket.principal == "alice@BBP.TEST"
    # Nothing went to the default ccache or to a file of a garbled name in the working directory.
    assert {p.name for p in krb5_env.iterdir()} == before


def test_success_without_a_file_is_a_named_error(
    krb5_env: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    creds = _creds(krb5_env, lifetime_s=30)
    monkeypatch.setattr(gssapi.raw, "store_cred_into", lambda *a, **k: None)
    with pytest.raises(TicketNotStored, match="reported success but wrote no ticket cache"):
        _stored("alice@BBP.TEST", creds)


def test_an_expired_ticket_is_a_named_error(krb5_env: Path) -> None:
    creds = _creds(krb5_env, lifetime_s=1)
    time.sleep(2.1)  # krb5_gss_store_cred_into: lifetime 0 -> GSS_S_CREDENTIALS_EXPIRED
    with pytest.raises(TicketNotStored, match="could not be stored"):
        _stored("alice@BBP.TEST", creds)
