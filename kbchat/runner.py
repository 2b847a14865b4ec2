"""``kbchat run``: services, migrations, workers, scheduler and web app as child processes; Ctrl-C stops all.

Like the CLI's commands, ``run`` imports the database and demo modules when it starts them: the supervisor
process stays light (start-up time, not a cycle)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from infra.settings import Settings, get_settings
from kbchat.services import die_with_parent

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str] = field(default_factory=dict)  # on top of the supervisor's environment
    process: subprocess.Popen | None = None
    restarts: list[float] = field(default_factory=list)


def web_argv(host: str, port: int, settings: Settings) -> list[str]:
    """uvicorn serving ``streamlit_app.web:app`` (the pages and sign-in as one ASGI app)."""
    return [
        sys.executable, "-m", "uvicorn", "streamlit_app.web:app", "--host", host, "--port", str(port),
        "--ws", "websockets", "--proxy-headers", "--forwarded-allow-ips", settings.trusted_proxies,
        "--timeout-graceful-shutdown", "10", "--log-level", "warning", "--no-server-header",
    ]


def child_argvs(host: str, port: int, settings: Settings) -> list[Child]:
    kbchat = [sys.executable, "-m", "kbchat.cli"]
    ingest_concurrency = max(1, min(2, os.cpu_count() or 1))
    return [
        Child("worker-ingest", kbchat + ["worker", "--queues", "ingest,maintenance", "--concurrency",
                                         str(ingest_concurrency)]),
        # Two chat processes of 10 threads: a burst of questions is picked up and prepared by two interpreters
        # (one GIL each) instead of one; with the ONNX embedder a chat process costs little memory.
        *(Child(f"worker-chat-{n}", kbchat + ["worker", "--queues", "chat", "--concurrency", "10"]) for n in (1, 2)),
        Child("scheduler", kbchat + ["scheduler"]),
        Child("web", web_argv(host, port, settings)),
    ]


def _wait_http(url: str, timeout: float, children: list[Child]) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        if any(c.process and c.process.poll() is not None for c in children if c.name == "web"):
            return False
        time.sleep(0.3)
    return False


def stop_children(children: list[Child], timeout: float = 20.0) -> None:
    """SIGTERM every child, wait, then SIGKILL the ones still there; always reap them."""
    for child in children:
        if child.process and child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for child in children:
        if child.process is None:
            continue
        try:
            child.process.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()


def run(host: str | None = None, port: int | None = None, demo: bool = True) -> int:
    """Bring everything up, print the URL, supervise until Ctrl-C."""
    from db import migrate
    from kbchat.demo import load_demo
    from kbchat.services import Services
    from usecases import accounts

    settings = get_settings()
    host = host or settings.web_host
    port = port or settings.web_port
    services = Services(settings)
    children: list[Child] = []
    stopping = False

    def on_signal(signum, _frame):
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        print("kbchat: starting PostgreSQL and Redis…", flush=True)
        urls = services.start()
        print("kbchat: migrating the database…", flush=True)
        migrate.upgrade(urls.database_url)
        from rag import embedding

        if embedding.export_pending():  # in a child: torch is needed for the export only, not in this process
            print("kbchat: exporting the embedding model to ONNX int8 (once)…", flush=True)
            subprocess.run([sys.executable, "-c", "from rag.embedding import prepare; prepare()"], check=True,
                           env={**os.environ, "KBCHAT_DATA_DIR": str(settings.data_dir.resolve())})
        env = dict(os.environ)
        env.update(
            KBCHAT_DATABASE_URL=urls.database_url,
            KBCHAT_REDIS_URL=urls.redis_url,
            KBCHAT_DATA_DIR=str(settings.data_dir.resolve()),
            KBCHAT_TASK_BACKEND=settings.task_backend,
            PYTHONUNBUFFERED="1",
        )
        children = child_argvs(host, port, settings)
        log_dir = settings.data_dir.resolve() / "logs"
        log_dir.mkdir(parents=True, exist_ok=True)
        for child in children:
            _start(child, env, log_dir)
        print(f"kbchat: {settings.task_backend} workers, scheduler and web app started (logs in {log_dir})", flush=True)
        url = f"http://{host}:{port}"
        services.update_state(web_url=url)
        if not _wait_http(f"{url}/healthz", 90, children):
            print(f"kbchat: the web app did not come up; see {log_dir / 'web.log'}", file=sys.stderr)
            return 1
        initial_password = accounts.ensure_initial_admin(settings.data_dir.resolve())
        if demo and not stopping:
            loaded = load_demo(settings)
            if loaded:
                print(f"kbchat: loading the demo knowledge base '{settings.demo_kb}' ({loaded} files)…", flush=True)
        print(f"kbchat is ready: {url}  (Ctrl-C to stop)", flush=True)
        password_file = settings.data_dir.resolve() / accounts.INITIAL_PASSWORD_FILE
        if initial_password:
            print(f"kbchat: sign in as 'admin' with the password {initial_password} (shown once; also in "
                  f"{password_file} until you change it on the My account page)", flush=True)
        elif password_file.exists():
            print(f"kbchat: sign in as 'admin'; its first password is in {password_file}", flush=True)
        while not stopping:
            for child in children:
                if child.process and child.process.poll() is not None and not stopping:
                    _restart(child, env, log_dir)
            time.sleep(0.5)
        print("\nkbchat: stopping…", flush=True)
        return 0
    finally:
        stop_children(children)
        services.stop()
        print("kbchat: stopped.", flush=True)


def _start(child: Child, env: dict, log_dir: Path) -> None:
    log = open(log_dir / f"{child.name}.log", "ab")
    # Own session: Ctrl-C reaches only the supervisor, which stops the children in order.
    child.process = subprocess.Popen(child.argv, env={**env, **child.env}, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                                     start_new_session=True, preexec_fn=die_with_parent)
    log.close()


def _restart(child: Child, env: dict, log_dir: Path) -> None:
    code = child.process.returncode if child.process else None
    now = time.monotonic()
    child.restarts = [t for t in child.restarts if now - t < 60] + [now]
    if len(child.restarts) > 5:
        print(f"kbchat: {child.name} keeps exiting (code {code}); see {log_dir / (child.name + '.log')}",
              file=sys.stderr, flush=True)
        time.sleep(5)
    else:
        print(f"kbchat: {child.name} exited (code {code}); restarting", file=sys.stderr, flush=True)
    _start(child, env, log_dir)
