"""Monitoring reads and actions against real Redis, PostgreSQL and workers, on Celery and on Dramatiq: exact queue
depth from the brokers' own keys, workers going offline, current tasks, retries, stalled documents, the
Prometheus exporter, and bounded retention of everything the task layer writes to Redis."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
import uuid

import pytest

from tests.conftest import (
    OPERATOR,
    _reset_caches,
    backdate_document,
    start_worker,
    stop_worker,
    stop_worker_gracefully,
    wait_until,
)
from tests.monitoring_support import (
    failed_chat_answer,
    free_port,
    ingest_ready,
    scrape,
    start_exporter,
    wait_for_state,
)

pytestmark = pytest.mark.integration


# --- queue depth -------------------------------------------------------------------------------------------------


@pytest.fixture
def private_queue(backend, monkeypatch):
    """A queue no worker consumes: tasks enqueued through the real client land there and stay put; purged after."""
    from tasks import celery_app, registry
    from tasks.backend import get_backend

    name = f"mon-test-{uuid.uuid4().hex[:8]}"
    monkeypatch.setattr(celery_app, "spec", lambda task: dataclasses.replace(registry.spec(task), queue=name))
    if backend == "dramatiq":
        broker = get_backend().broker
        for actor_name in broker.get_declared_actors():
            monkeypatch.setattr(broker.get_actor(actor_name), "queue_name", name)
    yield name
    _purge(backend, name)


def _purge(backend: str, queue: str) -> None:
    from infra.redis_client import get_redis

    if backend == "dramatiq":
        from tasks.backend import get_backend

        get_backend().broker.flush(queue)
        return
    from kombu.transport.redis import PRIORITY_STEPS, Channel

    keys = [f"{queue}{Channel.sep}{step}" if step else queue for step in PRIORITY_STEPS]
    get_redis().delete(*keys, f"_kombu.binding.{queue}")


def _depth(backend: str, queue: str):
    from tasks.monitoring import queue_depths

    (depth,) = queue_depths(backend, [queue])
    return depth


def test_queue_depth_is_exact(backend, private_queue):
    """Tasks enqueued with no worker consuming their queue, then taken by a consumer that does not acknowledge."""
    if backend == "celery":
        _celery_depth_is_exact(private_queue)
    else:
        _dramatiq_depth_is_exact(private_queue)


def _celery_depth_is_exact(private_queue: str) -> None:
    """The queue's list plus its priority sub-queues; the unacked hash for messages a consumer holds."""
    from tasks.backend import get_backend
    from tests.conftest import enqueue

    app = get_backend().app
    for _ in range(5):
        enqueue("maintenance.reconcile")
    for priority in (4, 9):  # kombu files these under the priority sub-queues "<queue>\x06\x163" and "…9"
        app.send_task("maintenance.reconcile", queue=private_queue, priority=priority)
    depth = _depth("celery", private_queue)
    assert (depth.waiting, depth.reserved, depth.pending) == (7, 0, 7)
    assert depth.by_priority == {0: 5, 3: 1, 6: 0, 9: 1}

    # A consumer that takes a message without acknowledging it: the message moves to the unacked hash.
    with app.connection_for_read() as connection:
        channel = connection.default_channel
        message = channel.basic_get(private_queue, no_ack=False)
        assert message is not None
        depth = _depth("celery", private_queue)
        assert (depth.waiting, depth.reserved) == (6, 1)
        channel.basic_ack(message.delivery_tag)
    depth = _depth("celery", private_queue)
    assert (depth.waiting, depth.reserved) == (6, 0)


def _dramatiq_depth_is_exact(private_queue: str) -> None:
    """Waiting, taken by a consumer, delayed (a retry's backoff) and dead-lettered, each apart."""
    from tasks.backend import get_backend
    from tests.conftest import enqueue

    broker = get_backend().broker
    for _ in range(6):
        enqueue("maintenance.reconcile")
    broker.enqueue(broker.get_actor("maintenance.reconcile").message(), delay=60_000)  # as a retry waiting out its backoff
    depth = _depth("dramatiq", private_queue)
    assert (depth.waiting, depth.reserved, depth.delayed, depth.dead) == (6, 0, 1, 0)

    consumer = broker.consume(private_queue, prefetch=2, timeout=100)
    try:
        taken = [next(consumer) for _ in range(2)]
        assert all(m is not None for m in taken)
        depth = _depth("dramatiq", private_queue)
        assert (depth.waiting, depth.reserved) == (4, 2)
        consumer.nack(taken[0])  # dead-lettered
        consumer.ack(taken[1])
    finally:
        consumer.close()
    depth = _depth("dramatiq", private_queue)
    assert (depth.waiting, depth.reserved, depth.delayed, depth.dead) == (4, 0, 1, 1)
    assert depth.pending == 5


def test_dramatiq_namespace_matches_the_broker(services):
    from tasks.backend import make_backend
    from tasks.queues import DRAMATIQ_NAMESPACE

    backend = make_backend("dramatiq", services["redis_url"])
    assert backend.broker.namespace == DRAMATIQ_NAMESPACE
    backend.close()


def test_queue_history_is_sampled_once_per_interval(backend, private_queue):
    from infra.redis_client import get_redis
    from tasks import monitoring
    from telemetry import queue_history

    get_redis().delete(queue_history.HISTORY_LOCK_KEY)
    before = len(queue_history.queue_history(3600))
    assert monitoring.maybe_sample_queues() is True
    assert monitoring.maybe_sample_queues() is False  # another process sampled within the interval
    history = queue_history.queue_history(3600)
    assert len(history) == before + 1
    latest = history[-1]
    assert latest["backend"] == backend
    assert {f"{q}.{s}" for q in ("ingest", "chat", "maintenance") for s in ("waiting", "reserved", "delayed", "dead")
            } <= set(latest)
    assert time.time() - latest["ts"] < 10


# --- workers -----------------------------------------------------------------------------------------------------


def _row(worker_id: str) -> dict | None:
    from tasks.monitoring import workers

    return next((w for w in workers() if w["id"] == worker_id), None)


def _worker_id_of(handle) -> str:
    from telemetry import events
    from tests.conftest import _pid_in_tree

    return wait_until(
        lambda: next((w["id"] for w in events.live_workers()
                      if w.get("backend") == handle.backend and _pid_in_tree(handle.process.pid, int(w.get("pid", 0)))),
                     None),
        30, "the worker's heartbeat")


def test_heartbeat_expiry_turns_a_worker_offline_and_a_clean_stop_deregisters(backend, services, tmp_path):
    ttl = 2
    env = {"KBCHAT_HEARTBEAT_TTL_SECONDS": str(ttl), "KBCHAT_HEARTBEAT_INTERVAL_SECONDS": "1"}
    killed = start_worker(backend, tmp_path / "killed.log", queues="maintenance", extra_env=env)
    try:
        worker_id = _worker_id_of(killed)
        row = _row(worker_id)
        assert row["status"] == "online" and row["backend"] == backend
        assert row["host"] and row["pid"] > 0 and row["queues"] == "maintenance" and row["concurrency"] == 1
        time.sleep(ttl + 1)  # alive: it keeps renewing its heartbeat past the TTL
        assert _row(worker_id)["status"] == "online"
        os.killpg(killed.process.pid, signal.SIGKILL)
        killed.process.wait(timeout=10)
        gone = time.monotonic()
        row = wait_until(lambda: (r := _row(worker_id)) and r["status"] == "offline" and r, ttl + 5,
                         "the killed worker to show offline", interval=0.1)
        assert time.monotonic() - gone <= ttl + 2
        assert row["host"] and row["pid"] > 0 and row["queues"] == "maintenance"  # still known, from the registry
        assert time.time() - row["last_heartbeat"] < ttl + 10
    finally:
        stop_worker(killed)

    stopped = start_worker(backend, tmp_path / "stopped.log", queues="maintenance", extra_env=env)
    worker_id = _worker_id_of(stopped)
    assert _row(worker_id)["status"] == "online"
    stop_worker_gracefully(stopped)
    assert _row(worker_id) is None, "a clean stop takes the worker off the page: it is not lost"


def test_worker_shows_the_task_it_is_running_then_counts_it(worker, kb):
    """The worker's ingest is held on a row lock, so it is certainly running while we look."""
    from sqlalchemy import text

    from db.repositories import documents as document_repo
    from infra.database import get_engine, session_scope
    from rag.library import store_upload
    from tests.conftest import enqueue

    worker_id = _worker_id_of(worker)
    processed_before = _row(worker_id)["processed"]
    task_id = str(uuid.uuid4())
    with session_scope() as session:
        outcome = store_upload(session=session, kb_id=kb[0], filename="held.txt",
                               data=b"The ferry timetable changes in October.\n")
        document_repo.set_task(session=session, document_id=outcome.document_id, task_id=task_id)
    with get_engine().connect() as holder:
        transaction = holder.begin()
        holder.execute(text("SELECT id FROM documents WHERE id = :id FOR UPDATE"), {"id": outcome.document_id})
        enqueue("ingest.document", outcome.document_id, task_id=task_id)  # what enqueue_ingest does, lock held
        try:
            row = wait_until(lambda: (r := _row(worker_id)) and task_id in {t["id"] for t in r["current"]} and r,
                             60, "the worker to show its current task")
            (current,) = [t for t in row["current"] if t["id"] == task_id]
            assert current["name"] == "ingest.document" and time.time() - current["started_at"] < 60
        finally:
            transaction.rollback()
    wait_for_state(task_id, "succeeded")
    row = wait_until(lambda: (r := _row(worker_id)) and task_id not in {t["id"] for t in r["current"]} and r, 10,
                     "the current task to clear")
    # Both backends count the task before they clear it from the worker's current tasks.
    assert row["processed"] >= processed_before + 1


# --- tasks, failures and retries -----------------------------------------------------------------------------------


def test_counts_throughput_and_run_times_come_from_real_events(worker, kb):
    from tasks import monitoring
    from telemetry import events

    before = events.task_counts(3600).get("ingest.document", {}).get("succeeded", 0)
    ingest_ready(kb[0], "counts.txt", "Lighthouses along the coast were automated in the 1980s.\n")
    counts = wait_until(lambda: (c := events.task_counts(3600)).get("ingest.document", {}).get("succeeded", 0)
                        > before and c, 10, "the success to be counted")
    ingest = counts["ingest.document"]
    assert ingest["queued"] >= 1 and ingest["started"] >= ingest["succeeded"] >= before + 1
    assert counts["all"]["succeeded"] >= ingest["succeeded"]
    assert events.task_counts(24 * 3600)["ingest.document"]["succeeded"] >= ingest["succeeded"]
    points = monitoring.throughput(3600)
    assert len(points) == 60 and sum(p["succeeded"] for p in points) >= 1
    runtimes = {row["task"]: row for row in monitoring.runtime_percentiles(3600)}
    row = runtimes["ingest.document"]
    assert row["runs"] >= 1 and 0 <= row["p50"] <= row["p95"] <= row["max"]


def test_a_failed_task_is_listed_with_its_traceback_and_a_retry_reruns_it(worker, kb):
    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope
    from tasks import monitoring
    from tasks.backend import get_backend
    from telemetry import events
    from usecases import fixes

    kb_id = kb[0]
    ingest_ready(kb_id, "ferries.txt", "The harbour ferry leaves every hour from pier four.\n")
    question = f"When does the harbour ferry leave? {uuid.uuid4().hex[:6]}"
    task_id, conversation_id, refusal = failed_chat_answer(kb_id, question)
    try:
        failure = next(f for f in monitoring.recent_failures() if f["task_id"] == task_id)
        assert failure["name"] == "chat.answer" and failure["queue"] == "chat"
        assert "refused (test fault)" in failure["error"]
        assert "Traceback (most recent call last)" in failure["traceback"]
        assert failure["retryable"] and failure["retried_as"] is None
        assert events.decode_args(failure["args"]) == [kb_id, question, conversation_id]
    finally:
        refusal.remove()  # the cause is fixed

    new_id = fixes.retry_task(get_backend(), OPERATOR, task_id)
    assert new_id != task_id
    assert events.get_task(task_id)["retried_as"] == new_id
    record = wait_for_state(new_id, "succeeded")
    assert record["retry_of"] == task_id and record["name"] == "chat.answer"
    with session_scope() as session:
        message = conversation_repo.find_by_task(session=session, task_id=new_id)
        assert message is not None and message.conversation_id == conversation_id


def test_retry_of_an_expired_task_says_so(services):
    from tasks.backend import get_backend
    from usecases import fixes

    with pytest.raises(LookupError, match="expired"):
        fixes.retry_task(get_backend(), OPERATOR, f"gone-{uuid.uuid4()}")


def test_retry_all_failed_ingests_requeues_them_through_their_documents(worker, kb):
    from db.repositories import documents as document_repo
    from infra.database import session_scope
    from tasks.backend import get_backend
    from tests.conftest import upload, wait_for_documents
    from usecases import fixes

    outcome = upload(kb[0], "corrupt.pdf", b"%PDF-1.4 garbage")  # a damaged PDF: fails for good
    first = wait_for_documents([outcome.document_id])[outcome.document_id]
    assert first.status == "failed"
    retried = fixes.retry_failed_ingests(get_backend(), OPERATOR)
    assert outcome.document_id in retried
    with session_scope() as session:
        documents = {d.id: d for d in document_repo.list_by_ids(session=session, document_ids=retried)}
    assert documents[outcome.document_id].task_id != first.task_id  # a new task, recorded on the document
    again = wait_for_documents(retried, timeout=180)
    assert again[outcome.document_id].status == "failed" and again[outcome.document_id].error
    wait_for_state(documents[outcome.document_id].task_id, "succeeded")  # the task ran (and reported the failure)


def test_stalled_documents_are_listed_with_age_and_can_be_requeued(worker, kb):
    from infra.database import session_scope
    from rag.library import store_upload
    from tasks import monitoring
    from tasks.backend import get_backend
    from tests.conftest import wait_for_documents
    from usecases import fixes

    with session_scope() as session:  # stored but never enqueued: as if its queue message was lost
        outcome = store_upload(session=session, kb_id=kb[0], filename="lost.txt",
                               data=b"The tram depot closed for repairs in spring.\n")
    backdate_document(outcome.document_id, 3600)
    stalled = {row["id"]: row for row in monitoring.stalled_documents(600)}
    row = stalled[outcome.document_id]
    assert row["status"] == "queued" and row["kb"] == kb[1] and row["filename"] == "lost.txt"
    assert row["task_state"] == "none" and time.time() - row["updated_at"].timestamp() >= 3500
    assert outcome.document_id not in {r["id"] for r in monitoring.stalled_documents(7200)}

    (task_id,) = fixes.requeue_documents(get_backend(), OPERATOR, [outcome.document_id])
    assert wait_for_documents([outcome.document_id])[outcome.document_id].status == "ready"
    wait_for_state(task_id, "succeeded")
    with pytest.raises(LookupError):
        fixes.requeue_documents(get_backend(), OPERATOR, [10**12])


# --- the Prometheus exporter ---------------------------------------------------------------------------------------


def test_exporter_output_parses_as_prometheus_text(worker, kb, tmp_path):
    from prometheus_client.parser import text_string_to_metric_families

    from tests.conftest import enqueue

    port = free_port()
    exporter = start_exporter(port, tmp_path / "metrics.log")
    try:
        ingest_ready(kb[0], "exported.txt", "The cable car reopened after the winter inspection.\n")
        answer = enqueue("chat.answer", kb[0], "When did the cable car reopen?", None)
        wait_for_state(answer, "succeeded")
        families = {f.name: f for f in text_string_to_metric_families(scrape(port))}
    finally:
        exporter.terminate()
        exporter.wait(timeout=10)
    assert exporter.returncode == 0

    def samples(name: str, suffix: str = "") -> dict[tuple, float]:
        return {tuple(sorted(s.labels.items())): s.value for s in families[name].samples if s.name == name + suffix}

    assert samples("kbchat_up") == {(): 1.0}
    depth = samples("kbchat_queue_messages")
    assert {dict(k)["queue"] for k in depth} == {"ingest", "chat", "maintenance"}
    assert {dict(k)["state"] for k in depth} == {"waiting", "reserved", "delayed", "dead"}
    assert samples("kbchat_workers")[(("status", "online"),)] >= 1
    events_total = samples("kbchat_task_events", "_total")
    assert events_total[(("state", "succeeded"), ("task", "ingest.document"))] >= 1
    assert events_total[(("state", "succeeded"), ("task", "chat.answer"))] >= 1
    runtimes = samples("kbchat_task_runtime_seconds", "_count")
    assert runtimes[(("state", "succeeded"), ("task", "ingest.document"))] >= 1
    assert families["kbchat_task_runtime_seconds"].type == "histogram"
    assert samples("kbchat_chat_time_to_first_token_seconds", "_count")[()] >= 1
    assert samples("kbchat_ingest_pages", "_total")[()] >= 1
    assert samples("kbchat_ingest_pages_per_second")[()] > 0
    assert () in samples("kbchat_empty_retrievals", "_total")
    assert samples("kbchat_redis_result_keys")[(("kind", "kbchat"),)] >= 1


# --- bounded retention ---------------------------------------------------------------------------------------------

# kbchat keys that live without a TTL, and what bounds each.
CAPPED = {
    "kbchat:events": "stream, MAXLEN events_max_len",
    "kbchat:retrieval:empty": "stream, MAXLEN events_max_len",
    "kbchat:retrieval:empty_count": "hash, one field per knowledge base",
    "kbchat:queues:history": "stream, MAXLEN a day of samples",
    "kbchat:workers:seen": "sorted set, pruned by age and count",
    "kbchat:workers:info": "hash, pruned with the sorted set",
}


def test_what_the_task_layer_writes_to_redis_is_bounded(worker, kb, monkeypatch):
    """A week of traffic must not grow Redis without bound: every key expires or is capped."""
    from infra.redis_client import get_redis
    from tasks.queues import DRAMATIQ_NAMESPACE
    from telemetry import events

    ingest_ready(kb[0], "retention.txt", "The observatory dome was repainted white.\n")
    r = get_redis()
    for key in r.scan_iter("kbchat:*", count=1000):
        if r.ttl(key) == -1:
            assert key in CAPPED, f"{key} ({r.type(key)}) never expires"
    for pattern in ("celery-task-meta-*", f"{DRAMATIQ_NAMESPACE}-results:*", "kbchat:stats:*",
                    "kbchat:task:*", "kbchat:worker:*"):
        for key in r.scan_iter(pattern, count=1000):
            assert r.ttl(key) > 0, f"{key} has no expiry"
    stats = list(r.scan_iter("kbchat:stats:*", count=1000))
    assert stats and all(0 < r.ttl(key) <= events.STATS_TTL_SECONDS for key in stats)

    # Streams are capped: with a small cap, many events leave about the cap (trimming is approximate).
    monkeypatch.setenv("KBCHAT_EVENTS_MAX_LEN", "200")
    _reset_caches()
    try:
        for i in range(1500):
            events.record(f"retention-{i}", events.SUCCEEDED, name="retention.test", runtime=0.01)
        assert r.xlen(events.EVENTS_KEY) <= 200 + 100
    finally:
        monkeypatch.delenv("KBCHAT_EVENTS_MAX_LEN")
        _reset_caches()
        r.delete(*[events.TASK_KEY.format(f"retention-{i}") for i in range(1500)])

    # The registry of workers forgets those not seen for a day, and never holds more than WORKERS_SEEN_MAX.
    now = time.time()
    r.zadd(events.WORKERS_SEEN_KEY, {f"ancient-{i}": now - 2 * 86400 for i in range(5)})
    r.zadd(events.WORKERS_SEEN_KEY, {f"recent-{i}": now - 60 - i for i in range(events.WORKERS_SEEN_MAX + 50)})
    r.hset(events.WORKERS_INFO_KEY, mapping={f"ancient-{i}": json.dumps({}) for i in range(5)})
    heartbeat = events.Heartbeat("retention-test", {"backend": "test"})
    heartbeat.beat()
    try:
        seen = r.zrange(events.WORKERS_SEEN_KEY, 0, -1)
        assert len(seen) <= events.WORKERS_SEEN_MAX and "retention-test" in seen
        assert not any(w.startswith("ancient-") for w in seen)
        assert not any(w.startswith("ancient-") for w in r.hkeys(events.WORKERS_INFO_KEY))
    finally:
        r.delete(events.WORKER_KEY.format("retention-test"))
        r.zrem(events.WORKERS_SEEN_KEY, "retention-test", *[f"recent-{i}" for i in range(events.WORKERS_SEEN_MAX + 50)])
        r.hdel(events.WORKERS_INFO_KEY, "retention-test", *[f"recent-{i}" for i in range(events.WORKERS_SEEN_MAX + 50)])


def test_an_answer_whose_chat_worker_died_ends_with_a_notice_not_silence(services):
    """A chat worker killed mid-answer (between two heartbeats): the reconciler's pass ends the answer's stream with
    an error its reader shows at once, and the task record says failed; an answer of a live worker is left alone."""
    from rag import maintenance
    from telemetry import answer_streams, events

    dead, alive = f"ghost-{uuid.uuid4().hex[:6]}@gone", f"alive-{uuid.uuid4().hex[:6]}@here"
    lost_id, live_id = str(uuid.uuid4()), str(uuid.uuid4())
    events.get_redis().zadd(events.WORKERS_SEEN_KEY, {dead: time.time() - 60, alive: time.time()})
    events.get_redis().hset(events.WORKER_KEY.format(alive), mapping={"backend": "test"})
    events.get_redis().expire(events.WORKER_KEY.format(alive), 60)
    try:
        events.record_started(lost_id, name="chat.answer", worker=dead)
        events.record_started(live_id, name="chat.answer", worker=alive)
        told = maintenance.end_lost_answers(
            lost_tasks=lambda: events.lost_tasks(("chat.answer",)), alive=events.alive_workers,
            end_stream=answer_streams.end_with_error,
            record_failed=lambda task_id, worker, error: events.record(task_id, events.FAILED, error=error,
                                                                       worker=worker),
            confirm_seconds=0,
        )
        assert told == [lost_id]
        kind, message = next(answer_streams.follow(lost_id, timeout=5))
        assert kind == "error" and "stopped" in message and "Ask it again" in message
        assert events.get_task(lost_id)["state"] == "failed"
        assert events.get_task(live_id)["state"] == "started"
        assert events.lost_tasks(("chat.answer",)) == [], "told once"
    finally:
        events.forget_workers([dead, alive])
