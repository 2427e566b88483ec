"""The hub's check that the KDC is the realm's own (KerberosAuthenticator.keytab), against real MIT
KDCs: the realm's KDC with the hub's keytab lets alice in; a keytab whose key another KDC made,
or a rogue KDC that answers for any password it likes, refuses the login."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from bbp_notebooks.api.kerberos import parse_ccache
from bbp_notebooks.devtools.kdc import Kdc, KdcError
from bbp_notebooks.hub.kerberos import KdcCheck, KerberosAuthenticator, LoginRefused, acquire_ticket
from fixtures.kdc import KDC_ADDRESS, PASSWORDS

HUB_SERVICE = "HTTP/hub.bbp.test"
ROGUE_PASSWORD = "any-password-the-rogue-likes"  # noqa: S105


@pytest.fixture(scope="module")
def hub_keytab(kdc: Kdc) -> Iterator[Path]:
    """The hub's keytab from the realm's KDC."""
    folder = Path(tempfile.mkdtemp(prefix="bbp-hub-keytab-"))
    keytab = folder / "hub.keytab"
    kdc.add_service(HUB_SERVICE, keytab)
    yield keytab
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture(scope="module")
def rogue() -> Iterator[tuple[Kdc, Path]]:
    """Another KDC claiming the same realm: its own alice (a password of its choosing) and its
    own key for the hub's principal, in the keytab it returns."""
    root = Path(tempfile.mkdtemp(prefix="bbp-rogue-kdc-"))
    server = Kdc(root, address=KDC_ADDRESS)
    try:
        server.start()
        server.add_user("alice", ROGUE_PASSWORD)
        keytab = root / "rogue-hub.keytab"
        server.add_service(HUB_SERVICE, keytab)
    except KdcError as error:
        server.stop()
        pytest.fail(f"the second KDC did not start: {error}")
    try:
        yield server, keytab
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def _alice(check: KdcCheck | None, password: str = PASSWORDS["alice"]) -> str:
    return parse_ccache(acquire_ticket("alice@BBP.TEST", password, check=check)).principal


def test_the_realms_kdc_proves_itself_with_the_hubs_keytab(
    kdc: Kdc, hub_keytab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    assert _alice(KdcCheck(str(hub_keytab), HUB_SERVICE)) == "alice@BBP.TEST"
    # The realm may be named too.
    assert _alice(KdcCheck(str(hub_keytab), f"{HUB_SERVICE}@BBP.TEST")) == "alice@BBP.TEST"
    # A wrong password is still refused before any check.
    with pytest.raises(LoginRefused, match="no ticket"):
        _alice(KdcCheck(str(hub_keytab), HUB_SERVICE), "not-" + PASSWORDS["alice"])


def test_a_keytab_another_kdc_made_refuses_the_login(
    kdc: Kdc, rogue: tuple[Kdc, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("KRB5_CONFIG", str(kdc.krb5_conf))
    _, other_keytab = rogue
    with pytest.raises(LoginRefused, match="not the realm's own"):
        _alice(KdcCheck(str(other_keytab), HUB_SERVICE))


def test_a_rogue_kdc_answering_for_any_password_is_refused_when_the_hub_checks(
    rogue: tuple[Kdc, Path], hub_keytab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = rogue
    # The hub's krb5.conf now leads to the rogue (a spoofed address, a poisoned DNS answer).
    monkeypatch.setenv("KRB5_CONFIG", str(server.krb5_conf))
    # Without the check, the rogue's password is alice's: the attack the check is for.
    assert _alice(None, ROGUE_PASSWORD) == "alice@BBP.TEST"
    with pytest.raises(LoginRefused, match="not the realm's own"):
        _alice(KdcCheck(str(hub_keytab), HUB_SERVICE), ROGUE_PASSWORD)


async def test_the_authenticator_refuses_the_rogue_and_a_keytab_without_its_principal_is_an_error(
    rogue: tuple[Kdc, Path], hub_keytab: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    server, _ = rogue
    monkeypatch.setenv("KRB5_CONFIG", str(server.krb5_conf))
    hub = KerberosAuthenticator(
        realm="BBP.TEST", keytab=str(hub_keytab), service_principal=HUB_SERVICE
    )
    # Refused before any Secret is written (no API server is configured here at all).
    assert await hub.authenticate(None, {"username": "alice", "password": ROGUE_PASSWORD}) is None
    with pytest.raises(ValueError, match="service_principal"):
        KerberosAuthenticator(realm="BBP.TEST", keytab=str(hub_keytab)).kdc_check()
    with pytest.raises(RuntimeError, match="has no key for HTTP/other"):
        acquire_ticket(
            "alice@BBP.TEST", ROGUE_PASSWORD, check=KdcCheck(str(hub_keytab), "HTTP/other")
        )
