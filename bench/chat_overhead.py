"""What the task layer adds to time-to-first-token: a question enqueued as ``chat.answer``, answered by a chat
worker and read back from its Redis stream, against calling the same TGI test server directly (fixed per-token
latency). At 1 and 20 concurrent chats, without and with 50 documents ingesting. Prints figures; never part
of the tests.

The overhead includes everything a real question pays before the model is called: the task hop, question
embedding, hybrid search and prompt building. Each question is unique, so the answer cache never answers.

    .venv/bin/python bench/chat_overhead.py                       # embedded services under bench/.data
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
    from tasks import events

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
        if any(w.get("queues") == queues for w in events.live_workers()):
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
    from db.session import session_scope
    from rag.library import get_or_create_kb, store_upload
    from tasks.client import enqueue_ingest

    with session_scope() as session:
        kb_id = get_or_create_kb(session=session, name=kb_name).id
    for path in sorted((CORPUS / "ntsb").glob("*.pdf")):
        with session_scope() as session:
            outcome = store_upload(session=session, kb_id=kb_id, filename=path.name, data=path.read_bytes())
        if outcome.status == "queued":
            enqueue_ingest(outcome.document_id)
    return kb_id


def wait_idle(kb_id: int, timeout: float = 900) -> None:
    from db.models import FINAL_STATES
    from db.repositories import documents as document_repo
    from db.session import session_scope

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope() as session:
            if all(d.status in FINAL_STATES for d in document_repo.list_for_kb(session=session, kb_id=kb_id)):
                return
        time.sleep(1)
    raise TimeoutError("ingestion did not finish")


def load_documents(kb_name: str, count: int) -> int:
    """``count`` corpus PDFs queued for ingestion in a fresh base (each run gets new bytes: never a duplicate)."""
    from db.session import session_scope
    from rag.library import get_or_create_kb, store_upload
    from tasks.client import enqueue_ingest

    with session_scope() as session:
        kb_id = get_or_create_kb(session=session, name=f"{kb_name}-load-{int(time.time())}").id
    files = sorted((CORPUS / "nih").glob("*.pdf")) + sorted((CORPUS / "ntsb").glob("*.pdf"))
    for i in range(count):
        path = files[i % len(files)]
        data = path.read_bytes() + f"\n% bench copy {i} {time.time()}\n".encode()  # still a valid PDF
        with session_scope() as session:
            outcome = store_upload(session=session, kb_id=kb_id, filename=f"{i:02d}-{path.name}", data=data)
        if outcome.status == "queued":
            enqueue_ingest(outcome.document_id)
    return kb_id


def direct_ttft(samples: int) -> list[float]:
    """Milliseconds to the first token calling the server directly (rag.llm, in this process)."""
    from rag import llm

    times = []
    for i in range(samples):
        started = time.perf_counter()
        stream = llm.stream_chat(
            [{"role": "user", "content": f"{QUESTIONS[i % len(QUESTIONS)]} ({i})?"}], max_tokens=64
        )
        next(iter(stream))
        times.append((time.perf_counter() - started) * 1000)
        stream.close()
    return times


def task_ttft(kb_id: int, questions: list[str], concurrency: int) -> tuple[list[float], int]:
    """Milliseconds from enqueue to the first token read from the stream, and how many chats failed."""
    from tasks.client import enqueue
    from tasks.streams import follow

    times: list[float] = []
    errors = [0]
    lock = threading.Lock()
    pending = list(questions)

    def chat() -> None:
        while True:
            with lock:
                if not pending:
                    return
                question = pending.pop()
            started = time.perf_counter()
            first = None
            try:
                for kind, _ in follow(enqueue("chat.answer", kb_id, question, None), timeout=60):
                    if kind == "token" and first is None:
                        first = (time.perf_counter() - started) * 1000
                    elif kind == "error":
                        raise RuntimeError("error event")
            except Exception:
                with lock:
                    errors[0] += 1
                continue
            with lock:
                if first is not None:
                    times.append(first)
                else:
                    errors[0] += 1

    threads = [threading.Thread(target=chat) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return times, errors[0]


def report(label: str, times: list[float], errors: int, direct_p50: float) -> None:
    overhead = [t - direct_p50 for t in times]
    print(
        f"  {label:<34} n={len(times):>3}  ttft p50 {percentile(times, 50):7.1f} ms  p95 {percentile(times, 95):7.1f} ms"
        f"  overhead p50 {percentile(overhead, 50):7.1f} ms  p95 {percentile(overhead, 95):7.1f} ms  errors {errors}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--questions", type=int, default=60, help="questions per scenario")
    parser.add_argument(
        "--token-latency", type=float, default=0.02, help="seconds per token at the test server"
    )
    parser.add_argument(
        "--documents", type=int, default=50, help="documents ingesting in the loaded scenarios"
    )
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / ".data")
    args = parser.parse_args()

    from tests.tgi_server import Behaviour, TGIServer

    services = start_services(args.data_dir)
    tgi = TGIServer(
        behaviour=Behaviour(
            answer="The report gives the cause [1]. " * 8,
            token_latency=args.token_latency,
            first_token_delay=args.token_latency,
        )
    ).start()
    os.environ["KBCHAT_TGI_URL"] = tgi.url
    from rag.config import get_settings

    get_settings.cache_clear()
    logs = args.data_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    env = {"KBCHAT_TGI_URL": tgi.url, "KBCHAT_ANSWER_CACHE_TTL_SECONDS": "0"}
    workers = [
        start_worker("chat", 20, env, logs / "bench-chat.log"),
        start_worker("ingest", 2, env, logs / "bench-ingest.log"),
    ]
    try:
        kb_id = ingest_demo("bench-chat")
        wait_idle(kb_id)
        print(
            f"backend {get_settings().task_backend}; TGI test server: {args.token_latency * 1000:.0f} ms per token"
        )
        task_ttft(
            kb_id, [f"{QUESTIONS[i % len(QUESTIONS)]} (warm-up {i})?" for i in range(10)], 5
        )  # load models
        direct_ttft(3)  # warm the HTTP client
        direct = direct_ttft(args.questions)
        direct_p50 = statistics.median(direct)
        print(
            f"  {'direct to the server':<34} n={len(direct):>3}  ttft p50 {direct_p50:7.1f} ms  "
            f"p95 {percentile(direct, 95):7.1f} ms"
        )
        run = 0
        for loaded in (False, True):
            if loaded:
                load_documents("bench-chat", args.documents)
                time.sleep(5)  # let ingestion get going
            for concurrency in (1, 20):
                run += 1
                questions = [
                    f"{QUESTIONS[i % len(QUESTIONS)]} (run {run}, {i})?" for i in range(args.questions)
                ]
                times, errors = task_ttft(kb_id, questions, concurrency)
                label = f"via task, {concurrency} concurrent" + (
                    f", {args.documents} ingesting" if loaded else ""
                )
                report(label, times, errors, direct_p50)
    finally:
        for process in workers:
            stop(process)
        tgi.stop()
        if services is not None:
            services.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
