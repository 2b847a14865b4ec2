"""Shared fixtures: real PostgreSQL+pgvector and Redis (embedded unless KBCHAT_*_URL say otherwise), real workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "demo"
BACKENDS = ("celery", "dramatiq")


def _operator():
    from rag.access import Actor

    return Actor.operator("tests")


OPERATOR = _operator()  # what the tests act as when access is not what they test: the operator (admin)


def pytest_configure(config) -> None:
    # One ONNX export of the embedding model per test run, shared by every process and data dir the tests make.
    if "KBCHAT_MODEL_CACHE_DIR" not in os.environ:
        import tempfile

        config._kbchat_models = tempfile.mkdtemp(prefix="kbchat-test-models-")
        os.environ["KBCHAT_MODEL_CACHE_DIR"] = config._kbchat_models


def pytest_unconfigure(config) -> None:
    models = getattr(config, "_kbchat_models", None)
    if models:
        import shutil

        shutil.rmtree(models, ignore_errors=True)
        os.environ.pop("KBCHAT_MODEL_CACHE_DIR", None)


def _reset_caches() -> None:
    """Forget everything derived from settings, so a changed environment takes effect in this process."""
    from infra import redis_client
    from infra.database import dispose_engine
    from infra.settings import get_settings
    from tasks.backend import get_backend

    if get_backend.cache_info().currsize:
        get_backend().close()
    get_settings.cache_clear()
    get_backend.cache_clear()
    redis_client.reset()
    dispose_engine()


@pytest.fixture(scope="session")
def services(tmp_path_factory) -> Iterator[dict[str, str]]:
    """Migrated PostgreSQL and a Redis for the whole run; their URLs are exported to KBCHAT_* for children."""
    from db import migrate
    from infra.settings import Settings
    from kbchat.services import Services

    data_dir = tmp_path_factory.mktemp("kbchat-data")
    saved = {k: os.environ.get(k) for k in ("KBCHAT_DATABASE_URL", "KBCHAT_REDIS_URL", "KBCHAT_DATA_DIR")}
    os.environ["KBCHAT_DATA_DIR"] = str(data_dir)
    running = Services(Settings(data_dir=data_dir), write_state=False)
    urls = running.start()
    os.environ["KBCHAT_DATABASE_URL"] = urls.database_url
    os.environ["KBCHAT_REDIS_URL"] = urls.redis_url
    _reset_caches()
    migrate.upgrade(urls.database_url)
    try:
        yield {"database_url": urls.database_url, "redis_url": urls.redis_url, "data_dir": str(data_dir)}
    finally:
        _reset_caches()
        running.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@dataclass
class WorkerHandle:
    backend: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_worker(backend: str, log_path: Path, queues: str = "ingest,chat,maintenance",
                 extra_env: dict[str, str] | None = None, wait: bool = True) -> WorkerHandle:
    """A real worker process (``kbchat worker``) on ``backend``; waits for its heartbeat."""
    from telemetry import events

    env = dict(os.environ, KBCHAT_TASK_BACKEND=backend, PYTHONUNBUFFERED="1", **(extra_env or {}))
    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "kbchat.cli", "worker", "--queues", queues, "--concurrency", "1"],
        env=env, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
    )
    log.close()
    handle = WorkerHandle(backend, process, log_path)
    if wait:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if any(w.get("backend") == backend and _pid_in_tree(process.pid, int(w.get("pid", 0)))
                   for w in events.live_workers()):
                return handle
            if process.poll() is not None:
                raise RuntimeError(f"{backend} worker exited:\n{handle.log()[-3000:]}")
            time.sleep(0.2)
        stop_worker(handle)
        raise RuntimeError(f"{backend} worker sent no heartbeat:\n{handle.log()[-3000:]}")
    return handle


def _pid_in_tree(root: int, pid: int) -> bool:
    import psutil

    if pid == root:
        return True
    try:
        return any(child.pid == pid for child in psutil.Process(root).children(recursive=True))
    except psutil.NoSuchProcess:
        return False


def stop_worker(handle: WorkerHandle, timeout: float = 30) -> None:
    """SIGTERM the worker's main process (as a supervisor would), wait; SIGKILL whatever is left in its group."""
    if handle.process.poll() is None:
        # Only the main process: Dramatiq's child treats a second SIGTERM (group + forwarded) as "kill now".
        handle.process.send_signal(signal.SIGTERM)
        try:
            handle.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(handle.process.pid, signal.SIGKILL)
            handle.process.wait()
    try:  # reap any grandchild left in the group
        os.killpg(handle.process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request, services) -> Iterator[str]:
    """Each task-layer test runs once per backend; this process enqueues on the same backend."""
    os.environ["KBCHAT_TASK_BACKEND"] = request.param
    _reset_caches()
    yield request.param
    os.environ.pop("KBCHAT_TASK_BACKEND", None)
    _reset_caches()


@pytest.fixture(scope="session")
def worker(backend, tmp_path_factory) -> Iterator[WorkerHandle]:
    """A real worker on all queues for the current backend, shared by the tests of that backend."""
    handle = start_worker(backend, tmp_path_factory.mktemp(f"worker-{backend}") / "worker.log")
    try:
        yield handle
    finally:
        stop_worker(handle)


@pytest.fixture
def kb(services) -> tuple[int, str]:
    """A fresh, empty knowledge base for one test."""
    from infra.database import session_scope
    from rag.library import get_or_create_kb

    name = f"test-{uuid.uuid4().hex[:10]}"
    with session_scope() as session:
        created = get_or_create_kb(session=session, name=name)
        return created.id, name


def wait_for_documents(document_ids: list[int], timeout: float = 120) -> dict[int, object]:
    """Poll until every document is ready or failed; fail the test on timeout."""
    from db.models import FINAL_STATES
    from db.repositories import documents as document_repo
    from infra.database import session_scope

    deadline = time.monotonic() + timeout
    while True:
        with session_scope() as session:
            documents = {d.id: d for d in document_repo.list_by_ids(session=session, document_ids=document_ids)}
        if all(d.status in FINAL_STATES for d in documents.values()):
            return documents
        if time.monotonic() > deadline:
            pytest.fail(f"documents not final after {timeout}s: {[(d.id, d.status) for d in documents.values()]}")
        time.sleep(0.3)


def upload(kb_id: int, filename: str, data: bytes):
    """Upload a file the way the upload page does (stored, then its ingest queued); returns the outcome."""
    from tasks.backend import get_backend
    from usecases.documents import upload_files

    return upload_files(get_backend(), OPERATOR, kb_id=kb_id, files=[(filename, data)])[0]


class RecordingQueue:
    """A task queue that only records what a use case sends (the stub twin of tasks.backend's backends)."""

    name = "recording"

    def __init__(self) -> None:
        self.sent: list[tuple] = []

    def enqueue(self, name: str, *args, task_id: str | None = None) -> str:
        self.sent.append((name, *args))
        return f"id-{len(self.sent)}"

    def waiting_ingest_runs(self) -> set[str]:
        return set()

    def release_lost_messages(self) -> None:
        pass


def enqueue(name: str, *args, task_id: str | None = None) -> str:
    """Send a task through this process's backend now (a test running a job without waiting for its schedule)."""
    from tasks.backend import get_backend

    return get_backend().enqueue(name, *args, task_id=task_id)


def make_pdf(pages: list[str]) -> bytes:
    """A real text PDF with one string per page (fpdf2)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=11)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 6, text)
    return bytes(pdf.output())


DENSE_TOPICS = [
    "harbour pilots", "glacier surveys", "rail signalling", "orchard irrigation", "lighthouse lenses",
    "volcanic ash", "telegraph cables", "salt marshes", "river ferries", "mountain huts",
]


def dense_pdf(pages: int, *, font_size: int = 10, repeats: int = 6) -> bytes:
    """A text PDF with distinct, dense text on every page (long ingests: reliability tests, split benchmark)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=font_size)
    for number in range(1, pages + 1):
        topic = DENSE_TOPICS[number % len(DENSE_TOPICS)]
        sentences = [
            f"Section {number} reviews {topic} in district {number * 7 % 97}.",
            f"Inspectors counted {number * 13 % 500} incidents and filed report {number}-{number % 11}.",
            f"The committee on {topic} met {number % 5 + 1} times and agreed on new rules for page {number}.",
        ]
        pdf.add_page()
        pdf.multi_cell(0, font_size / 2, " ".join(sentences * repeats))
    return bytes(pdf.output())


def start_scheduler(env: dict[str, str], log_path: Path) -> subprocess.Popen:
    """``kbchat scheduler`` as a child process in its own group, its output in ``log_path``."""
    with open(log_path, "ab") as log:
        return subprocess.Popen([sys.executable, "-m", "kbchat.cli", "scheduler"], env=env, cwd=ROOT,
                                stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def stop_process_group(process: subprocess.Popen, timeout: float = 20) -> None:
    """SIGTERM the child's process group and wait; SIGKILL it if it does not stop in time."""
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- helpers for the integration tests (appended; the fixtures above are unchanged) ---------------------


def wait_until(predicate, timeout: float, message: str, interval: float = 0.2):
    """Poll ``predicate`` until it returns something truthy and return that; fail the test on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f}s: {message}")
        time.sleep(interval)


def finished_task_record(task_id: str, state: str = "succeeded", timeout: float = 30) -> dict:
    """The task record once it says ``state``. A document row turns final inside the task body and the record only
    after the body returns, so a test that saw the document finish must wait a moment for the record."""
    from telemetry import events

    return wait_until(lambda: (r := events.get_task(task_id)) and r.get("state") == state and r, timeout,
                      f"task {task_id} to be recorded as {state}")


def run_cli(*args: str, env: dict[str, str | None] | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    """``python -m kbchat.cli ARGS`` with this process's environment (the services' URLs, the backend);
    ``env`` overrides variables, a None value removes one."""
    full_env = dict(os.environ, PYTHONUNBUFFERED="1")
    for key, value in (env or {}).items():
        if value is None:
            full_env.pop(key, None)
        else:
            full_env[key] = value
    return subprocess.run(
        [sys.executable, "-m", "kbchat.cli", *args],
        env=full_env, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
    )


def task_events(task_id: str, count: int = 5000) -> list[dict[str, str]]:
    """The capped ``kbchat:events`` stream's entries for one task, oldest first."""
    from telemetry import events

    return [e for e in reversed(events.recent_events(count)) if e.get("task_id") == task_id]


def backdate_document(document_id: int, seconds: int) -> None:
    """Make a document look untouched for ``seconds`` (as if its queue message was lost long ago)."""
    from sqlalchemy import text

    from infra.database import session_scope

    with session_scope() as session:
        session.execute(
            text("UPDATE documents SET updated_at = now() - make_interval(secs => :s) WHERE id = :id"),
            {"s": seconds, "id": document_id},
        )


def stop_worker_gracefully(handle: WorkerHandle, timeout: float = 30) -> None:
    """Stop a worker the way a supervisor or ``docker stop`` does (``stop_worker`` does exactly that)."""
    stop_worker(handle, timeout)


_SIGNED_IN: dict[str, str] = {}


def session_token(username: str = "ui-admin", role: str = "admin") -> str:
    """A real web session of a real account (made once per run), for tests that act as a signed-in user."""
    from usecases import accounts

    if username not in _SIGNED_IN:
        password = f"pw-{uuid.uuid4().hex}"
        try:
            accounts.add_user(OPERATOR, username=username, role=role, password=password)
        except ValueError:  # made by an earlier test under another password: set this one
            accounts.set_password(OPERATOR, username=username, password=password)
        _SIGNED_IN[username] = accounts.login(username, password).token
    return _SIGNED_IN[username]


def app_test(entrypoint: Path | None = None, *, username: str = "ui-admin", role: str = "admin"):
    """AppTest of the entrypoint as a signed-in user (AppTest has no browser cookie: the page reads the token
    the test puts where ``streamlit_app.auth`` looks for it)."""
    from streamlit.testing.v1 import AppTest

    from streamlit_app.auth import TEST_TOKEN_KEY

    at = AppTest.from_file(str(entrypoint or ROOT / "streamlit_app" / "app.py"), default_timeout=60)
    at.session_state[TEST_TOKEN_KEY] = session_token(username, role)
    return at


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class WebHandle:
    url: str
    process: subprocess.Popen
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_web(log_path: Path, extra_env: dict[str, str] | None = None, port: int | None = None) -> WebHandle:
    """A web process as ``kbchat web`` runs it (uvicorn, the ASGI app), on a free port; waits for /healthz."""
    import requests

    from infra.settings import get_settings
    from kbchat.runner import web_argv

    port = port or free_port()
    env = {**os.environ, **(extra_env or {})}
    with open(log_path, "ab") as log:
        process = subprocess.Popen(web_argv("127.0.0.1", port, get_settings()), env=env, cwd=ROOT, stdout=log,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    handle = WebHandle(f"http://127.0.0.1:{port}", process, log_path)
    deadline = time.monotonic() + 90
    while True:
        try:
            if requests.get(f"{handle.url}/healthz", timeout=2).status_code == 200:
                return handle
        except requests.ConnectionError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop_web(handle)
            raise RuntimeError(f"the web process did not come up:\n{handle.log()[-3000:]}")
        time.sleep(0.2)


def stop_web(handle: WebHandle) -> None:
    if handle.process.poll() is None:
        handle.process.terminate()
        try:
            handle.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            handle.process.kill()
            handle.process.wait()
