"""Chaos benchmark: the real stack while documents ingest and questions are asked, one fault per round.

    .venv/bin/python bench/chaos.py [--backend celery] [--rounds 5] [--modes main,child,chat,redis,postgres]
                                    [--docs 3] [--pages 80] [--reconcile-every 60] [--down 5]

It starts embedded PostgreSQL and Redis in a temporary folder, a fake generation server that streams slowly
(``tests/tgi_server.py``, so answers take seconds), an ingest worker (``ingest,maintenance``, concurrency 2), a chat
worker (concurrency 2) and the scheduler — the workers restarted at once when they die, as ``make run`` does, all
with the shipped heartbeat and reconcile settings. A clean ingest of the files first gives the reference chunk
counts. Then each round uploads the files into a fresh knowledge base, keeps two askers asking, and strikes:

- ``main``: SIGKILL the ingest worker's main process and its children (a dead host) while documents embed;
- ``child``: SIGKILL one process under the ingest worker's main process (Celery: a pool child; Dramatiq: the
  worker process) while documents embed;
- ``chat``: SIGKILL the chat worker (main process and children) while answers stream;
- ``redis``: stop Redis (its data kept) for a few seconds and start it again while documents embed;
- ``postgres``: stop PostgreSQL (fast shutdown: every connection cut, its data kept) for a few seconds and start it
  again on the same data folder and socket while documents embed and answers stream.

and reports per round: documents lost (failed, or not final by the deadline), duplicated (chunk rows against the
clean ingest's count, or ordinals not 0..n-1), stuck (not final by the deadline), the time from the fault until
the last document was final, and questions that got neither an answer nor a clear error (silence until the chat
page's timeout). Prints figures only; never part of the tests. Removes everything it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from ingest import start_services  # noqa: E402  (bench/ingest.py)

from rag.access import Actor  # noqa: E402
from tests.conftest import dense_pdf  # noqa: E402
from tests.tgi_server import Behaviour, TGIServer  # noqa: E402

OPERATOR = Actor.operator("bench")

MODES = ("main", "child", "chat", "redis", "postgres")
QUESTIONS = ["Which incidents did the inspectors count?", "How often did the committee on glacier surveys meet?",
             "What does section 12 review?", "Which district is the harbour pilots section about?"]
ANSWER = " ".join(f"word{i}" for i in range(60)) + " [1]."  # 60 tokens at 50 ms: three seconds of streaming


@dataclass
class Supervised:
    """A child process restarted at once when it exits, until stopped (what ``kbchat run`` does)."""

    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    process: subprocess.Popen | None = None
    restarts: int = 0
    _stopping: bool = False
    _thread: threading.Thread | None = field(default=None, repr=False)

    def start(self) -> Supervised:
        self._spawn()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def _spawn(self) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)

    def _watch(self) -> None:
        while not self._stopping:
            if self.process is not None and self.process.poll() is not None and not self._stopping:
                self.restarts += 1
                self._spawn()
            time.sleep(0.2)

    def stop(self) -> None:
        self._stopping = True
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
        if self.process is not None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait()


def kbchat(*args: str) -> list[str]:
    return [sys.executable, "-m", "kbchat.cli", *args]


def wait_for_workers(count: int, timeout: float = 180) -> None:
    from telemetry import events

    deadline = time.monotonic() + timeout
    while len(events.live_workers()) < count:
        if time.monotonic() > deadline:
            raise RuntimeError("the workers sent no heartbeat")
        time.sleep(0.3)


def upload_all(kb_name: str, files: list[tuple[str, bytes]]) -> tuple[int, list[int]]:
    from tasks.backend import get_backend
    from usecases.documents import upload_files
    from usecases.knowledge_bases import create_kb

    kb_id, _ = create_kb(OPERATOR, name=kb_name)
    outcomes = upload_files(get_backend(), OPERATOR, kb_id=kb_id, files=files)
    return kb_id, [o.document_id for o in outcomes if o.document_id is not None]


def documents(ids: list[int]) -> list:
    from db.repositories import documents as document_repo
    from infra.database import session_scope

    with session_scope() as session:
        return document_repo.list_by_ids(session=session, document_ids=ids)


def chunk_rows(document_id: int) -> tuple[int, bool]:
    """(chunk rows, whether the ordinals are exactly 0..n-1)."""
    from sqlalchemy import text

    from infra.database import session_scope

    with session_scope() as session:
        ordinals = sorted(session.scalars(text("SELECT ordinal FROM chunks WHERE document_id = :d"), {"d": document_id}))
    return len(ordinals), ordinals == list(range(len(ordinals)))


def safely(read, default):
    """A read that may meet Redis or PostgreSQL restarting: the default then."""
    try:
        return read()
    except Exception:
        return default


class Askers:
    """Two threads asking questions of a ready base one after another; each outcome counted."""

    def __init__(self, kb_id: int, timeout: float) -> None:
        self.kb_id, self.timeout = kb_id, timeout
        self.outcomes: list[str] = []
        self.streaming = threading.Event()  # some answer has tokens coming
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(2)]

    def __enter__(self) -> Askers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=self.timeout + 30)

    def _run(self, index: int) -> None:
        from tasks.backend import get_backend
        from telemetry.answer_streams import follow
        from usecases.asking import ask

        number = index
        while not self._stop.is_set():
            question = QUESTIONS[number % len(QUESTIONS)]
            number += 2
            try:
                task_id = ask(get_backend(), OPERATOR, kb_id=self.kb_id, question=question).task_id
            except Exception:
                time.sleep(0.5)  # Redis down: the page would say it cannot reach the queue
                self.outcomes.append("told")
                continue
            outcome = "silent"
            try:
                for kind, data in follow(task_id, timeout=self.timeout):
                    if kind == "token":
                        self.streaming.set()
                    elif kind == "done":
                        outcome = "told" if isinstance(data, dict) and data.get("interrupted") else "answered"
                    elif kind == "error":
                        outcome = "told"
            except TimeoutError:
                outcome = "silent"
            except Exception:
                outcome = "told"  # Redis down mid-read: the page shows the error
            self.outcomes.append(outcome)
            self._stop.wait(1.0)  # a person reads the answer before asking the next question


def restart_redis(services, down: float) -> None:
    """Stop the embedded Redis and start it again on the same port and data files (bench only)."""
    server = services._redis
    argv = server.args
    server.terminate()
    server.wait(timeout=30)
    time.sleep(down)
    services._redis = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def restart_postgres(services, down: float) -> None:
    """Fast-stop the embedded PostgreSQL (its sessions end, its data stays) and start it again on the same data
    folder, hence the same socket: the URL every process holds stays right (bench only)."""
    from kbchat.services import stop_embedded_postgres

    server = services._postgres
    stop_embedded_postgres(server)
    time.sleep(down)
    with server._lock:
        server.ensure_postgres_running()


def strike(mode: str, ingest: Supervised, chat: Supervised, services, down: float = 3) -> None:
    import psutil

    if mode == "main":
        os.killpg(ingest.process.pid, signal.SIGKILL)
    elif mode == "chat":
        os.killpg(chat.process.pid, signal.SIGKILL)
    elif mode == "child":
        children = psutil.Process(ingest.process.pid).children()
        busy = max(children, key=lambda c: c.cpu_percent(interval=0.2)) if children else None
        if busy is not None:
            busy.kill()
    elif mode == "redis":
        restart_redis(services, down)
    elif mode == "postgres":
        restart_postgres(services, down)


def run_round(number: int, mode: str, files, reference: dict[str, int], ask_kb: int, ingest, chat, services,
              deadline: float, chat_timeout: float, down: float = 3) -> dict:
    kb_id, ids = upload_all(f"chaos-{number}-{mode}", files)
    with Askers(ask_kb, chat_timeout) as askers:
        started = time.monotonic()
        while True:  # strike while something is under way
            if mode == "chat":
                ready = askers.streaming.wait(timeout=0.2)
            else:
                ready = any(d.status == "embedding" and d.progress_done > 0 for d in safely(lambda: documents(ids), []))
            if ready or time.monotonic() - started > 180:
                break
            time.sleep(0.1)
        askers.streaming.clear()
        struck = time.monotonic()
        if ready:
            strike(mode, ingest, chat, services, down)
        finished: dict[int, float] = {}
        while len(finished) < len(ids) and time.monotonic() - struck < deadline:
            for document in safely(lambda: documents(ids), []):
                if document.status in ("ready", "failed") and document.id not in finished:
                    finished[document.id] = time.monotonic() - struck
            time.sleep(0.5)
        time.sleep(2 if mode != "chat" else chat_timeout / 3)  # questions asked after the fault have their turn
    final = documents(ids)
    lost = [d.id for d in final if d.status != "ready"]
    stuck = [d.id for d in final if d.status not in ("ready", "failed")]
    duplicated = []
    for document in final:
        if document.status == "ready":
            rows, contiguous = chunk_rows(document.id)
            if rows != reference[document.filename] or rows != document.chunk_count or not contiguous:
                duplicated.append(document.id)
    outcomes = askers.outcomes
    return {
        "round": number, "mode": mode if ready else f"{mode} (nothing under way: no fault)", "documents": len(ids), "lost": len(lost), "duplicated": len(duplicated),
        "stuck": len(stuck), "recovered_s": max(finished.values()) if finished else None,
        "errors": [d.error for d in final if d.status == "failed"][:2],
        "asked": len(outcomes), "answered": outcomes.count("answered"), "told": outcomes.count("told"),
        "silent": outcomes.count("silent"), "restarts": ingest.restarts + chat.restarts,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("celery", "dramatiq"), default="celery")
    parser.add_argument("--rounds", type=int, default=5, help="rounds, the modes taken in turn (default 5)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    parser.add_argument("--docs", type=int, default=3, help="documents uploaded each round")
    parser.add_argument("--pages", type=int, default=80, help="pages per document")
    parser.add_argument("--reconcile-every", type=int, default=60, help="the scheduler's reconcile interval (s)")
    parser.add_argument("--logs", type=Path, help="copy the workers' and scheduler's logs here at the end")
    parser.add_argument("--down", type=float, default=5, help="seconds Redis or PostgreSQL stays stopped")
    parser.add_argument("--deadline", type=float, default=300, help="seconds after a fault before a document counts "
                        "as stuck")
    args = parser.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}")
    os.environ["KBCHAT_TASK_BACKEND"] = args.backend
    os.environ["KBCHAT_ANSWER_CACHE_TTL_SECONDS"] = "0"  # every question goes to a chat worker

    data_dir = Path(tempfile.mkdtemp(prefix="kbchat-bench-chaos-"))
    services = tgi = None
    children: list[Supervised] = []
    try:
        services, _ = start_services(data_dir)
        tgi = TGIServer(behaviour=Behaviour(answer=ANSWER, token_latency=0.05)).start()
        env = dict(os.environ, PYTHONUNBUFFERED="1", KBCHAT_TGI_URL=tgi.url,
                   KBCHAT_RECONCILE_INTERVAL_SECONDS=str(args.reconcile_every))
        ingest = Supervised("ingest", kbchat("worker", "--queues", "ingest,maintenance", "--concurrency", "2"), env,
                            data_dir / "ingest.log").start()
        chat = Supervised("chat", kbchat("worker", "--queues", "chat", "--concurrency", "2"), env,
                          data_dir / "chat.log").start()
        scheduler = Supervised("scheduler", kbchat("scheduler"), env, data_dir / "scheduler.log").start()
        children = [ingest, chat, scheduler]
        wait_for_workers(2)
        files = [(f"report-{i}.pdf", dense_pdf(args.pages + i)) for i in range(args.docs)]
        clean_started = time.monotonic()
        ask_kb, ids = upload_all("chaos-clean", files)
        while any(d.status not in ("ready", "failed") for d in documents(ids)):
            time.sleep(0.5)
        clean = documents(ids)
        reference = {d.filename: d.chunk_count for d in clean}
        print(f"chaos: backend {args.backend}, {args.docs} documents of {args.pages}+ pages, reconcile every "
              f"{args.reconcile_every} s; clean ingest {time.monotonic() - clean_started:.0f} s, "
              f"{sum(reference.values())} chunks, {[d.status for d in clean]}; load average {os.getloadavg()[0]:.1f}",
              flush=True)
        rows = []
        for number in range(1, args.rounds + 1):
            mode = modes[(number - 1) % len(modes)]
            row = run_round(number, mode, files, reference, ask_kb, ingest, chat, services, args.deadline,
                            chat_timeout=75, down=args.down)
            rows.append(row)
            recovered = "—" if row["recovered_s"] is None else f"{row['recovered_s']:.0f} s"
            print(f"  round {number:>2} {mode:<6} lost {row['lost']} duplicated {row['duplicated']} stuck "
                  f"{row['stuck']} last final {recovered:>6} after the fault · questions {row['asked']}: "
                  f"{row['answered']} answered, {row['told']} told why, {row['silent']} silent"
                  + (f" · failed: {row['errors']}" if row["errors"] else "")
                  + f" · load {os.getloadavg()[0]:.1f}", flush=True)
        if rows:
            longest = max((r["recovered_s"] or 0) for r in rows)
            print(f"total over {len(rows)} rounds: lost {sum(r['lost'] for r in rows)}, duplicated "
                  f"{sum(r['duplicated'] for r in rows)}, stuck {sum(r['stuck'] for r in rows)}, longest time to "
                  f"every document final {longest:.0f} s, questions {sum(r['asked'] for r in rows)} with "
                  f"{sum(r['silent'] for r in rows)} silent; worker restarts {rows[-1]['restarts']}")
            for mode in modes:
                mine = [r for r in rows if r["mode"] == mode]
                if mine:
                    print(f"  {mode:<8} {len(mine)} rounds: lost {sum(r['lost'] for r in mine)}, duplicated "
                          f"{sum(r['duplicated'] for r in mine)}, stuck {sum(r['stuck'] for r in mine)}, longest "
                          f"{max((r['recovered_s'] or 0) for r in mine):.0f} s, questions "
                          f"{sum(r['asked'] for r in mine)}: {sum(r['silent'] for r in mine)} silent")
            skipped = [r["round"] for r in rows if r["mode"] not in modes]
            if skipped:
                print(f"  rounds with nothing under way at the strike (no fault): {skipped}")
    finally:
        for child in reversed(children):
            child.stop()
        if tgi is not None:
            tgi.stop()
        if services is not None:
            services.stop()
        if args.logs is not None:
            args.logs.mkdir(parents=True, exist_ok=True)
            for log in data_dir.glob("*.log"):
                shutil.copy(log, args.logs / log.name)
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
