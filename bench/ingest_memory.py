"""Peak memory of an ingest worker: the 2,000-page PDF of the reliability tests through the real worker path, on
Celery and on Dramatiq, with the configured embedder (onnx-int8 by default).

    .venv/bin/python bench/ingest_memory.py [--pages 2000] [--backends celery,dramatiq] [--concurrency 2]

Per backend it starts ``kbchat worker --queues ingest,maintenance --concurrency N`` (as ``make run`` does), warms
the model up in every task process, uploads the PDF and samples every process of the worker tree ten times a
second until the document is ready. It prints the peak RSS of the largest single process (the figure bounded per
ingest worker: a Celery pool child, or Dramatiq's one worker process), and of the whole tree. Starts embedded
PostgreSQL and Redis in a temporary folder and removes everything it started. Prints figures only.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import ingest_through_worker, start_services, start_worker, stop_worker  # noqa: E402

from tests.integration.bad_files import many_pages_pdf  # noqa: E402  (the 2,000-page test's PDF)

TARGET_MB = 500


class PeakSampler:
    """The peak RSS of each process of a process tree (by pid) and of the tree as a whole, sampled in a thread."""

    def __init__(self, root_pid: int, interval: float = 0.1) -> None:
        self.root_pid, self.interval = root_pid, interval
        self.per_process: dict[int, int] = {}
        self.tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        total = 0
        for process in processes:
            try:
                rss = process.memory_info().rss
            except psutil.NoSuchProcess:
                continue
            total += rss
            self.per_process[process.pid] = max(self.per_process.get(process.pid, 0), rss)
        self.tree = max(self.tree, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(self.interval)

    def __enter__(self) -> PeakSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def warm_files(count: int) -> list[tuple[str, bytes]]:
    """Small PDFs, one per task process and a few more, so every process has loaded the model before sampling."""
    return [(f"warm-{i}.pdf", many_pages_pdf(3 + i)) for i in range(count * 3)]


def measure(backend: str, pdf: bytes, concurrency: int, data_dir: Path) -> tuple[float, object, PeakSampler, int]:
    from infra.settings import get_settings
    from tasks.backend import get_backend

    os.environ["KBCHAT_TASK_BACKEND"] = backend
    get_settings.cache_clear()
    if get_backend.cache_info().currsize:
        get_backend().close()
    get_backend.cache_clear()
    worker = start_worker(concurrency, data_dir / f"worker-{backend}.log")
    try:
        ingest_through_worker(warm_files(concurrency), f"warm-{backend}")
        with PeakSampler(worker.pid) as sampler:
            seconds, (document,) = ingest_through_worker([("ledger-2000.pdf", pdf)], f"memory-{backend}")
        return seconds, document, sampler, worker.pid
    finally:
        stop_worker(worker)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pages", type=int, default=2000)
    parser.add_argument("--backends", default="celery,dramatiq")
    parser.add_argument("--concurrency", type=int, default=2, help="ingest tasks at once (make run uses 2)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from infra.settings import get_settings

    data_dir = Path(tempfile.mkdtemp(prefix="kbchat-bench-memory-"))
    services = None
    try:
        services, _ = start_services(data_dir)
        pdf = many_pages_pdf(args.pages)
        settings = get_settings()
        print(f"ingest worker memory: a {args.pages}-page PDF ({len(pdf) / 1e6:.1f} MB), embedder "
              f"{settings.embedding_backend}, split every {settings.ingest_split_pages} pages, concurrency "
              f"{args.concurrency}, load average {os.getloadavg()[0]:.2f}", flush=True)
        for backend in args.backends.split(","):
            seconds, document, sampler, root = measure(backend, pdf, args.concurrency, data_dir)
            largest_pid, largest = max(sampler.per_process.items(), key=lambda item: item[1])
            role = "the worker's main process" if largest_pid == root else "a task process"
            print(f"  {backend:<9} {document.status}, {document.pages} pages, {document.chunk_count} chunks in "
                  f"{seconds:.0f} s; peak RSS per ingest worker process {largest / 2**20:.0f} MB ({role}; target "
                  f"≤ {TARGET_MB} MB), whole worker tree {sampler.tree / 2**20:.0f} MB over "
                  f"{len(sampler.per_process)} processes", flush=True)
        return 0
    finally:
        if services is not None:
            services.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
