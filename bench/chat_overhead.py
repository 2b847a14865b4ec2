"""What the task layer adds to time-to-first-token: a question enqueued as ``chat.answer``, answered by a chat
worker and read back from its Redis stream, against calling the same TGI test server directly (fixed per-token
latency). At 1 and 20 concurrent chats, without and with 50 documents ingesting. Prints figures; never part
of the tests.

The overhead includes everything a real question pays before the model is called: the task hop, question
embedding, hybrid search and prompt building. Each question is unique, so the answer cache never answers.
The test server runs in its own process. Overhead is printed against direct calls one at a time and, at higher
concurrency, against as many direct calls at once (the server's own slowdown under load is not the task layer's).
Each scenario also prints where the time went, p50/p95 per step (see ``steps``), and the load average. Concurrent
chats run twice: as a burst (all first questions at the same instant, the worst case on 2 cores) and with their
starts spread over ``--stagger`` seconds (steady concurrency: people do not press Enter in step).

    .venv/bin/python bench/chat_overhead.py                       # embedded services under bench/.data
    .venv/bin/python bench/chat_overhead.py --scenarios idle --concurrency 1 --questions 40   # quick look
    KBCHAT_TASK_BACKEND=dramatiq .venv/bin/python bench/chat_overhead.py --questions 40
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))
CORPUS = ROOT.parent / "shared" / "corpus"

from machine import describe  # noqa: E402  (bench/machine.py)
from retrieval import percentile, start_services  # noqa: E402  (bench/retrieval.py)

QUESTIONS = [
    "What was the probable cause of the accident",
    "What were the weather conditions at the time",
    "How many hours of flight experience did the pilot have",
    "Which phase of flight was the airplane in",
    "What damage did the aircraft sustain",
    "Was there a mechanical malfunction before the impact",
]


def start_worker(queues: str, concurrency: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    """A ``kbchat worker`` process; returns once its heartbeat shows."""
    from telemetry import events

    already = sum(1 for w in events.live_workers() if w.get("queues") == queues)

    process = subprocess.Popen(
        [sys.executable, "-m", "kbchat.cli", "worker", "--queues", queues, "--concurrency", str(concurrency)],
        env={**os.environ, **env},
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if sum(1 for w in events.live_workers() if w.get("queues") == queues) > already:
            return process
        if process.poll() is not None:
            raise RuntimeError(f"the {queues} worker exited; see {log}")
        time.sleep(0.3)
    raise RuntimeError(f"the {queues} worker sent no heartbeat; see {log}")


def stop(process: subprocess.Popen) -> None:
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)


def ingest_demo(kb_name: str) -> int:
    """The NTSB reports in a base (once), so questions find passages; returns the base id."""
    from rag.access import Actor
    from tasks.backend import get_backend
    from usecases.documents import upload_files
    from usecases.knowledge_bases import create_kb

    kb_id, _ = create_kb(Actor.operator("bench"), name=kb_name)
    for path in sorted((CORPUS / "ntsb").glob("*.pdf")):
        upload_files(get_backend(), Actor.operator("bench"), kb_id=kb_id, files=[(path.name, path.read_bytes())])
    return kb_id


def wait_idle(kb_id: int, timeout: float = 900) -> None:
    from db.models import FINAL_STATES
    from db.repositories import documents as document_repo
    from infra.database import session_scope

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            if all(d.status in FINAL_STATES for d in document_repo.list_for_kb(session=session, kb_id=kb_id)):
                return
        time.sleep(1)
    raise TimeoutError("ingestion did not finish")


def load_documents(kb_name: str, count: int) -> int:
    """``count`` corpus PDFs queued for ingestion in a fresh base (each run gets new bytes: never a duplicate)."""
    from rag.access import Actor
    from tasks.backend import get_backend
    from usecases.documents import upload_files
    from usecases.knowledge_bases import create_kb

    kb_id, _ = create_kb(Actor.operator("bench"), name=f"{kb_name}-load-{int(time.time())}")
    files = sorted((CORPUS / "nih").glob("*.pdf")) + sorted((CORPUS / "ntsb").glob("*.pdf"))
    for i in range(count):
        path = files[i % len(files)]
        data = path.read_bytes() + f"\n% bench copy {i} {time.time()}\n".encode()  # still a valid PDF
        upload_files(get_backend(), Actor.operator("bench"), kb_id=kb_id, files=[(f"{i:02d}-{path.name}", data)])
    return kb_id


def direct_ttft(samples: int, concurrency: int = 1) -> list[float]:
    """Milliseconds to the first token calling the server directly (rag.llm, in this process), ``concurrency``
    calls at a time."""
    from rag import llm

    times: list[float] = []
    lock = threading.Lock()
    pending = list(range(samples))

    def call() -> None:
        while True:
            with lock:
                if not pending:
                    return
                i = pending.pop()
            started = time.perf_counter()
            stream = llm.stream_chat(
                [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})?"}], max_tokens=64
            )
            next(iter(stream))
            elapsed = (time.perf_counter() - started) * 1000
            stream.close()
            with lock:
                times.append(elapsed)

    threads = [threading.Thread(target=call) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times


def start_tgi(token_latency: float, log: Path) -> tuple[subprocess.Popen, str]:
    """The TGI test server in its own process (so this process's readers do not slow it down); returns its URL."""
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.tgi_server", "--port", str(port), "--token-latency", str(token_latency),
         "--first-token-delay", str(token_latency), "--answer", "The report gives the cause [1]. " * 8],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        cwd=ROOT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=1):
                return process, url
        except OSError:
            if process.poll() is not None:
                raise RuntimeError(f"the TGI test server exited; see {log}") from None
            time.sleep(0.2)
    raise RuntimeError(f"the TGI test server did not answer; see {log}")


def task_ttft(kb_id: int, questions: list[str], concurrency: int, stagger: float = 0.0
              ) -> tuple[list[float], int, list[dict]]:
    """Milliseconds from enqueue to the first token read from the stream, how many chats failed, and each chat's
    steps (see ``steps``). With ``stagger`` the chats start spread evenly over that many seconds (people do not
    press Enter in step); without it all ask their first question at the same instant (a burst)."""
    from rag.access import Actor
    from tasks.backend import get_backend
    from telemetry.answer_streams import follow
    from usecases.asking import ask

    times: list[float] = []
    breakdowns: list[dict] = []
    errors = [0]
    lock = threading.Lock()
    pending = list(questions)

    def chat(number: int) -> None:
        time.sleep(stagger * number / concurrency)
        while True:
            with lock:
                if not pending:
                    return
                question = pending.pop()
            started, wall = time.perf_counter(), time.time()
            first = first_wall = None
            timings: dict = {}
            try:
                task_id = ask(get_backend(), Actor.operator("bench"), kb_id=kb_id, question=question).task_id
                enqueued = time.perf_counter()
                for kind, data in follow(task_id, timeout=60):
                    if kind == "token" and first is None:
                        first, first_wall = (time.perf_counter() - started) * 1000, time.time()
                    elif kind == "done":
                        timings = data.get("timings") or {}
                    elif kind == "error":
                        raise RuntimeError("error event")
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            if first is None:
                with lock:
                    errors[0] += 1
                continue
            breakdown = steps(task_id, wall, (enqueued - started) * 1000, first_wall, timings)
            with lock:
                times.append(first)
                if breakdown:
                    breakdowns.append(breakdown)

    threads = [threading.Thread(target=chat, args=(number,)) for number in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times, errors[0], breakdowns


def steps(task_id: str, sent_at: float, enqueue_ms: float, read_at: float, timings: dict) -> dict | None:
    """Where one chat's time to first token went, in milliseconds (wall clocks of one machine):
    ``enqueue`` the call; ``pickup`` from the call's start to the worker's started record minus the call;
    ``in task`` from there to the first token's stream entry (``retrieval``/``model`` parts from the answer's
    own timings: the model part includes the server's first-token time); ``read`` from that entry to the reader."""
    from infra.redis_client import get_redis
    from telemetry import events
    from telemetry.answer_streams import STREAM_KEY

    record = events.get_task(task_id) or {}
    entries = get_redis().xrange(STREAM_KEY.format(task_id))
    token_id = next((entry_id for entry_id, fields in entries if fields.get("kind") == "token"), None)
    if not record.get("started_at") or token_id is None:
        return None
    started_at = float(record["started_at"])
    token_at = int(token_id.split("-")[0]) / 1000  # Redis stamps stream entries in milliseconds
    in_answer = float(timings.get("first_token_ms", 0.0))
    in_task = (token_at - started_at) * 1000
    return {
        "enqueue": enqueue_ms,
        "pickup": (started_at - sent_at) * 1000 - enqueue_ms,
        "in task": in_task,
        "before answer": in_task - in_answer,
        "retrieval": float(timings.get("retrieval_ms", 0.0)),
        "model": in_answer - float(timings.get("retrieval_ms", 0.0)) - float(timings.get("rewrite_ms", 0.0)),
        "read": (read_at - token_at) * 1000,
    }


def report(label: str, times: list[float], errors: int, direct: dict[int, float], concurrency: int,
           breakdowns: list[dict]) -> None:
    """TTFT and overhead against the direct p50 at 1 call, and against direct calls at the same concurrency (the
    server itself answers more slowly with 20 requests at once; that part is not the task layer's)."""
    overhead = [t - direct[1] for t in times]
    same = [t - direct.get(concurrency, direct[1]) for t in times]
    print(
        f"  {label:<34} n={len(times):>3}  ttft p50 {percentile(times, 50):7.1f} ms  p95 {percentile(times, 95):7.1f} ms"
        f"  overhead p50 {percentile(overhead, 50):7.1f} ms  p95 {percentile(overhead, 95):7.1f} ms  errors {errors}"
    )
    if concurrency != 1 and concurrency in direct:
        print(
            f"  {'':<34} overhead vs direct at {concurrency} concurrent: p50 {percentile(same, 50):7.1f} ms"
            f"  p95 {percentile(same, 95):7.1f} ms"
        )
    if breakdowns:
        parts = "  ".join(
            f"{name} {percentile([b[name] for b in breakdowns], 50):.1f}/{percentile([b[name] for b in breakdowns], 95):.1f}"
            for name in breakdowns[0]
        )
        print(f"  {'':<34} steps p50/p95 ms: {parts}")


def load_average() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=60, help="questions per scenario")
    parser.add_argument(
        "--token-latency", type=float, default=0.02, help="seconds per token at the test server"
    )
    parser.add_argument(
        "--documents", type=int, default=50, help="documents ingesting in the loaded scenarios"
    )
    parser.add_argument("--concurrency", default="1,20", help="concurrent chats, comma-separated")
    parser.add_argument(
        "--stagger", type=float, default=1.0,
        help="also run each concurrency > 1 with the chats starting spread over this many seconds (0 = burst only)",
    )
    parser.add_argument(
        "--scenarios", default="idle,loaded", help="idle and/or loaded (documents ingesting), comma-separated"
    )
    parser.add_argument(
        "--chat-processes", type=int, default=2,
        help="chat worker processes sharing 20 threads (GIL vs cores); make run starts 2"
    )
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / ".data")
    args = parser.parse_args()
    scenarios = [name.strip() for name in args.scenarios.split(",")]

    services = start_services(args.data_dir)
    logs = args.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    tgi, tgi_url = start_tgi(args.token_latency, logs / "bench-tgi.log")
    os.environ["KBCHAT_TGI_URL"] = tgi_url
    from infra.settings import get_settings

    get_settings.cache_clear()
    env = {"KBCHAT_TGI_URL": tgi_url, "KBCHAT_ANSWER_CACHE_TTL_SECONDS": "0"}
    workers = [tgi]
    try:
        for number in range(args.chat_processes):  # 20 threads in all, shared out
            threads = 20 // args.chat_processes + (number < 20 % args.chat_processes)
            workers.append(start_worker("chat", threads, env, logs / f"bench-chat-{number}.log"))
        workers.append(start_worker("ingest", 2, env, logs / "bench-ingest.log"))
        kb_id = ingest_demo("bench-chat")
        wait_idle(kb_id)
        print(
            f"backend {get_settings().task_backend}; embedding {get_settings().embedding_backend}; "
            f"TGI test server: {args.token_latency * 1000:.0f} ms per token; load average {load_average()}"
        )
        print(f"CPU: {describe()}")
        task_ttft(
            kb_id, [f"{QUESTIONS[i % len(QUESTIONS)]} (warm-up {i})?" for i in range(10)], 5
        )  # load models
        direct_ttft(3)  # warm the HTTP client
        concurrencies = [int(n) for n in args.concurrency.split(",")]
        direct: dict[int, float] = {}
        for concurrency in sorted({1, *concurrencies}):
            times = direct_ttft(args.questions, concurrency)
            direct[concurrency] = statistics.median(times)
            print(
                f"  {f'direct to the server, {concurrency} concurrent':<34} n={len(times):>3}  "
                f"ttft p50 {direct[concurrency]:7.1f} ms  p95 {percentile(times, 95):7.1f} ms"
            )
        run = 0
        for loaded in [name == "loaded" for name in ("idle", "loaded") if name in scenarios]:
            if loaded:
                load_documents("bench-chat", args.documents)
                time.sleep(5)  # let ingestion get going
            for concurrency in concurrencies:
                for stagger in (0.0, args.stagger) if concurrency > 1 and args.stagger > 0 else (0.0,):
                    run += 1
                    questions = [
                        f"{QUESTIONS[i % len(QUESTIONS)]} (run {run}, {i})?" for i in range(args.questions)
                    ]
                    times, errors, breakdowns = task_ttft(kb_id, questions, concurrency, stagger)
                    label = f"via task, {concurrency} concurrent" + (
                        f", {args.documents} ingesting" if loaded else ""
                    ) + (f", starts over {stagger:g} s" if stagger else (", burst" if concurrency > 1 else ""))
                    report(label, times, errors, direct, concurrency, breakdowns)
                    print(f"  {'':<34} load average {load_average()}")
    finally:
        for process in workers:
            stop(process)
        if services is not None:
            services.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
