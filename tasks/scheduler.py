"""Periodic jobs: Celery beat on Celery; on Dramatiq, a small loop that enqueues the same tasks on time."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time

from rag.config import get_settings
from tasks.registry import schedule

log = logging.getLogger(__name__)


def run_dramatiq_scheduler(stop: threading.Event | None = None) -> None:
    """Enqueue each scheduled task every interval until ``stop`` is set (or SIGTERM/SIGINT)."""
    from tasks.client import enqueue

    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    jobs = schedule()
    due = {name: time.monotonic() for name, _ in jobs}
    log.info("scheduler (dramatiq) started: %s", ", ".join(f"{n} every {i:g}s" for n, i in jobs))
    while not stop.is_set():
        now = time.monotonic()
        for name, interval in jobs:
            if now >= due[name]:
                try:
                    task_id = enqueue(name)
                    log.info("scheduled %s (%s)", name, task_id)
                    due[name] = now + interval
                except Exception as exc:  # Redis restarting: try again shortly
                    log.warning("could not enqueue %s: %s", name, exc)
                    due[name] = now + min(interval, 5)
        stop.wait(0.5)


def exec_scheduler() -> None:
    """Replace this process with the configured backend's scheduler."""
    settings = get_settings()
    if settings.task_backend == "dramatiq":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        run_dramatiq_scheduler()
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "celery", "-A", "tasks.celery_app:app", "beat", "--loglevel", "INFO",
        "--schedule", str(settings.data_dir / "celerybeat-schedule"),
    ]
    os.execv(sys.executable, argv)
