"""The production shape on this machine: two web instances (uvicorn, ``web_argv``) on free ports behind Debian's
nginx running the repository's config (``deploy/nginx/kbchat.conf.template``), sharing the test PostgreSQL and
Redis and a real worker, on Celery and on Dramatiq. Headless Chromium signs in through nginx, creates a base, uploads a note and asks
about it; an API client streams an answer through nginx; then the instance holding the browser's Streamlit session
is killed with SIGKILL, and the next page load (still signed in), a new question and an API call go through the
other one. A body over the upload limit is refused by nginx itself, naming the limit.

nginx is Debian's (``make nginx`` installs it) and runs as a child of the test with everything under a tmp dir;
the system service is never started. Chromium is Debian's too (``make chromium``).
"""

from __future__ import annotations

import http.client
import json
import re
import signal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import nginx_support
from tests.conftest import (
    OPERATOR,
    WebHandle,
    run_cli,
    start_web,
    stop_web,
    wait_until,
)

pytestmark = pytest.mark.e2e

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
READY_TIMEOUT = 180  # the upload row reaching "ready" (the worker loads the embedding model first)
ANSWER_TIMEOUT = 180
NOTE = "# Blue heron survey\n\nThe blue heron colony nests by the old mill weir, upstream of the ford.\n\n" \
       "Volunteers counted forty-two nests in April.\n"
QUESTION = "Where does the blue heron colony nest?"
UPLOAD_MB = 2  # the app's and nginx's limit here (KBCHAT_MAX_UPLOAD_MB), small enough to go over in a test


def _addr(web: WebHandle) -> str:
    return web.url.removeprefix("http://")


@dataclass
class Stack:
    nginx: nginx_support.Nginx
    webs: list[WebHandle]
    username: str
    password: str
    kb_name: str = field(default_factory=lambda: f"Herons {uuid.uuid4().hex[:6]}")
    killed: WebHandle | None = None
    shared: dict = field(default_factory=dict)  # what one test leaves for the next: the browser page

    @property
    def url(self) -> str:
        return self.nginx.url

    def logs(self) -> str:
        parts = [self.nginx.log()]
        parts += [f"--- web {_addr(w)}\n{w.log()[-3000:]}" for w in self.webs]
        return "\n".join(parts)


def test_the_rendered_config_is_valid_nginx(tmp_path):
    """The template rendered for three instances passes ``nginx -t``: every instance in both upstreams, the limit."""
    if not Path(nginx_support.NGINX).exists():
        pytest.fail("nginx is missing: `make nginx` installs Debian's nginx for this test (never started as a service).")
    addrs = ["127.0.0.1:18501", "127.0.0.1:18502", "127.0.0.1:18503"]
    conf = nginx_support.write_config(tmp_path, addrs, nginx_support.free_port(), max_upload_mb=321)
    checked = nginx_support.check_config(conf, tmp_path)
    assert checked.returncode == 0, checked.stderr
    text = conf.read_text()
    assert "client_max_body_size 321m;" in text and "321 MB" in text
    for upstream in ("kbchat_sticky", "kbchat_balanced"):
        block = text[text.index(f"upstream {upstream} {{"):]
        block = block[:block.index("}")]
        assert [line.split()[1] for line in block.splitlines() if line.strip().startswith("server ")] == addrs


@pytest.fixture(scope="module")
def stack(worker, tmp_path_factory) -> Iterator[Stack]:
    """Two web instances on the worker's backend, nginx in front, and an analyst who may sign in."""
    from usecases import accounts

    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: `make chromium` installs Debian's Chromium for this test.")
    if not Path(nginx_support.NGINX).exists():
        pytest.fail("nginx is missing: `make nginx` installs Debian's nginx for this test (never started as a service).")
    tmp = tmp_path_factory.mktemp(f"load-balancer-{worker.backend}")
    webs: list[WebHandle] = []
    nginx = None
    try:
        for number in (1, 2):  # extractive answers: no generation server here
            webs.append(start_web(tmp / f"web-{number}.log", extra_env={
                "KBCHAT_TASK_BACKEND": worker.backend, "KBCHAT_TGI_URL": "", "KBCHAT_MAX_UPLOAD_MB": str(UPLOAD_MB)}))
        (tmp / "nginx").mkdir()
        nginx = nginx_support.start(tmp / "nginx", [_addr(w) for w in webs], max_upload_mb=UPLOAD_MB)
        username, password = f"heron-{uuid.uuid4().hex[:6]}", f"Pw-{uuid.uuid4().hex}"
        accounts.add_user(OPERATOR, username=username, role="analyst", password=password)
        yield Stack(nginx, webs, username, password)
    finally:
        if nginx is not None:
            nginx_support.stop(nginx)
        for web in webs:
            stop_web(web)


@pytest.fixture(scope="module")
def browser(stack) -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


def _upstreams(stack: Stack, path_pattern: str, since: int = 0) -> list[str]:
    """The instance that answered each request matching ``path_pattern`` (from nginx's access log, from line
    ``since`` on), oldest first. A websocket's line is written when it closes."""
    lines = (stack.nginx.prefix / "access.log").read_text(errors="replace").splitlines()[since:]
    found = []
    for line in lines:
        match = re.search(r'"\w+ (\S+) [^"]*" \d+ upstream=(.+)$', line)
        if match and re.search(path_pattern, match.group(1)):
            found.append(match.group(2).split(", ")[-1])  # after a retry: every one tried, the last answered
    return found


def _log_lines(stack: Stack) -> int:
    return len((stack.nginx.prefix / "access.log").read_text(errors="replace").splitlines())


def _ask_and_see_the_citation(page, note_name: str) -> None:
    from playwright.sync_api import expect

    page.get_by_test_id("stSidebarNav").get_by_text("Ask", exact=True).click()
    expect(page.get_by_role("heading", name="Ask your documents")).to_be_visible(timeout=60_000)
    box = page.get_by_test_id("stChatInputTextArea")
    box.fill(QUESTION)
    box.press("Enter")
    cited = page.get_by_test_id("stExpander").filter(has_text=note_name)
    expect(cited.last).to_be_visible(timeout=ANSWER_TIMEOUT * 1000)
    expect(page.get_by_test_id("stChatMessage").last).to_contain_text("weir")


def test_sign_in_upload_and_ask_through_nginx(stack, browser, tmp_path):
    from playwright.sync_api import expect

    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    stack.shared["context"], stack.shared["page"] = context, page
    try:
        page.goto(f"{stack.url}/upload")
        expect(page.get_by_role("button", name="Sign in")).to_be_visible(timeout=60_000)
        page.get_by_label("Username").fill(stack.username)
        page.get_by_label("Password").fill(stack.password)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Upload documents")).to_be_visible(timeout=60_000)

        page.get_by_label("Name of the new knowledge base").fill(stack.kb_name)
        page.get_by_role("button", name="Create").click()
        expect(page.get_by_text(f"Documents in “{stack.kb_name}”")).to_be_visible(timeout=60_000)

        note = tmp_path / "heron-survey.md"
        note.write_text(NOTE)
        stack.shared["note"] = note.name
        page.locator("input[type=file]").set_input_files(str(note))
        add = page.get_by_role("button", name="Add to knowledge base")
        expect(add).to_be_enabled(timeout=60_000)
        add.click()
        row = page.get_by_test_id("stHorizontalBlock").filter(has_text=note.name)
        expect(row).to_contain_text("ready", timeout=READY_TIMEOUT * 1000)

        _ask_and_see_the_citation(page, note.name)
        page.screenshot(path=str(tmp_path / "answer.png"), full_page=True)
    except BaseException:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'failure.png'}\n{stack.logs()}")
        raise
    # The upload went where the session's websocket is: one instance, by the session cookie's hash.
    uploads = _upstreams(stack, r"/_stcore/upload_file")
    assert uploads and len(set(uploads)) == 1, uploads
    assert uploads[0] in {_addr(w) for w in stack.webs}, uploads


def _api_key(stack: Stack) -> str:
    proc = run_cli("apikey", "create", "--user", stack.username, "--json", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)["key"]


def _kb_id(name: str) -> int:
    from db.repositories import knowledge_bases as kb_repo
    from infra.database import session_scope

    with session_scope() as session:
        kb = kb_repo.get_by_name(session=session, name=name)
        assert kb is not None, f"the browser test made no base {name!r}"
        return kb.id


def _sse(stack: Stack, key: str, kb_id: int, question: str) -> list[tuple[str, str]]:
    """(event, data) of each Server-Sent Event of a streamed answer, read as they arrive through nginx."""
    host, port = stack.url.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=ANSWER_TIMEOUT)
    try:
        connection.request("POST", f"/api/v1/knowledge-bases/{kb_id}/ask", body=json.dumps({"question": question}),
                           headers={"Authorization": f"Bearer {key}", "Accept": "text/event-stream",
                                    "Content-Type": "application/json"})
        response = connection.getresponse()
        assert response.status == 200, (response.status, response.read()[:2000])
        assert response.getheader("content-type", "").startswith("text/event-stream")
        events: list[tuple[str, str]] = []
        event, data = "message", []
        for raw in response:
            line = raw.decode("utf-8").rstrip("\r\n")
            if not line:
                if data:
                    events.append((event, "\n".join(data)))
                event, data = "message", []
                if events and events[-1][0] in ("done", "error"):
                    break
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].removeprefix(" "))
        return events
    finally:
        connection.close()


def test_an_api_client_streams_an_answer_through_nginx(stack):
    key = _api_key(stack)
    stack.shared["key"] = key
    events = _sse(stack, key, _kb_id(stack.kb_name), QUESTION)
    names = [name for name, _ in events]
    assert "token" in names and names[-1] == "done", names
    assert names.index("token") < names.index("done")
    done = json.loads(events[-1][1])
    assert any(c.get("document") == stack.shared.get("note", "heron-survey.md") for c in done["citations"]), done
    assert "weir" in "".join(_token_text(d) for name, d in events if name == "token")


def _token_text(data: str) -> str:
    """A token event's text: the data itself, or the text field of a JSON object."""
    try:
        value = json.loads(data)
    except ValueError:
        return data
    if isinstance(value, dict):
        return next((str(value[k]) for k in ("text", "token", "content", "delta") if k in value), "")
    return str(value)


def test_nginx_refuses_a_body_over_the_upload_limit_naming_it(stack):
    import requests

    response = requests.post(f"{stack.url}/api/v1/knowledge-bases/1/documents", data=b"x" * (UPLOAD_MB + 1) * 2**20,
                             headers={"Content-Type": "application/octet-stream"}, timeout=60)
    assert response.status_code == 413
    assert response.headers["content-type"].startswith("application/problem+json")
    problem = response.json()
    assert problem["status"] == 413 and f"{UPLOAD_MB} MB" in problem["detail"], problem
    # nginx answered itself: no instance saw the body (its log line comes once the connection is done).
    assert wait_until(lambda: _upstreams(stack, r"/documents$"), 15, "nginx to log the refused upload") == ["-"]


def test_a_killed_instance_is_routed_around_and_the_reader_stays_signed_in(stack, tmp_path):
    from playwright.sync_api import expect

    page = stack.shared.get("page")
    if page is None:
        pytest.fail("the browser test did not get far enough to leave a signed-in page")
    holder = _upstreams(stack, r"/_stcore/upload_file")[-1]
    victim = next(w for w in stack.webs if _addr(w) == holder)
    survivor = next(w for w in stack.webs if w is not victim)
    streams_before = _upstreams(stack, r"/_stcore/stream").count(holder)
    victim.process.send_signal(signal.SIGKILL)
    victim.process.wait()
    stack.killed = victim
    # The browser's websocket to it closes (nginx logs it then); whatever comes after is the next page load.
    wait_until(lambda: _upstreams(stack, r"/_stcore/stream").count(holder) > streams_before, 15,
               "nginx to see the killed instance's websocket close")
    since = _log_lines(stack)
    try:
        page.goto(f"{stack.url}/")  # the Ask page is the default one (its url_path "chat" is not served)
        expect(page.get_by_role("heading", name="Ask your documents")).to_be_visible(timeout=60_000)
        expect(page.get_by_role("button", name="Sign in")).to_have_count(0)  # the session is in PostgreSQL
        expect(page.get_by_test_id("stChatInputTextArea")).to_have_attribute(
            "placeholder", f"Ask about “{stack.kb_name}”", timeout=30_000)
        _ask_and_see_the_citation(page, stack.shared["note"])  # a new answer, streamed via Redis to the survivor
        page.screenshot(path=str(tmp_path / "after-kill.png"), full_page=True)
    except BaseException:
        page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
        print(f"screenshot: {tmp_path / 'failure.png'}\n{stack.logs()}")
        raise
    assert survivor.process.poll() is None
    after = _upstreams(stack, r"^/($|_stcore/)", since)
    assert "/_stcore/stream" in (stack.nginx.prefix / "access.log").read_text() and after, after
    assert set(after) == {_addr(survivor)}, after


def test_the_api_answers_through_the_survivor(stack):
    if stack.killed is None:
        pytest.fail("the failover test did not kill an instance")
    key = stack.shared.get("key") or _api_key(stack)
    status, body = nginx_support.get(f"{stack.url}/api/v1/knowledge-bases", headers={"Authorization": f"Bearer {key}"})
    assert status == 200, body[:2000]
    assert stack.kb_name in [kb["name"] for kb in json.loads(body)]
    events = _sse(stack, key, _kb_id(stack.kb_name), QUESTION)
    assert events and events[-1][0] == "done", events
