"""Soak benchmark: many small ingests and chats in a row on the real stack; do memory, Redis and connections stay
bounded?

    .venv/bin/python bench/soak.py [--backend celery] [--ingests 1000] [--chats 500] [--batch 20]
                                   [--max-seconds 1800] [--sample-every 100]

The same harness as ``bench/chaos.py`` (embedded PostgreSQL and Redis, the fake generation server, an ingest
worker with concurrency 2, a chat worker with concurrency 2 and the scheduler, restarted if they die) but no
faults: small text documents are uploaded ``--batch`` at a time into one knowledge base, each batch waited for,
while one asker asks questions one after another until ``--chats`` are answered. Every ``--sample-every`` ingests
it samples each worker's resident memory (main process and children), Redis's used memory and key count, and the
PostgreSQL connections open (``pg_stat_activity``). It stops at ``--max-seconds`` whatever is done, and prints:
RSS growth from the first sample to the last (target under 10 %), Redis memory and the keys that have no expiry
(what would grow without bound), the most connections seen against the engines' pool bound. Prints figures only;
never part of the tests. Removes everything it started.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from chaos import OPERATOR, QUESTIONS, Supervised, documents, kbchat, wait_for_workers  # noqa: E402
from ingest import start_services  # noqa: E402  (bench/ingest.py)

from tests.tgi_server import Behaviour, TGIServer  # noqa: E402

ANSWER = " ".join(f"word{i}" for i in range(20)) + " [1]."
TOPICS = ["harbour pilots", "glacier surveys", "district inspectors", "the committee on bridges", "river tolls",
          "lighthouse keepers", "grain stores", "the postal service"]


def small_document(number: int) -> tuple[str, bytes]:
    """A few paragraphs of distinct text (its sha256 unique, so never a duplicate upload): two or three chunks."""
    topic = TOPICS[number % len(TOPICS)]
    paragraphs = [
        f"Report {number} on {topic}. In year {1900 + number % 120} the section counted {number * 7 % 97} incidents "
        f"and met {number % 13 + 1} times. The inspectors of district {number % 31} reviewed {topic} in detail, "
        f"noting that the records of section {number % 17} were complete and that the accounts agreed."
        for _ in range(1)
    ]
    paragraphs += [f"Section {number}.{k}: the review of {topic} found the matter settled; item {number * k} was "
                   f"closed after {k + 2} meetings and the minutes were filed with the clerk." for k in range(1, 12)]
    return f"soak-{number:05d}.txt", "\n\n".join(paragraphs).encode()


def tree_rss(pid: int) -> int:
    """Resident memory of a process and its children, in bytes (0 if it is gone)."""
    import psutil

    try:
        process = psutil.Process(pid)
        return sum(p.memory_info().rss for p in [process, *process.children(recursive=True)])
    except psutil.Error:
        return 0


def redis_figures() -> tuple[int, int]:
    from infra.redis_client import get_redis

    r = get_redis()
    return int(r.info("memory")["used_memory"]), int(r.dbsize())


def keys_without_expiry() -> Counter:
    """Redis keys with no time-to-live, by their first two name parts (queues, fixed hashes, capped streams…)."""
    from infra.redis_client import get_redis

    r = get_redis()
    found: Counter = Counter()
    for key in r.scan_iter(count=1000):
        if r.ttl(key) == -1:
            name = key.decode() if isinstance(key, bytes) else str(key)
            found[":".join(name.split(":")[:2])[:60]] += 1
    return found


def pg_connections() -> int:
    from sqlalchemy import text

    from infra.database import session_scope

    with session_scope() as session:
        return int(session.scalar(text("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()")))


class Asker(threading.Thread):
    """Asks one question after another of a base until ``total`` have been asked or it is stopped."""

    def __init__(self, kb_id: int, total: int) -> None:
        super().__init__(daemon=True)
        self.kb_id, self.total = kb_id, total
        self.outcomes: Counter = Counter()
        self.stop = threading.Event()

    def run(self) -> None:
        from tasks.backend import get_backend
        from telemetry.answer_streams import follow
        from usecases.asking import ask

        for number in range(self.total):
            if self.stop.is_set():
                return
            outcome = "silent"
            try:
                task_id = ask(get_backend(), OPERATOR, kb_id=self.kb_id, question=QUESTIONS[number % 4]).task_id
                for kind, _ in follow(task_id, timeout=60):
                    if kind == "done":
                        outcome = "answered"
                    elif kind == "error":
                        outcome = "error"
            except TimeoutError:
                outcome = "silent"
            except Exception:
                outcome = "error"
            self.outcomes[outcome] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=("celery", "dramatiq"), default="celery")
    parser.add_argument("--ingests", type=int, default=1000)
    parser.add_argument("--chats", type=int, default=500)
    parser.add_argument("--batch", type=int, default=20, help="documents uploaded at once, then waited for")
    parser.add_argument("--max-seconds", type=float, default=1800, help="stop here, whatever is done")
    parser.add_argument("--sample-every", type=int, default=100, help="ingests between samples")
    args = parser.parse_args()
    os.environ["KBCHAT_TASK_BACKEND"] = args.backend
    os.environ["KBCHAT_ANSWER_CACHE_TTL_SECONDS"] = "0"  # every question goes to a chat worker

    data_dir = Path(tempfile.mkdtemp(prefix="kbchat-bench-soak-"))
    services = tgi = asker = None
    children: list[Supervised] = []
    try:
        services, _ = start_services(data_dir)
        tgi = TGIServer(behaviour=Behaviour(answer=ANSWER, token_latency=0.01)).start()
        env = dict(os.environ, PYTHONUNBUFFERED="1", KBCHAT_TGI_URL=tgi.url)
        ingest = Supervised("ingest", kbchat("worker", "--queues", "ingest,maintenance", "--concurrency", "2"), env,
                            data_dir / "ingest.log").start()
        chat = Supervised("chat", kbchat("worker", "--queues", "chat", "--concurrency", "2"), env,
                          data_dir / "chat.log").start()
        scheduler = Supervised("scheduler", kbchat("scheduler"), env, data_dir / "scheduler.log").start()
        children = [ingest, chat, scheduler]
        wait_for_workers(2)
        from tasks.backend import get_backend
        from usecases.documents import upload_files
        from usecases.knowledge_bases import create_kb

        kb_id, _ = create_kb(OPERATOR, name="soak")
        started = time.monotonic()
        print(f"soak: backend {args.backend}, {args.ingests} ingests in batches of {args.batch}, {args.chats} chats, "
              f"at most {args.max_seconds:.0f} s; load average {os.getloadavg()[0]:.1f}", flush=True)
        samples: list[dict] = []
        statuses: Counter = Counter()
        done = 0
        while done < args.ingests and time.monotonic() - started < args.max_seconds:
            count = min(args.batch, args.ingests - done)
            files = [small_document(done + i) for i in range(count)]
            outcomes = upload_files(get_backend(), OPERATOR, kb_id=kb_id, files=files)
            ids = [o.document_id for o in outcomes if o.document_id is not None]
            while time.monotonic() - started < args.max_seconds:
                batch = documents(ids)
                if all(d.status in ("ready", "failed") for d in batch):
                    break
                time.sleep(0.2)
            statuses.update(d.status for d in documents(ids))
            done += count
            if asker is None:  # the base has documents now: questions have something to find
                asker = Asker(kb_id, args.chats)
                asker.start()
            if done % args.sample_every == 0 or done >= args.ingests:
                memory, keys = redis_figures()
                sample = {"ingests": done, "s": time.monotonic() - started, "ingest_rss": tree_rss(ingest.process.pid),
                          "chat_rss": tree_rss(chat.process.pid), "redis": memory, "keys": keys,
                          "pg": pg_connections(), "chats": sum(asker.outcomes.values()),
                          "load": os.getloadavg()[0]}
                samples.append(sample)
                print(f"  {done:>5} ingests {sample['s']:>5.0f} s · RSS ingest worker {sample['ingest_rss'] / 1e6:.0f} MB,"
                      f" chat worker {sample['chat_rss'] / 1e6:.0f} MB · Redis {memory / 1e6:.1f} MB, {keys} keys · "
                      f"PostgreSQL connections {sample['pg']} · chats {sample['chats']} · load {sample['load']:.1f}",
                      flush=True)
        if asker is not None:
            asker.join(timeout=max(0.0, args.max_seconds - (time.monotonic() - started)))
            asker.stop.set()
            asker.join(timeout=70)
        elapsed = time.monotonic() - started
        chats = dict(asker.outcomes) if asker else {}
        print(f"done in {elapsed:.0f} s: {done} ingests ({dict(statuses)}), chats {chats}; worker restarts "
              f"{ingest.restarts + chat.restarts}", flush=True)
        if len(samples) >= 2:
            first, last = samples[0], samples[-1]
            for name in ("ingest_rss", "chat_rss"):
                growth = (last[name] - first[name]) / first[name] * 100 if first[name] else float("nan")
                print(f"  {name.replace('_rss', ' worker')} RSS {first[name] / 1e6:.0f} MB at {first['ingests']} "
                      f"ingests → {last[name] / 1e6:.0f} MB at {last['ingests']}: {growth:+.1f} % (target < 10 %)")
            print(f"  Redis used memory {first['redis'] / 1e6:.1f} → {last['redis'] / 1e6:.1f} MB, keys "
                  f"{first['keys']} → {last['keys']}")
        print(f"  PostgreSQL connections: at most {max((s['pg'] for s in samples), default=0)} "
              f"(each process's engine holds at most 5 + 10 overflow; samples "
              f"{[s['pg'] for s in samples]})")
        print(f"  Redis keys without expiry: {dict(keys_without_expiry().most_common(12))}", flush=True)
    finally:
        if asker is not None:
            asker.stop.set()
        for child in reversed(children):
            child.stop()
        if tgi is not None:
            tgi.stop()
        if services is not None:
            services.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
