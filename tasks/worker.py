"""Start a worker for the configured backend on the given queues (replaces this process)."""

from __future__ import annotations

import os
import socket
import sys

from infra.settings import get_settings
from tasks.queues import QUEUES


def worker_argv(queues: list[str], concurrency: int) -> list[str]:
    """The command line of a worker process consuming ``queues``."""
    unknown = sorted(set(queues) - set(QUEUES))
    if unknown:
        raise ValueError(f"unknown queue(s) {', '.join(unknown)}; the queues are {', '.join(QUEUES)}")
    if get_settings().task_backend == "dramatiq":
        # One process with threads: the model is loaded once and shared; chat tasks mostly wait on I/O.
        return [sys.executable, "-m", "dramatiq", "tasks.dramatiq_worker", "--processes", "1",
                "--threads", str(concurrency), "--queues", *queues]
    # Chat answers wait on the network, so threads; ingestion is CPU-bound, so processes.
    pool = "threads" if set(queues) == {"chat"} else "prefork"
    name = f"kbchat-{'-'.join(queues)}-{os.getpid()}@{socket.gethostname()}"
    return [sys.executable, "-m", "celery", "-A", "tasks.celery_worker:app", "worker", "--queues", ",".join(queues),
            "--concurrency", str(concurrency), "--pool", pool, "--hostname", name, "--loglevel", "INFO",
            "--without-gossip", "--without-mingle"]


def worker_niceness(queues: list[str]) -> int:
    """How much lower this worker's CPU priority should be: background queues (ingest, maintenance) give way to
    chat answers on a shared machine; a worker that serves chat keeps its priority."""
    return 0 if "chat" in queues else get_settings().background_worker_nice


def embedding_threads(queues: list[str], concurrency: int) -> int:
    """Embedding threads per task for this worker: ``KBCHAT_EMBEDDING_THREADS`` when set; for an ingest worker the
    cores shared out over its ``concurrency`` tasks (two single-threaded encoders on 2 cores ingest about 10 %
    faster than two that each start 2 threads and wait on each other: bench/ingest.py); otherwise all cores."""
    configured = get_settings().embedding_threads
    if configured or "ingest" not in queues:
        return configured
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))


def exec_worker(queues: list[str], concurrency: int) -> None:
    argv = worker_argv(queues, concurrency)
    niceness = worker_niceness(queues)
    if niceness:
        os.nice(niceness)  # inherited by the exec'd worker and every process it forks
    threads = embedding_threads(queues, concurrency)
    # Handed to the exec'd worker, not written into this process: the embedding threads each task process's
    # embedder reads, and no tokenizer thread pools in a parent that forks (Celery prefork).
    env = {"TOKENIZERS_PARALLELISM": "false", **os.environ}
    if threads:
        env["KBCHAT_EMBEDDING_THREADS"] = str(threads)
    if "ingest" in queues and not get_settings().embedding_threads:
        # A batch runs on all cores while the other tasks have nothing to embed (the last document of an upload).
        env["KBCHAT_EMBEDDING_SHARE_CORES"] = "true"
    os.execve(argv[0], argv, env)
