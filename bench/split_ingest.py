"""Split ingest benchmark: one long PDF through the real worker path with 1 or more ingest worker processes,
unsplit and split into page ranges (``KBCHAT_INGEST_SPLIT_PAGES``).

    .venv/bin/python bench/split_ingest.py [--pages 200] [--split 50] [--runs "1:0,1:50,2:50"]

``--runs`` lists ``workers:split_pages`` pairs (split 0 = never split). Each run starts its own ``kbchat worker
--concurrency 1`` processes (as ``--scale worker-ingest=N`` would), warms their model up, uploads the PDF into a
fresh knowledge base and prints the seconds until it is ready. Starts embedded PostgreSQL and Redis in a temporary
folder and removes everything it started. Prints figures only; never part of the tests.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import ingest_through_worker, start_services, stop_worker  # noqa: E402  (bench/ingest.py)

from tests.conftest import dense_pdf  # noqa: E402  (the reliability tests' long PDF)


def long_pdf(pages: int) -> bytes:
    """Distinct, dense text on every page (about 5 chunks a page)."""
    return dense_pdf(pages, font_size=9, repeats=12)


def start_workers(count: int, split: int, log_dir: Path) -> list[subprocess.Popen]:
    from telemetry import events

    processes = []
    for index in range(count):
        log = open(log_dir / f"worker-{split}-{index}.log", "ab")
        processes.append(subprocess.Popen(
            [sys.executable, "-m", "kbchat.cli", "worker", "--queues", "ingest", "--concurrency", "1"],
            env=dict(os.environ, PYTHONUNBUFFERED="1", KBCHAT_INGEST_SPLIT_PAGES=str(split)),
            stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, start_new_session=True,
        ))
        log.close()
    deadline = time.monotonic() + 180
    while len(events.live_workers()) < count:
        if any(p.poll() is not None for p in processes) or time.monotonic() > deadline:
            raise RuntimeError(f"the workers did not start; see {log_dir}")
        time.sleep(0.3)
    return processes


def small_pdf(tag: str) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=10)
    pdf.add_page()
    pdf.multi_cell(0, 5, f"Warm-up page {tag}: the model loads in every worker before the timed run.")
    return bytes(pdf.output())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=int, default=200)
    parser.add_argument("--runs", default="1:0,1:50,2:50", help="workers:split_pages pairs, comma-separated")
    parser.add_argument("--backend", choices=("celery", "dramatiq"), default="celery")
    args = parser.parse_args()
    os.environ["KBCHAT_TASK_BACKEND"] = args.backend
    runs = [tuple(int(x) for x in item.split(":")) for item in args.runs.split(",")]

    data_dir = Path(tempfile.mkdtemp(prefix="kbchat-bench-split-"))
    services = None
    workers: list[subprocess.Popen] = []
    try:
        services, _ = start_services(data_dir)
        data = long_pdf(args.pages)
        print(f"{args.pages}-page PDF ({len(data) / 1e6:.1f} MB), backend {args.backend}, load {os.getloadavg()[0]:.1f}")
        for number, (count, split) in enumerate(runs):
            workers = start_workers(count, split, data_dir)
            # Load the model in every worker process before timing: several small files at once reach them all.
            ingest_through_worker([(f"warm-{i}.pdf", small_pdf(f"{number}-{i}")) for i in range(count * 3)],
                                  f"warm-{number}")
            seconds, (document,) = ingest_through_worker([("long.pdf", data)], f"bench-{number}")
            label = f"{count} worker(s), " + (f"split every {split} pages" if split else "unsplit")
            print(f"  {label:<36} {seconds:7.1f} s  {document.pages / seconds:5.2f} pages/s  "
                  f"{document.status}, {document.chunk_count} chunks, load {os.getloadavg()[0]:.1f}", flush=True)
            for process in workers:
                stop_worker(process)
            workers = []
    finally:
        for process in workers:
            stop_worker(process)
        if services is not None:
            services.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
