"""Periodic jobs: Celery beat on Celery; on Dramatiq, a small loop that enqueues the same tasks on time."""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
from datetime import UTC, datetime, timedelta

from infra.settings import get_settings
from tasks.backend import get_backend
from tasks.registry import Periodic, schedule

log = logging.getLogger(__name__)


def run_dramatiq_scheduler(stop: threading.Event | None = None) -> None:
    """Enqueue each scheduled task every interval until ``stop`` is set (or SIGTERM/SIGINT)."""
    enqueue = get_backend().enqueue
    stop = stop or threading.Event()
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
    jobs = schedule()
    # Interval jobs run at start and then every interval; daily jobs at their next HH:MM (UTC), like beat.
    due = {job.name: time.time() if job.every else next_daily(job, time.time()) for job in jobs}
    log.info("scheduler (dramatiq) started: %s", ", ".join(describe(job) for job in jobs))
    while not stop.is_set():
        now = time.time()
        for job in jobs:
            if now >= due[job.name]:
                try:
                    task_id = enqueue(job.name)
                    log.info("scheduled %s (%s)", job.name, task_id)
                    due[job.name] = now + job.every if job.every else next_daily(job, now)
                except Exception as exc:  # Redis restarting: try again shortly
                    log.warning("could not enqueue %s: %s", job.name, exc)
                    due[job.name] = now + min(job.every or 5, 5)
        stop.wait(0.5)


def next_daily(job: Periodic, now: float) -> float:
    """The next time (epoch seconds) after ``now`` at the job's HH:MM in UTC."""
    hour, minute = job.hour_minute
    current = datetime.fromtimestamp(now, UTC)
    run = current.replace(hour=hour, minute=minute, second=0, microsecond=0)
    if run.timestamp() <= now:
        run += timedelta(days=1)
    return run.timestamp()


def describe(job: Periodic) -> str:
    return f"{job.name} every {job.every:g}s" if job.every else f"{job.name} daily at {job.at} UTC"


def exec_scheduler() -> None:
    """Replace this process with the configured backend's scheduler."""
    settings = get_settings()
    if settings.task_backend == "dramatiq":
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
        run_dramatiq_scheduler()
        return
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    argv = [
        sys.executable, "-m", "celery", "-A", "tasks.celery_worker:app", "beat", "--loglevel", "INFO",
        "--schedule", str(settings.data_dir / "celerybeat-schedule"),
    ]
    os.execv(sys.executable, argv)
