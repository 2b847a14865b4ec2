"""The HTTP API under load, through nginx, with 1 and with 2 web instances (workers as in ``make run``).

Prints, per shape: 50 concurrent searches (p50/p95, errors) and 20 concurrent streamed asks (time to the first
token p50/p95, errors); and the API path's overhead over the same search called in-process (target ≤ 5 ms p50):
the two are called in turn, one pair after another, so a neighbour's load falls on both alike, and the overhead is
the median of the pairs' differences, after 20 untimed pairs (both paths warm) and, from the second shape on,
``--settle`` seconds after the last shape's bursts (for about ten seconds after a burst, a call costs 1–2 ms more,
measured with 60 pairs at a time; the cause is not pinned down: the thread pool grown to 40 threads, which anyio
prunes after 10 s idle, is the likeliest). The client keeps its connection open (``requests.Session``), as a script
that calls the API more than once does; the first figure is through nginx, the second straight to one instance.
Needs Debian's nginx (``make test`` installs it). Never part of pass/fail.

    .venv/bin/python bench/api.py [--searches 50] [--asks 20] [--rounds 3] [--pairs 120] [--settle 15]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from chat_overhead import ingest_demo, start_worker, stop, wait_idle  # noqa: E402  (bench/chat_overhead.py)
from retrieval import percentile, start_services  # noqa: E402  (bench/retrieval.py)

QUESTIONS = [
    "What did the Piper hit on final approach?", "Why did the engine lose power?", "Where did the airplane land?",
    "What was the weather at the time of the accident?", "How many hours had the pilot flown?",
    "What did the examination of the wreckage show?", "What was the probable cause?",
]


def burst(count: int, call) -> tuple[list[float], int]:
    """``count`` calls at the same instant (a barrier); their times in ms and how many failed."""
    barrier = threading.Barrier(count)
    times: list[float] = []
    errors = 0
    lock = threading.Lock()

    def one(i: int) -> None:
        nonlocal errors
        barrier.wait()
        started = time.perf_counter()
        try:
            call(i)
            took = (time.perf_counter() - started) * 1000
            with lock:
                times.append(took)
        except Exception:
            with lock:
                errors += 1

    threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times, errors


def paired(api: str, kb_id: int, headers: dict, caller, web_pid: int | None = None,
           count: int = 60) -> tuple[list, list, list, float | None]:
    """The same search in-process (as ``caller``, the key's user) and through the API in turn: (in-process ms,
    API ms, API − in-process per pair, and — with ``web_pid``, the one instance called — the API's CPU time per
    call in that process less the in-process call's CPU time, in ms; CPU time hardly moves with the neighbours'
    load). The in-process call is the one the API makes (``search_passages`` with its audit entry)."""
    import psutil
    import requests

    from usecases.searching import search_passages

    client = requests.Session()
    web = psutil.Process(web_pid) if web_pid else None
    local, remote, overhead = [], [], []
    local_cpu = web_cpu = 0.0
    for i in range(count):
        question = QUESTIONS[i % len(QUESTIONS)]
        started, cpu = time.perf_counter(), time.process_time()
        search_passages(caller, kb_id=kb_id, question=question, k=5)
        middle = time.perf_counter()
        local_cpu += time.process_time() - cpu
        before = sum(web.cpu_times()[:2]) if web else 0.0
        client.post(f"{api}/search", json={"question": question, "k": 5}, headers=headers,
                    timeout=120).raise_for_status()
        ended = time.perf_counter()
        time.sleep(0.02)  # the call's audit row is written just after its response
        web_cpu += (sum(web.cpu_times()[:2]) - before) if web else 0.0
        local.append((middle - started) * 1000)
        remote.append((ended - middle) * 1000)
        overhead.append(remote[-1] - local[-1])
    cpu_overhead = (web_cpu - local_cpu) * 1000 / count if web else None
    return local, remote, overhead, cpu_overhead


def idle_cpu_percent(pids: list[int], seconds: float = 2.0) -> list[float]:
    """Each web process's CPU use while nobody calls it (a process that keeps working after its calls ended would
    show here, and in every figure after)."""
    import psutil

    processes = [psutil.Process(pid) for pid in pids]
    before = [sum(p.cpu_times()[:2]) for p in processes]
    time.sleep(seconds)
    return [round((sum(p.cpu_times()[:2]) - b) * 100 / seconds, 1) for p, b in zip(processes, before, strict=True)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--searches", type=int, default=50)
    parser.add_argument("--asks", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--pairs", type=int, default=120, help="in-process/API pairs per figure")
    parser.add_argument("--settle", type=float, default=15.0,
                        help="seconds between one shape's bursts and the next shape's pairs")
    args = parser.parse_args()

    import os

    import requests

    from tests import nginx_support
    from tests.conftest import OPERATOR, start_web, stop_web

    data_dir = Path(tempfile.mkdtemp(prefix="kbchat-bench-api-"))
    services = start_services(data_dir / "services")
    os.environ["KBCHAT_API_RATE_LIMIT_PER_MINUTE"] = "100000"
    os.environ["KBCHAT_ANSWER_CACHE_TTL_SECONDS"] = "0"  # every ask goes to a worker
    from infra.settings import get_settings

    get_settings.cache_clear()
    env = dict(os.environ)
    workers = [start_worker("ingest,maintenance", 2, env, data_dir / "ingest.log"),
               start_worker("chat", 10, env, data_dir / "chat-1.log"),
               start_worker("chat", 10, env, data_dir / "chat-2.log")]
    webs, nginx = [], None
    try:
        from usecases import accounts, api_keys

        kb_id = ingest_demo("bench-api")
        wait_idle(kb_id)
        accounts.add_user(OPERATOR, username="bench-api", role="analyst")
        accounts.grant(OPERATOR, kb_id=kb_id, grantee="bench-api", level="viewer")
        key = api_keys.create_key(OPERATOR, username="bench-api")["key"]
        caller = api_keys.actor_for_key(key)
        headers = {"authorization": f"Bearer {key}"}

        for instances in (1, 2):
            while len(webs) < instances:
                webs.append(start_web(data_dir / f"web-{len(webs)}.log"))
            if nginx is not None:
                nginx_support.stop(nginx)
            prefix = data_dir / f"nginx-{instances}"
            prefix.mkdir()
            nginx = nginx_support.start(prefix, [w.url.removeprefix("http://") for w in webs])
            api = f"{nginx.url}/api/v1/knowledge-bases/{kb_id}"

            def search(i: int, api: str = api) -> None:
                response = requests.post(f"{api}/search", json={"question": QUESTIONS[i % len(QUESTIONS)], "k": 5},
                                         headers=headers, timeout=120)
                response.raise_for_status()

            def ask(i: int, api: str = api) -> None:
                response = requests.post(f"{api}/ask", json={"question": QUESTIONS[i % len(QUESTIONS)]},
                                         headers={**headers, "accept": "text/event-stream"}, stream=True,
                                         timeout=300)
                response.raise_for_status()
                for line in response.iter_lines(decode_unicode=True):
                    if line.startswith("event: token"):
                        return
                    if line.startswith("event: error"):
                        raise RuntimeError("error event")
                raise RuntimeError("no token")

            for web in webs:  # warm: each web process loads the embedder on its first search
                requests.post(f"{web.url}/api/v1/knowledge-bases/{kb_id}/search", json={"question": "warm"},
                              headers=headers, timeout=120).raise_for_status()
            if instances > 1:  # the last shape's bursts cost 1–2 ms a call for about 10 s
                time.sleep(args.settle)
            paired(api, kb_id, headers, caller, count=20)  # untimed: this process's in-process path warms too
            idle_cpu = idle_cpu_percent([w.process.pid for w in webs])
            pairs = {"nginx": paired(api, kb_id, headers, caller, count=args.pairs),
                     "direct": paired(f"{webs[0].url}/api/v1/knowledge-bases/{kb_id}", kb_id, headers, caller,
                                      webs[0].process.pid, count=args.pairs)}
            search_times, search_errors, ask_times, ask_errors = [], 0, [], 0
            for _ in range(args.rounds):
                times, errors = burst(args.searches, search)
                search_times += times
                search_errors += errors
                times, errors = burst(args.asks, ask)
                ask_times += times
                ask_errors += errors
            print(json.dumps({
                "web_instances": instances,
                "web_idle_cpu_percent": idle_cpu,
                "search_in_process_p50_ms": round(statistics.median(pairs["nginx"][0]), 1),
                "search_api_p50_ms": round(statistics.median(pairs["nginx"][1]), 1),
                "api_overhead_p50_ms": round(statistics.median(pairs["nginx"][2]), 1),
                "api_overhead_p95_ms": round(percentile(pairs["nginx"][2], 95), 1),
                "api_overhead_direct_p50_ms": round(statistics.median(pairs["direct"][2]), 1),
                "api_overhead_direct_cpu_ms_per_call": round(pairs["direct"][3], 2),
                f"burst_{args.searches}_searches_p50_ms": round(percentile(search_times, 50), 1),
                f"burst_{args.searches}_searches_p95_ms": round(percentile(search_times, 95), 1),
                "search_errors": search_errors,
                f"burst_{args.asks}_asks_first_token_p50_ms": round(percentile(ask_times, 50), 1),
                f"burst_{args.asks}_asks_first_token_p95_ms": round(percentile(ask_times, 95), 1),
                "ask_errors": ask_errors,
            }), flush=True)
    finally:
        if nginx is not None:
            nginx_support.stop(nginx)
        for web in webs:
            stop_web(web)
        for worker in workers:
            stop(worker)
        if services is not None:
            services.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
