"""How long ``kbchat search`` and ``kbchat ask`` take as a person runs them (a fresh process each time), against
``kbchat healthcheck`` in the same run: the floor every command pays (interpreter, settings, a database and a
Redis round trip). Target: search within 2× of healthcheck. Prints figures; never part of the tests.

One worker on all queues (queues sorted, as its heartbeat lists them) answers ``ask`` (an extractive answer: no generation server), and ingests the demo
reports once into a base of their own.

    .venv/bin/python bench/cli_speed.py                 # embedded services under bench/.data
    .venv/bin/python bench/cli_speed.py --runs 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from chat_overhead import start_worker, stop  # noqa: E402  (bench/chat_overhead.py)
from retrieval import percentile, start_services  # noqa: E402  (bench/retrieval.py)

KB_NAME = "bench-cli"
QUESTION = "What was the probable cause of the accident?"


def kbchat(*args: str, env: dict[str, str]) -> float:
    """Seconds one ``python -m kbchat.cli ARGS`` takes, start to exit (it must succeed)."""
    started = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "kbchat.cli", *args], env=env, cwd=ROOT, capture_output=True,
                          text=True, timeout=300)
    elapsed = time.perf_counter() - started
    if proc.returncode != 0:
        raise RuntimeError(f"kbchat {' '.join(args)} exited {proc.returncode}:\n{proc.stderr[-2000:]}")
    return elapsed


def measure(commands: dict[str, list[str]], runs: int, env: dict[str, str]) -> dict[str, list[float]]:
    """Each command ``runs`` times, interleaved round by round, so a neighbour's load lands on all of them alike."""
    for args in commands.values():
        kbchat(*args, env=env)  # warm the page cache: every run after it is what a second call costs
    times: dict[str, list[float]] = {label: [] for label in commands}
    for _ in range(runs):
        for label, args in commands.items():
            times[label].append(kbchat(*args, env=env))
    for label, values in times.items():
        print(f"  {label:<36} n={runs:>2}  p50 {statistics.median(values) * 1000:7.0f} ms  "
              f"p95 {percentile(values, 95) * 1000:7.0f} ms  min {min(values) * 1000:7.0f} ms")
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="timed runs of each command (after one warm-up)")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / ".data")
    args = parser.parse_args()

    services = start_services(args.data_dir)
    logs = args.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "KBCHAT_TGI_URL": "", "KBCHAT_ANSWER_CACHE_TTL_SECONDS": "0", "PYTHONUNBUFFERED": "1"}
    worker = None
    try:
        worker = start_worker("chat,ingest,maintenance", 2, {"KBCHAT_TGI_URL": ""}, logs / "bench-cli-worker.log")
        demo = sorted((ROOT / "demo").glob("*.pdf"))
        subprocess.run([sys.executable, "-m", "kbchat.cli", "ingest", *map(str, demo), "--kb", KB_NAME, "--wait"],
                       env=env, cwd=ROOT, check=True, capture_output=True, timeout=900)
        from infra.settings import get_settings

        settings = get_settings()
        print(f"backend {settings.task_backend}; embedding {settings.embedding_backend}; {os.cpu_count()} cores")
        times = measure({
            "kbchat healthcheck": ["healthcheck"],
            "kbchat search --json": ["search", QUESTION, "--kb", KB_NAME, "--json"],
            "kbchat ask --json (extractive)": ["ask", QUESTION, "--kb", KB_NAME, "--json"],
        }, args.runs, env)
        health, search, ask = (times[label] for label in times)
        for name, values in (("search", search), ("ask", ask)):
            print(f"  {name} / healthcheck: {statistics.median(values) / statistics.median(health):.2f}× by median, "
                  f"{min(values) / min(health):.2f}× by fastest run" + ("  (target ≤ 2×)" if name == "search" else ""))
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "import torch"], check=True)
        print(f"  for scale: `python -c 'import torch'` alone takes {(time.perf_counter() - started) * 1000:.0f} ms")
    finally:
        if worker is not None:
            stop(worker)
        if services is not None:
            services.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
