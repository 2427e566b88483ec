"""A scientist's whole path in a real browser: log in to JupyterHub, choose a profile and a site,
get a JupyterLab that runs as a Slurm job on an emulated site, run a cell, stop the server.

Everything is real except Slurm (the emulator): the control plane, the operator, JupyterHub with
the NotebookSessionSpawner, configurable-http-proxy from npm, jupyterhub-singleuser in the job, and
Debian's chromium driven by Playwright. The system is started by devtools.dev, as `make dev` does.
Screenshots go to artifacts/.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, Page, Playwright, sync_playwright
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from bbp_notebooks.devtools.controlplane import repo_root
from bbp_notebooks.devtools.dev import DevSystem, ensure_dev_deps, start_dev_system
from bbp_notebooks.devtools.stack import wait_for

pytestmark = [pytest.mark.kube, pytest.mark.timeout(900)]

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
UI_TIMEOUT_MS = 60_000
NOTEBOOK_TIMEOUT_MS = 180_000  # Start pressed -> JupyterLab usable; the emulator takes ~20 s
CELL = (
    "import os, socket; "
    'print("JOB", os.environ["SLURM_JOB_ID"], "HOST", socket.gethostname(), '
    '"NODE", os.environ["SLURMD_NODENAME"])'
)
WARNING_LEAD_MINUTES = 90
OUTPUT = re.compile(r"JOB (\d+) HOST (\S+) NODE (\S+)")


@pytest.fixture(scope="module")
def artifacts() -> Path:
    folder = repo_root() / "artifacts"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DevSystem]:
    # Installs what is missing (a no-op after `make test` ran scripts/install-dev-deps.sh), and
    # fails, never skips, when chromium, npm's proxy or the notebook environment cannot be had.
    deps = ensure_dev_deps()
    # A 60 min job is "ending soon" from its start (warning lead 90 min) until it is extended.
    started = start_dev_system(
        tmp_path_factory.mktemp("dev"),
        deps=deps,
        poll_interval=1,
        operator_settings={"BBP_WARNING_LEAD_MINUTES": str(WARNING_LEAD_MINUTES)},
    )
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


def browser(playwright: Playwright, system: DevSystem, profile: Path) -> BrowserContext:
    """A fresh headless Debian chromium with its own profile directory (no shared cookies)."""
    context = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=str(system.deps.chromium),
        headless=True,
        args=CHROMIUM_ARGS,
        viewport={"width": 1280, "height": 800},
    )
    context.set_default_timeout(UI_TIMEOUT_MS)
    return context


def log_in(context: BrowserContext, system: DevSystem, user: str) -> Page:
    page = context.pages[0] if context.pages else context.new_page()
    page.goto(f"{system.url}/hub/login")
    page.fill("#username_input", user)
    page.fill("#password_input", system.hub.password)
    page.click("#login_submit")
    page.wait_for_url(re.compile(r".*/hub/(spawn|home)"))
    return page


def sessions(system: DevSystem) -> list[dict[str, Any]]:
    result = system.kubectl("get", "notebooksessions", "-A", "-o", "json")
    assert result.returncode == 0, result.stderr
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def run_cell_in_a_new_notebook(page: Page, code: str) -> str:
    """Open a Python notebook from the JupyterLab launcher, run `code`, return its output."""
    page.locator(".jp-LauncherCard[data-category='Notebook']").first.click()
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").first
    editor = cell.locator(".cm-content")
    editor.wait_for(state="visible")
    editor.click()
    # insert_text: no key events, so JupyterLab's bracket auto-closing cannot double quotes.
    page.keyboard.insert_text(code)
    prompt = cell.locator(".jp-InputArea-prompt")
    output = cell.locator(".jp-OutputArea-output").first
    # JupyterLab silently drops a run asked for before its kernel connection is up (the prompt
    # stays "[ ]:"); ask again until the cell is queued ("[*]:") or has run ("[1]:").
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_MS / 1000
    while True:
        page.keyboard.press("Control+Enter")
        try:
            output.wait_for(state="visible", timeout=5_000)
            return output.inner_text()
        except PlaywrightTimeoutError:
            if prompt.inner_text().strip() != "[ ]:" or time.monotonic() > deadline:
                break
    output.wait_for(state="visible", timeout=max(1_000, (deadline - time.monotonic()) * 1000))
    return output.inner_text()


def test_a_scientist_runs_a_cell_in_a_slurm_notebook_that_only_she_can_open_until_she_stops_it(
    system: DevSystem,
    playwright: Playwright,
    artifacts: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice = browser(playwright, system, tmp_path / "chromium-alice")
    try:
        page = log_in(alice, system, "alice")

        # The spawn form offers the profiles alice may use and both sites with availability.
        page.goto(f"{system.url}/hub/spawn")
        profiles = page.locator("#bbpnb-profile option").all_inner_texts()
        sites = page.locator("#bbpnb-site option").all_inner_texts()
        assert {"BluePy", "Synthesis Pipeline", "Thalamus"} <= set(profiles), profiles
        assert any(s.startswith("Geneva — ") and "available" in s for s in sites), sites
        assert any(s.startswith("Lugano — ") for s in sites), sites
        page.select_option("#bbpnb-profile", "bluepy")
        page.select_option("#bbpnb-site", "geneva")
        page.screenshot(path=str(artifacts / "spawn-form.png"), full_page=True)

        pressed = time.monotonic()
        page.locator("form button[type=submit], form input[type=submit]").first.click()
        page.wait_for_url("**/user/alice/lab**", timeout=NOTEBOOK_TIMEOUT_MS)
        page.locator("#jp-main-dock-panel").wait_for(timeout=NOTEBOOK_TIMEOUT_MS)
        usable = time.monotonic() - pressed
        # JupyterLab restores alice's last layout (an earlier run may have left a notebook open);
        # ?reset gives the default one, with the launcher.
        page.goto(page.url.split("?")[0] + "?reset")
        page.locator(".jp-LauncherCard").first.wait_for(timeout=NOTEBOOK_TIMEOUT_MS)

        (session,) = sessions(system)
        status = session["status"]
        assert session["spec"]["user"] == "alice" and status["phase"] == "Ready", status
        job_id = int(status["jobId"])

        output = run_cell_in_a_new_notebook(page, CELL)
        found = OUTPUT.search(output)
        assert found, output
        assert int(found[1]) == job_id, (output, status)
        assert found[2] and found[3].startswith("gva-cn"), output
        page.screenshot(path=str(artifacts / "running-notebook.png"))
        with capsys.disabled():
            print(
                f"\ne2e: Start pressed -> usable JupyterLab in {usable:.1f} s "
                f"(job {job_id} at geneva, node {found[3]}, host {found[2]}); "
                f"screenshots in {artifacts}"
            )
        (artifacts / "e2e-start-to-notebook.txt").write_text(f"{usable:.1f}\n")

        notebook_url = page.url.split("?")[0]
        bob_cannot_open(playwright, system, tmp_path / "chromium-bob", notebook_url, artifacts)

        # Stop from the hub's control panel: the session goes, and Slurm says the job was cancelled.
        page.goto(f"{system.url}/hub/home")
        delete_notebook(page, notebook_url)  # now that JupyterLab is closed and cannot save it
        page.locator("#stop").click()
        page.locator("#start").wait_for(state="visible", timeout=NOTEBOOK_TIMEOUT_MS)
        wait_for(lambda: not sessions(system), 60, "the session to be gone", 0.5)

        def job_state() -> str | None:
            jobs = [j for j in system.mock.jobs("geneva") if j["job_id"] == job_id]
            state = jobs[0]["state"] if jobs else None
            return state if state not in ("RUNNING", "PENDING", "COMPLETING") else None

        assert wait_for(job_state, 60, f"job {job_id} to end", 0.5) == "CANCELLED"
    except BaseException:
        for number, open_page in enumerate(alice.pages):
            open_page.screenshot(path=str(artifacts / f"failure-alice-{number}.png"))
        raise
    finally:
        alice.close()


def delete_notebook(page: Page, url: str) -> None:
    """Remove the notebook the test made from alice's home (through her server's API)."""
    server, _, path = url.partition("/lab/tree/")
    assert path.endswith(".ipynb"), url
    cookies = page.context.cookies(f"{server}/api/contents/")
    xsrf = next((c["value"] for c in cookies if c["name"] == "_xsrf"), None)
    assert xsrf, [(c["name"], c.get("path")) for c in page.context.cookies()]
    response = page.request.delete(
        f"{server}/api/contents/{path}", headers={"X-XSRFToken": urllib.parse.unquote(xsrf)}
    )
    assert response.status == 204, (response.status, response.text()[:300])


def bob_cannot_open(
    playwright: Playwright, system: DevSystem, profile: Path, url: str, artifacts: Path
) -> None:
    """Bob, logged in, gets neither alice's JupyterLab nor her notebook server's API."""
    bob = browser(playwright, system, profile)
    try:
        page = log_in(bob, system, "bob")
        response = page.goto(url)
        page.wait_for_load_state()
        # Alice's server sends him to the hub for a token, and the hub refuses: 403 on a hub page.
        assert response is not None and response.status == 403, (page.url, response)
        assert "/hub/" in page.url, page.url
        assert page.locator(".jp-LauncherCard, .jp-NotebookPanel").count() == 0
        # Nor can he reach her server's API.
        api = page.request.get(f"{url.rsplit('/lab', 1)[0]}/api/kernels")
        assert api.status == 403, (api.status, api.url)
    except BaseException:
        for number, open_page in enumerate(bob.pages):
            open_page.screenshot(path=str(artifacts / f"failure-bob-{number}.png"))
        raise
    finally:
        bob.close()


# Time left, Extend, sharing (issue 13) ----------


def start_server(page: Page, system: DevSystem) -> None:
    page.goto(f"{system.url}/hub/spawn")
    page.select_option("#bbpnb-profile", "bluepy")
    page.select_option("#bbpnb-site", "geneva")
    page.locator("form button[type=submit], form input[type=submit]").first.click()
    page.wait_for_url("**/user/alice/lab**", timeout=NOTEBOOK_TIMEOUT_MS)
    page.goto(page.url.split("?")[0] + "?reset")
    page.locator(".jp-LauncherCard").first.wait_for(timeout=NOTEBOOK_TIMEOUT_MS)


def run_cell_in_the_open_notebook(page: Page, code: str, expect: str) -> str:
    """Replace the first cell of the notebook shown with `code`, run it, wait for `expect`."""
    cell = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Cell").first
    editor = cell.locator(".cm-content")
    editor.wait_for(state="visible", timeout=NOTEBOOK_TIMEOUT_MS)
    output = cell.locator(".jp-OutputArea-output", has_text=expect)
    deadline = time.monotonic() + NOTEBOOK_TIMEOUT_MS / 1000
    editor.click()
    page.keyboard.press("Control+A")
    page.keyboard.insert_text(code)
    while True:  # as above: a run asked for before the kernel is connected is dropped
        page.keyboard.press("Control+Enter")
        try:
            output.wait_for(state="visible", timeout=5_000)
            return output.inner_text()
        except PlaywrightTimeoutError:
            if time.monotonic() > deadline:
                raise


def row(page: Page, field: str) -> Any:
    return page.locator(f'#bbpnb-table tr[data-server=""] td[data-field="{field}"]')


def test_the_home_page_shows_time_left_extends_and_alice_shares_her_server_with_bob_until_she_revokes(  # noqa: E501
    system: DevSystem,
    playwright: Playwright,
    artifacts: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice = browser(playwright, system, tmp_path / "chromium-alice")
    bob = browser(playwright, system, tmp_path / "chromium-bob")
    try:
        page = log_in(alice, system, "alice")
        start_server(page, system)
        run_cell_in_a_new_notebook(page, 'print("alice", 6 * 7)')
        page.keyboard.press("Control+S")  # bob opens the saved file
        notebook_url = page.url.split("?")[0]
        assert notebook_url.endswith(".ipynb"), notebook_url
        (session,) = sessions(system)
        limit = session["status"]["timeLimitMinutes"]
        assert limit == 60, session["status"]  # bluepy's default

        # Home: site, node and time left of her running server.
        home = alice.new_page()
        home.goto(f"{system.url}/hub/home")
        row(home, "site").wait_for()
        assert row(home, "site").inner_text() == "geneva"
        assert row(home, "node").inner_text().startswith("gva-cn")
        time_left = row(home, "time-left").inner_text()
        assert re.fullmatch(r"(59|60) min", time_left), time_left
        assert row(home, "time-limit").inner_text() == "60 min"
        # The operator's warning (TimeLimit, EndingSoon: less than the lead time left) is shown.
        notice = home.locator(".bbpnb-notice[data-reason=EndingSoon]")
        notice.wait_for(timeout=30_000)  # the page refreshes every 15 s
        warned = notice.inner_text()
        assert warned.startswith("ends at "), warned  # the end, as the operator states it
        home.screenshot(path=str(artifacts / "home-time-left.png"), full_page=True)

        # Extend: the hub raises the spec's limit by an hour and the page shows it as requested;
        # the operator has Slurm raise the job's limit (as make dev's adminUser) and the page then
        # shows the new limit and end.
        home.locator(".bbpnb-extend").click()
        home.locator("#bbpnb-message", has_text="Asked for a time limit of 120 min").wait_for()
        (session,) = sessions(system)
        assert session["spec"]["resources"]["timeLimitMinutes"] == 120, session["spec"]

        def reported() -> str | None:
            status = sessions(system)[0]["status"]
            if status.get("timeLimitMinutes") == 120:
                return "extended"
            refused = [c for c in status.get("conditions", []) if c["type"] == "TimeLimit"
                       and c["reason"] == "ExtensionRefused"]  # fmt: skip
            return str(refused[0]["message"]) if refused else None

        outcome = wait_for(reported, 60, "the operator to carry out or refuse the extension", 1)
        assert outcome == "extended", outcome
        (session,) = sessions(system)
        end = dt.datetime.fromisoformat(session["status"]["expectedEndTime"].replace("Z", "+00:00"))
        start = dt.datetime.fromisoformat(session["status"]["startTime"].replace("Z", "+00:00"))
        assert end - start == dt.timedelta(minutes=120), session["status"]
        home.reload()
        row(home, "time-limit").filter(has_text=re.compile(r"^120 min$")).wait_for()
        time_left = row(home, "time-left").inner_text()
        assert re.fullmatch(r"1 h 5\d min|2 h 0 min", time_left), time_left
        # More time left than the lead: the warning is gone.
        assert home.locator(".bbpnb-notice").count() == 0
        home.screenshot(path=str(artifacts / "home-extended.png"), full_page=True)

        # Beyond the profile's maximum: refused with the reason.
        too_much = home.request.post(
            f"{system.url}/hub/api/bbp/extend/",
            data=json.dumps({"timeLimitMinutes": 481}),
            headers={"X-XSRFToken": xsrf(home), "Content-Type": "application/json"},
        )
        assert too_much.status == 400, too_much.text()
        assert "more than this profile allows (480 min)" in too_much.json()["message"]

        # Sharing: alice shares with bob; the page says so; bob runs a cell in her notebook.
        home.fill(".bbpnb-share-user", "bob")
        home.locator(".bbpnb-share").click()
        row(home, "shared-with").filter(has_text="bob").wait_for()
        bob_page = log_in(bob, system, "bob")
        bob_page.goto(notebook_url)
        # The hub asks bob whether alice's server may know who he is: JupyterHub's own page.
        bob_page.locator("form button[type=submit]", has_text="Authorize").click()
        output = run_cell_in_the_open_notebook(bob_page, 'print("bob", 7 * 6)', "bob 42")
        assert "bob 42" in output, output
        # A bob in his own notebook server? No: he ran it in alice's job.
        (session,) = sessions(system)
        assert session["spec"]["user"] == "alice"
        bob_page.screenshot(path=str(artifacts / "bob-in-alices-notebook.png"))
        # Bob may not extend a server shared with him: it is not his.
        bob_home = bob.new_page()
        bob_home.goto(f"{system.url}/hub/home")
        bob_extend = bob_home.request.post(
            f"{system.url}/hub/api/bbp/extend/",
            data="{}",
            headers={"X-XSRFToken": xsrf(bob_home), "Content-Type": "application/json"},
        )
        assert bob_extend.status == 404, bob_extend.text()

        # Revoke: the share is gone at once, so bob's next visit is refused by the hub, and the
        # tab he has open loses access when alice's server asks the hub again (its cache).
        home.locator('.bbpnb-revoke[data-user="bob"]').click()
        home.locator(".bbpnb-revoke").wait_for(state="detached")
        assert row(home, "shared-with").inner_text() == ""
        revoked = time.monotonic()
        api = f"{notebook_url.split('/lab', 1)[0]}/api/contents"

        def bob_refused() -> bool:
            return bob_page.request.get(api).status == 403

        wait_for(bob_refused, 90, "alice's server to refuse bob's open session", 2)
        refused_after = time.monotonic() - revoked
        bob.clear_cookies()
        bob_page = log_in(bob, system, "bob")
        response = bob_page.goto(notebook_url)
        assert response is not None and response.status == 403, (bob_page.url, response)
        bob_page.screenshot(path=str(artifacts / "bob-refused.png"))
        with capsys.disabled():
            print(
                f"\ne2e: notice {warned!r}; extension {outcome}; "
                f"bob refused {refused_after:.1f} s after the revoke"
            )

        page.close()  # alice's JupyterLab: closed, it cannot save the notebook again
        delete_notebook(home, notebook_url)
        home.locator("#stop").click()
        home.locator("#start").wait_for(state="visible", timeout=NOTEBOOK_TIMEOUT_MS)
        wait_for(lambda: not sessions(system), 60, "the session to be gone", 0.5)
    except BaseException:
        for who, context in (("alice", alice), ("bob", bob)):
            for number, open_page in enumerate(context.pages):
                open_page.screenshot(path=str(artifacts / f"failure-share-{who}-{number}.png"))
        raise
    finally:
        alice.close()
        bob.close()


def xsrf(page: Page) -> str:
    token = page.evaluate("window.jhdata && window.jhdata.xsrf_token")
    assert isinstance(token, str) and token, token
    return token


# In the notebook: its own time left and the operator's warning (issue 13) ----------

NOTICE_SNIPPET_MARK = (
    "# bbp-notebooks: time left and the operator's warning, from inside the notebook"
)
# After the README's block: what else the server's token may do (nothing), as one printed line.
PROBE_CELL = """
import urllib.error
def probe(method, path):
    request = urllib.request.Request(os.environ["JUPYTERHUB_API_URL"] + path, method=method,
        data=b"{}" if method == "POST" else None,
        headers={"Authorization": "token " + os.environ["JUPYTERHUB_API_TOKEN"]})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
print("BBP-PROBE", json.dumps({"card": card, "own": probe("GET", "/bbp/sessions/alice"),
    "bob": probe("GET", "/bbp/sessions/bob"), "stranger": probe("GET", "/bbp/sessions/nobody"),
    "extend": probe("POST", "/bbp/extend/"), "bob_user": probe("GET", "/users/bob")}))
"""


def readme_notice_snippet() -> str:
    """The README's notebook-side block, verbatim: what a user copies is what is tested."""
    readme = (repo_root() / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, re.DOTALL)
    (block,) = [b for b in blocks if NOTICE_SNIPPET_MARK in b]
    indent = min(len(line) - len(line.lstrip()) for line in block.splitlines() if line.strip())
    return "\n".join(line[indent:] for line in block.splitlines()) + "\n"


def test_code_in_the_notebook_sees_its_time_left_and_warning_and_the_hub_page_shows_a_refusal(
    system: DevSystem,
    playwright: Playwright,
    artifacts: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    alice = browser(playwright, system, tmp_path / "chromium-alice")
    try:
        page = log_in(alice, system, "alice")
        start_server(page, system)

        # The operator's warning exists (a 60 min job, a 90 min lead) before the notebook asks.
        def ending_soon() -> dict[str, Any] | None:
            status: dict[str, Any] = sessions(system)[0]["status"]
            reasons = [
                c["reason"] for c in status.get("conditions", []) if c["type"] == "TimeLimit"
            ]
            return status if reasons == ["EndingSoon"] else None

        status = wait_for(ending_soon, 60, "the EndingSoon condition", 0.5)
        (ending,) = [c for c in status["conditions"] if c["type"] == "TimeLimit"]

        run_cell_in_a_new_notebook(page, 'print("kernel", "up")')
        notebook_url = page.url.split("?")[0]
        code = readme_notice_snippet() + PROBE_CELL
        output = run_cell_in_the_open_notebook(page, code, "BBP-PROBE")
        page.screenshot(path=str(artifacts / "notice-in-the-notebook.png"))
        # The README's own print: the warning, as the operator words it.
        assert ending["message"] in output, (ending, output)
        found = re.search(r"BBP-PROBE (\{.*\})", output)
        assert found, output
        probed = json.loads(found[1])
        card = probed["card"]
        assert (card["notice_reason"], card["notice"]) == ("EndingSoon", ending["message"]), card
        assert card["server"] == "" and card["site"] == "geneva", card
        assert card["expected_end_time"] == status["expectedEndTime"], (card, status)
        assert 0 < card["seconds_left"] <= 3600, card
        # The server's token reads its own server and nothing else; it cannot extend.
        assert probed["own"] == 200, probed
        assert probed["bob"] == 403 and probed["stranger"] == 403, probed
        assert probed["extend"] == 403, probed
        assert probed["bob_user"] in (403, 404), probed

        # The hub page refuses an extension beyond the profile's maximum with the policy's words.
        home = alice.new_page()
        home.goto(f"{system.url}/hub/home")
        row(home, "site").wait_for()
        to_max = home.request.post(
            f"{system.url}/hub/api/bbp/extend/",
            data=json.dumps({"timeLimitMinutes": 480}),
            headers={"X-XSRFToken": xsrf(home), "Content-Type": "application/json"},
        )
        assert to_max.status == 200, to_max.text()
        home.reload()
        row(home, "time-limit").filter(has_text="480 min").wait_for()
        home.locator(".bbpnb-extend").click()
        refusal = home.locator("#bbpnb-message", has_text="Not extended:")
        refusal.wait_for()
        assert refusal.inner_text() == (
            "Not extended: the time limit is already 480 min, the most this profile allows "
            "(480 min)"
        ), refusal.inner_text()
        home.screenshot(path=str(artifacts / "home-extension-refused.png"), full_page=True)
        with capsys.disabled():
            print(f"\ne2e: in the notebook: {card['notice']!r}; token probes {probed}")

        page.close()
        delete_notebook(home, notebook_url)
        home.locator("#stop").click()
        home.locator("#start").wait_for(state="visible", timeout=NOTEBOOK_TIMEOUT_MS)
        wait_for(lambda: not sessions(system), 60, "the session to be gone", 0.5)
    except BaseException:
        for number, open_page in enumerate(alice.pages):
            open_page.screenshot(path=str(artifacts / f"failure-notice-{number}.png"))
        stop_alices_server_after_a_failure(alice, system)
        raise
    finally:
        alice.close()


def stop_alices_server_after_a_failure(context: BrowserContext, system: DevSystem) -> None:
    """So that the next test starts from no server (its login lands on the spawn page)."""
    try:
        page = context.new_page()
        page.goto(f"{system.url}/hub/home")
        page.request.delete(
            f"{system.url}/hub/api/users/alice/server", headers={"X-XSRFToken": xsrf(page)}
        )
        wait_for(lambda: not sessions(system), 120, "alice's server to stop", 1)
    except Exception as error:  # noqa: BLE001 - the test's own failure is the one to report
        print(f"could not stop alice's server after the failure: {error}")


# A notebook that cannot start shows why (issue 13) ----------

FAILING_PROFILE = "e2e-broken"
FAILING_SETUP = (
    'for i in $(seq 1 30); do echo "setup line $i"; done\n'
    "echo 'ModuleNotFoundError: No module named bbp_kernel' >&2\n"
    "exit 1\n"
)


def test_a_notebook_whose_kernel_setup_fails_shows_its_last_log_lines_in_the_hub_and_kubectl(
    system: DevSystem, playwright: Playwright, artifacts: Path, tmp_path: Path
) -> None:
    profile = {
        "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
        "kind": "NotebookProfile",
        "metadata": {"name": FAILING_PROFILE},
        "spec": {"displayName": "Broken setup", "cores": 1, "memoryMiB": 512,
                 "kernelSetup": FAILING_SETUP},
    }  # fmt: skip
    applied = system.kubectl("apply", "-f", "-", stdin=json.dumps(profile))
    assert applied.returncode == 0, applied.stderr
    alice = browser(playwright, system, tmp_path / "chromium-alice")
    try:
        page = log_in(alice, system, "alice")
        page.goto(f"{system.url}/hub/spawn")
        page.locator(f"#bbpnb-profile option[value={FAILING_PROFILE}]").wait_for(state="attached")
        page.select_option("#bbpnb-profile", FAILING_PROFILE)
        page.select_option("#bbpnb-site", "geneva")
        page.locator("form button[type=submit], form input[type=submit]").first.click()
        # JupyterHub's own spawn-pending page: its progress message is the spawner's error.
        failed = page.locator("#progress-message", has_text="Spawn failed")
        failed.wait_for(timeout=NOTEBOOK_TIMEOUT_MS)
        error = failed.inner_text()
        page.screenshot(path=str(artifacts / "spawn-failed-with-log.png"), full_page=True)
        assert "ModuleNotFoundError: No module named bbp_kernel" in error, error
        assert "setup line 30" in error, error

        (session,) = sessions(system)
        assert session["status"]["phase"] == "Failed", session["status"]
        plugin = subprocess.run(
            ["kubectl-notebooks", "logs", session["metadata"]["name"], "-n",
             session["metadata"]["namespace"]],
            env=system.control_plane.env, capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert plugin.returncode == 0, plugin.stderr
        assert "setup line 1\n" in plugin.stdout, plugin.stdout  # all 32 lines fit in the tail
        assert "ModuleNotFoundError: No module named bbp_kernel" in plugin.stdout, plugin.stdout
    except BaseException:
        for number, open_page in enumerate(alice.pages):
            open_page.screenshot(path=str(artifacts / f"failure-broken-{number}.png"))
        raise
    finally:
        alice.close()
        for name in [s["metadata"]["name"] for s in sessions(system)]:
            system.kubectl("delete", "notebooksession", name, "-n", "default", "--wait=false")
        wait_for(lambda: not sessions(system), 60, "the failed session to be gone", 0.5)
        system.kubectl("delete", "notebookprofile", FAILING_PROFILE)
