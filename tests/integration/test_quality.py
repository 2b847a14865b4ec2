"""Scheduled quality and upkeep jobs on real services: retrieval evaluation (and ``kbchat eval`` giving the same
numbers for the same seed), the consistency check (``kbchat check`` and the job that fixes), the empty-retrieval
and retrieval-drop alerts through a local webhook receiver, and cleanup.

Jobs run through real workers where the point is the job as scheduled; the finer points of alert delivery
(retries, once per period, no secret in logs) are checked in this process against the same services.
"""

from __future__ import annotations

import json
import logging
import os
import time
import uuid
from collections.abc import Iterator

import pytest
from sqlalchemy import text

from tests.conftest import (
    DEMO,
    OPERATOR,
    _reset_caches,
    backdate_document,
    run_cli,
    start_worker,
    stop_worker,
    upload,
    wait_for_documents,
)
from tests.webhook_receiver import WebhookReceiver

pytestmark = pytest.mark.integration

SEED, SAMPLE = 7, 12


def _sql(statement: str, **params) -> list:
    from infra.database import session_scope

    with session_scope() as session:
        result = session.execute(text(statement), params)
        return list(result) if result.returns_rows else []


def _sql_bypassing_foreign_keys(statement: str, **params) -> None:
    """Write what the foreign keys forbid (as a bad restore or a manual edit would leave it)."""
    from infra.database import session_scope

    with session_scope() as session:
        session.execute(text("SET LOCAL session_replication_role = replica"))
        session.execute(text(statement), params)


def _ingest_demo(kb_id: int, count: int = 3) -> list[int]:
    ids = [upload(kb_id, path.name, path.read_bytes()).document_id for path in sorted(DEMO.glob("*.pdf"))[:count]]
    documents = wait_for_documents(ids, timeout=240)
    assert all(d.status == "ready" for d in documents.values()), [(d.filename, d.error) for d in documents.values()]
    return ids


def _run(run_id: int):
    from db.repositories import evaluations as eval_repo
    from infra.database import session_scope

    with session_scope() as session:
        run = eval_repo.get(session=session, run_id=run_id)
        session.expunge(run)
        return run


class _Env:
    """Set KBCHAT_* variables in this process (settings re-read), restored afterwards."""

    def __init__(self) -> None:
        self.saved: dict[str, str | None] = {}

    def set(self, **values: str) -> None:
        for key, value in values.items():
            self.saved.setdefault(key, os.environ.get(key))
            os.environ[key] = value
        _reset_caches()

    def restore(self) -> None:
        for key, value in self.saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset_caches()


@pytest.fixture
def env() -> Iterator[_Env]:
    changes = _Env()
    yield changes
    changes.restore()


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    hook = WebhookReceiver().start()
    yield hook
    hook.stop()


# --- retrieval evaluation ---------------------------------------------------------------------------------------


def test_scheduled_evaluation_records_a_run_and_kbchat_eval_gives_the_same_numbers(worker, kb):
    """The job samples chunks over documents, asks a question of each, ranks them with the production retrieval
    and stores metrics with per-question details; the CLI with the same seed samples and scores the same."""
    from telemetry.events import wait_for_result
    from tests.conftest import enqueue

    kb_id, kb_name = kb
    documents = _ingest_demo(kb_id)
    result = wait_for_result(enqueue("maintenance.evaluate", kb_id, SEED, SAMPLE, "scheduled"), timeout=240)
    assert result["status"] == "succeeded" and result["kb"] == kb_name, result
    assert result["questions"] == SAMPLE and result["question_mode"] == "extractive"  # no LLM on this worker

    run = _run(result["run_id"])
    assert (run.trigger, run.status, run.seed, run.sample_size) == ("scheduled", "succeeded", SEED, SAMPLE)
    assert len(run.details) == SAMPLE
    assert {d["document_id"] for d in run.details} == set(documents), "stratified: every document is sampled"
    for detail in run.details:
        assert detail["question"].endswith("?") and detail["page"] >= 1
        assert detail["rank"] is None or 1 <= detail["rank"] <= 10
    ranks = [d["rank"] for d in run.details]
    assert run.hit_at_1 == pytest.approx(sum(r == 1 for r in ranks) / SAMPLE)
    assert run.hit_at_5 == pytest.approx(sum(r is not None and r <= 5 for r in ranks) / SAMPLE)
    assert run.mrr == pytest.approx(sum(1 / r for r in ranks if r) / SAMPLE)
    assert 0 <= run.hit_at_1 <= run.hit_at_5 <= run.hit_at_10 <= 1
    assert run.hit_at_10 >= 0.5, run.details  # questions made from a chunk's own key phrases mostly find it

    proc = run_cli("eval", "--kb", kb_name, "--seed", str(SEED), "--sample", str(SAMPLE), "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cli = json.loads(proc.stdout)
    assert cli["run_id"] != run.id and cli["trigger"] == "cli"
    for key in ("hit_at_1", "hit_at_5", "hit_at_10", "mrr", "questions"):
        assert cli[key] == pytest.approx(getattr(run, key)), key
    assert [(d["chunk_id"], d["question"], d["rank"]) for d in cli["details"]] == [
        (d["chunk_id"], d["question"], d["rank"]) for d in run.details
    ]

    other = run_cli("eval", "--kb", kb_name, "--seed", str(SEED + 1), "--sample", str(SAMPLE), "--json")
    assert other.returncode == 0, other.stderr[-3000:]
    assert {d["chunk_id"] for d in json.loads(other.stdout)["details"]} != {d["chunk_id"] for d in run.details}

    human = run_cli("eval", "--kb", kb_name, "--seed", str(SEED), "--sample", "4")
    assert human.returncode == 0 and "hit@5" in human.stdout and "MRR" in human.stdout, human.stdout + human.stderr


def test_nightly_job_without_a_base_queues_one_evaluation_per_knowledge_base(services, kb):
    from db.repositories import knowledge_bases as kb_repo
    from infra.database import session_scope
    from tests.conftest import RecordingQueue
    from usecases import upkeep

    queue = RecordingQueue()
    result = upkeep.evaluate(queue, OPERATOR)  # what maintenance.evaluate does without a base
    with session_scope() as session:
        ids = {k.id for k in kb_repo.list_knowledge_bases(session=session)}
    assert {q[1] for q in queue.sent} == ids and kb[0] in ids
    # (kb_id, seed, sample, trigger, actor id): the nightly job acts as the operator, who has no user id
    assert all(q[0] == "maintenance.evaluate" and q[2:] == (None, None, "scheduled", None) for q in queue.sent)
    assert set(result["enqueued"]) == {str(i) for i in ids}


def test_evaluation_questions_come_from_the_llm_and_fall_back_without_it(services, kb, env):
    """With a generation server the model writes each question; when it is down the key-phrase question is used."""
    from infra.database import session_scope
    from rag.evaluation import evaluate_kb
    from rag.library import store_upload
    from tests.tgi_server import TGIServer

    kb_id, _ = kb
    # Chunks stored by hand (no worker needed): three passages on different subjects.
    passages = [
        "The ferry timetable changes in October. Boats leave the north pier at seven and return from the island "
        "at noon, except on Sundays when the harbour master closes the pier for maintenance of the ramps.",
        "Glacier surveys resumed in spring. The survey team measured a retreat of forty metres at the snout and "
        "installed two new stakes to follow the ice through the summer melt season in the upper valley.",
        "Signal boxes on the coastal line were rewired over the winter. Trains ran at reduced speed for a week "
        "while engineers tested every interlocking between the junction and the terminus station.",
    ]
    with session_scope() as session:
        for number, passage in enumerate(passages):
            store_upload(session=session, kb_id=kb_id, filename=f"note-{number}.txt", data=passage.encode())
    from rag import ingestion

    for (document_id,) in _sql("SELECT id FROM documents WHERE kb_id = :kb ORDER BY id", kb=kb_id):
        assert ingestion.ingest_document(document_id).status == "ready"

    def question(body: dict) -> str:
        passage = body["messages"][-1]["content"]
        topic = "ferry" if "ferry" in passage else "glacier" if "Glacier" in passage else "signal boxes"
        return f"What happened with the {topic}?"

    with TGIServer() as tgi:
        tgi.behaviour.responder = question
        env.set(KBCHAT_TGI_URL=tgi.url, KBCHAT_LLM_RETRIES="0")
        result = evaluate_kb(kb_id, trigger="cli", seed=3, sample_size=3)
        asked = [r for r in tgi.chat_requests() if "evaluation questions" in r["messages"][0]["content"]]
    assert result["question_mode"] == "llm" and result["questions"] == 3
    assert len(asked) == 3 and all("<passage>" in r["messages"][-1]["content"] for r in asked)
    details = _run(result["run_id"]).details
    assert {d["question"] for d in details} == {"What happened with the ferry?", "What happened with the glacier?",
                                                "What happened with the signal boxes?"}
    assert all(d["how"] == "llm" and d["rank"] == 1 for d in details), details

    # The server is gone now: questions fall back to key phrases, the run still completes.
    fallback = evaluate_kb(kb_id, trigger="cli", seed=3, sample_size=3)
    assert fallback["question_mode"] == "extractive" and fallback["questions"] == 3
    assert all(d["question"].startswith("What about ") for d in _run(fallback["run_id"]).details)


def test_a_retrieval_drop_raises_one_alert_to_the_webhook(services, kb, env, receiver):
    """Retrieval broken between two runs with the same seed (vectors scrambled, full-text emptied): the second
    run's drop is POSTed to the webhook once; a third, equally bad run is no new drop and sends nothing."""
    from rag import ingestion
    from rag.evaluation import evaluate_kb

    kb_id, kb_name = kb
    env.set(KBCHAT_ALERT_WEBHOOK_URL=receiver.url("/drop"), KBCHAT_EVAL_DROP_ALERT="0.2")
    for path in sorted(DEMO.glob("*.pdf")):
        document_id = upload_without_queue(kb_id, path)
        assert ingestion.ingest_document(document_id).status == "ready"

    good = evaluate_kb(kb_id, trigger="scheduled", seed=5, sample_size=10)
    assert good["alert"] is None and good["hit_at_5"] >= 0.5, good
    # Each chunk gets a random vector (the correlated reference makes it one per row) and no words to match.
    _sql("UPDATE chunks c SET embedding = ARRAY(SELECT random() - 0.5 + 0 * c.id "
         "FROM generate_series(1, 384))::vector, tsv = to_tsvector('simple', '') WHERE kb_id = :kb", kb=kb_id)
    bad = evaluate_kb(kb_id, trigger="scheduled", seed=5, sample_size=10)
    assert max(good["hit_at_5"] - bad["hit_at_5"], good["mrr"] - bad["mrr"]) > 0.2, (good, bad)
    assert bad["alert"] and bad["alert"]["delivery"] == "sent", bad
    [body] = receiver.bodies()
    assert body["kind"] == "retrieval_drop" and body["knowledge_base"] == {"id": kb_id, "name": kb_name}
    assert body["details"]["before"]["run_id"] == good["run_id"] and body["details"]["now"]["run_id"] == bad["run_id"]
    assert kb_name in body["text"] and "hit@5" in body["message"]

    again = evaluate_kb(kb_id, trigger="scheduled", seed=5, sample_size=10)
    assert again["alert"] is None and len(receiver.requests) == 1

    # The Prometheus exporter shows the latest figures per base and the alert.
    from prometheus_client import generate_latest
    from prometheus_client.parser import text_string_to_metric_families

    from kbchat.metrics import build_registry

    families = {f.name: f for f in text_string_to_metric_families(generate_latest(build_registry()).decode())}
    samples = {s.labels["metric"]: s.value for s in families["kbchat_retrieval_eval"].samples
               if s.labels["kb"] == kb_name}
    assert samples["hit_at_5"] == pytest.approx(again["hit_at_5"]) and samples["mrr"] == pytest.approx(again["mrr"])
    assert any(s.labels == {"kind": "retrieval_drop", "delivery": "sent"} and s.value >= 1
               for s in families["kbchat_alerts_last_day"].samples)


def upload_without_queue(kb_id: int, path) -> int:
    from infra.database import session_scope
    from rag.library import store_upload

    with session_scope() as session:
        return store_upload(session=session, kb_id=kb_id, filename=path.name, data=path.read_bytes()).document_id


# --- empty-retrieval alert ----------------------------------------------------------------------------------------


@pytest.fixture
def own_redis_db(services, env) -> str:
    """A Redis database of its own: the share of empty retrievals counts only this test's questions."""
    from infra.redis_client import get_redis

    base, _, _ = services["redis_url"].rpartition("/")
    url = f"{base}/3"
    env.set(KBCHAT_REDIS_URL=url, KBCHAT_TASK_BACKEND="celery")
    get_redis().flushdb()
    return url


SECRET_URL_PARTS = ("s3cr3t-pass", "T0KEN-IN-PATH", "QUERY-SECRET")


def _secret_url(receiver: WebhookReceiver) -> str:
    return f"http://alerts:s3cr3t-pass@127.0.0.1:{receiver.port}/hooks/T0KEN-IN-PATH?key=QUERY-SECRET"


def test_empty_retrieval_alert_job_on_a_worker_posts_to_the_webhook(own_redis_db, kb, receiver, tmp_path):
    """Questions through a real chat worker, most of them about what the base does not hold; the scheduled
    alert job on that worker POSTs one alert with the share and examples, without the URL's secrets in its log."""
    from db.repositories import alerts as alert_repo
    from infra.database import session_scope
    from telemetry.events import wait_for_result
    from tests.conftest import enqueue

    kb_id, _ = kb
    handle = start_worker("celery", tmp_path / "worker.log", queues="ingest,chat,maintenance", extra_env={
        "KBCHAT_ALERT_WEBHOOK_URL": _secret_url(receiver), "KBCHAT_ALERT_WEBHOOK_BACKOFF_SECONDS": "0.05",
        "KBCHAT_EMPTY_RETRIEVAL_ALERT_MIN_QUESTIONS": "4", "KBCHAT_EMPTY_RETRIEVAL_ALERT_RATE": "0.5",
        "KBCHAT_ANSWER_CACHE_TTL_SECONDS": "0"})
    try:
        receiver.statuses = [503]  # the first delivery fails: the job retries
        _ingest_demo(kb_id, count=1)
        questions = ["What caused the engine failure?", "Sourdough starter feeding schedule for rye bread?",
                     "Best chess opening against the Sicilian defence?", "Knitting pattern for a cable sweater?",
                     "Which violin concerto did Sibelius write?"]
        for question in questions:
            wait_for_result(enqueue("chat.answer", kb_id, question), timeout=120)
        outcome = wait_for_result(enqueue("maintenance.alerts"), timeout=120)
    finally:
        stop_worker(handle)
    assert outcome["questions"] == 5 and outcome["empty"] >= 3, outcome
    assert outcome["alert"] and outcome["alert"]["delivery"] == "sent" and outcome["alert"]["attempts"] == 2, outcome
    assert [r["status"] for r in receiver.requests] == [503, 200]
    body = receiver.bodies()[-1]
    assert body["kind"] == "empty_retrievals" and body["details"]["questions"] == 5
    assert any("Sourdough" in q for q in body["details"]["examples"])
    assert receiver.requests[-1]["path"] == "/hooks/T0KEN-IN-PATH?key=QUERY-SECRET"
    log = handle.log()
    assert "alert webhook http://127.0.0.1" in log, log[-3000:]
    assert not [s for s in SECRET_URL_PARTS if s in log], "a secret of the webhook URL was logged"
    with session_scope() as session:
        stored = [a for a in alert_repo.recent(session=session) if a.id == outcome["alert"]["id"]]
    assert stored and stored[0].attempts == 2 and stored[0].delivery == "sent"


def test_empty_retrieval_alert_is_sent_once_per_period_and_failures_keep_no_secret(own_redis_db, env, receiver,
                                                                                   caplog):
    from rag import alerts
    from telemetry import events, retrievals

    env.set(KBCHAT_ALERT_WEBHOOK_URL=_secret_url(receiver), KBCHAT_ALERT_WEBHOOK_BACKOFF_SECONDS="0.01",
            KBCHAT_ALERT_WEBHOOK_RETRIES="2", KBCHAT_EMPTY_RETRIEVAL_ALERT_MIN_QUESTIONS="5",
            KBCHAT_ALERT_PERIOD_SECONDS="3600")
    kb_marker = 900_000 + int(uuid.uuid4().int % 1000)  # a kb id no other test uses: alerts are per period
    for number in range(4):  # 4 questions, 3 empty: too few questions for the rule
        events.record(f"ask-{number}", events.STARTED, name="chat.answer", queue="chat")
    for number in range(3):
        retrievals.record_empty_retrieval(kb_marker, f"unanswerable question {number}", 0.05)
    assert alerts.check_empty_retrievals()["alert"] is None and not receiver.requests

    events.record("ask-5", events.STARTED, name="chat.answer", queue="chat")
    _sql("DELETE FROM alerts WHERE kind = 'empty_retrievals'")  # earlier tests' alerts would hold this one back
    caplog.set_level(logging.INFO, logger="rag.alerts")
    receiver.statuses = [500, 500, 500]  # every attempt fails: delivery gives up, the alert is kept as failed
    failed = alerts.check_empty_retrievals()
    assert failed["rate"] == pytest.approx(3 / 5) and failed["alert"]["delivery"] == "failed", failed
    assert failed["alert"]["attempts"] == 3 and len(receiver.requests) == 3
    assert "HTTP 500" in failed["alert"]["error"]

    sent = alerts.check_empty_retrievals()  # a failed delivery does not count: the next check sends it
    assert sent["alert"]["delivery"] == "sent" and len(receiver.requests) == 4
    held = alerts.check_empty_retrievals()  # within the period: not again
    assert held["alert"] is None and len(receiver.requests) == 4

    receiver.stop()  # connection refused: retried, then failed, and the stored error names no secret
    _sql("DELETE FROM alerts WHERE kind = 'empty_retrievals'")
    refused = alerts.check_empty_retrievals()
    assert refused["alert"]["delivery"] == "failed" and refused["alert"]["attempts"] == 3
    stored = _sql("SELECT delivery_error FROM alerts WHERE id = :id", id=refused["alert"]["id"])[0][0]
    assert "ConnectionError" in stored
    for secret in SECRET_URL_PARTS:
        assert secret not in stored and secret not in caplog.text, secret
    assert "alert webhook http://127.0.0.1" in caplog.text


# --- consistency ------------------------------------------------------------------------------------------------


def test_consistency_check_reports_without_changing_then_the_job_fixes(worker, kb):
    """Chunks lost, a chunk filed under another base, a failed document still searchable, an orphan chunk, a stuck
    document:
    ``kbchat check`` lists them and changes nothing; the scheduled job fixes them all; then the check is clean."""
    from infra.database import session_scope
    from rag.library import get_or_create_kb
    from telemetry.events import wait_for_result
    from tests.conftest import enqueue

    kb_id, kb_name = kb
    with session_scope() as session:
        elsewhere = get_or_create_kb(session=session, name=f"{kb_name}-elsewhere").id
    lost, misfiled, failed = _ingest_demo(kb_id, count=3)
    counts = dict(_sql("SELECT document_id, count(*) FROM chunks WHERE kb_id = :kb GROUP BY 1", kb=kb_id))
    _sql("DELETE FROM chunks WHERE document_id = :d AND ordinal > 0", d=lost)
    _sql("UPDATE chunks SET kb_id = :other WHERE document_id = :d AND ordinal = 0", d=misfiled, other=elsewhere)
    _sql("UPDATE documents SET status = 'failed', error = 'simulated' WHERE id = :d", d=failed)
    with_chunks = counts[failed]
    # A chunk whose document is gone (only possible with the foreign keys bypassed, as a bad restore would).
    _sql_bypassing_foreign_keys(
        "INSERT INTO chunks (kb_id, document_id, ordinal, text, token_count, tsv, embedding) "
        "SELECT kb_id, 987654321, 0, text, token_count, tsv, embedding FROM chunks WHERE document_id = :d LIMIT 1",
        d=lost)
    stuck = upload_without_queue(kb_id, sorted(DEMO.glob("*.pdf"))[3])
    backdate_document(stuck, 3 * 3600)

    report = run_cli("check", "--kb", kb_name, "--json")
    assert report.returncode == 1, report.stderr[-2000:]
    found = json.loads(report.stdout)
    kinds = {(p["kind"], p.get("document_id")) for p in found["problems"]}
    assert {("chunks_mismatch", lost), ("chunks_mismatch", misfiled), ("failed_with_chunks", failed),
            ("orphan_chunks", None), ("stuck", stuck)} <= kinds, found
    assert all(p["action"].startswith("would be") for p in found["problems"]), found
    assert dict(_sql("SELECT document_id, count(*) FROM chunks WHERE document_id = :d GROUP BY 1", d=failed)) == {
        failed: with_chunks}, "a check without --fix changed nothing"

    result = wait_for_result(enqueue("maintenance.consistency", kb_id), timeout=120)
    assert result["fixed"] and {"chunks_mismatch", "failed_with_chunks", "orphan_chunks", "stuck"} <= set(
        result["counts"]), result
    documents = wait_for_documents([lost, misfiled, stuck], timeout=240)
    assert all(d.status == "ready" for d in documents.values()), [(d.id, d.status, d.error) for d in documents.values()]
    for document in documents.values():
        stored = _sql("SELECT count(*), count(*) FILTER (WHERE kb_id = :kb) FROM chunks WHERE document_id = :d",
                      d=document.id, kb=kb_id)[0]
        assert tuple(stored) == (document.chunk_count, document.chunk_count) and document.chunk_count > 0
    assert counts[lost] == documents[lost].chunk_count
    assert _sql("SELECT count(*) FROM chunks WHERE kb_id = :other", other=elsewhere)[0][0] == 0
    assert _sql("SELECT count(*) FROM chunks WHERE document_id = :d", d=failed)[0][0] == 0
    assert _sql("SELECT count(*) FROM chunks WHERE document_id = 987654321")[0][0] == 0

    clean = run_cli("check", "--kb", kb_name)
    assert clean.returncode == 0 and "consistent" in clean.stdout, clean.stdout + clean.stderr


# --- cleanup ----------------------------------------------------------------------------------------------------


def test_cleanup_removes_what_is_past_retention_and_keeps_the_rest(own_redis_db, kb):
    from infra.redis_client import get_redis
    from rag.cleanup import cleanup
    from telemetry import events, retrievals
    from telemetry.queue_history import HISTORY_KEY

    kb_id, _ = kb
    r = get_redis()
    old_ms = int((time.time() - 10 * 86400) * 1000)
    r.xadd(events.EVENTS_KEY, {"task_id": "old", "event": "succeeded", "ts": old_ms / 1000}, id=f"{old_ms}-0")
    events.record("new", events.QUEUED, name="maintenance.cleanup")
    r.xadd(retrievals.EMPTY_RETRIEVALS_KEY, {"kb_id": kb_id, "question": "old"}, id=f"{old_ms}-0")
    r.xadd(HISTORY_KEY, {"ts": old_ms / 1000}, id=f"{old_ms}-0")
    r.xadd("kbchat:stream:old", {"kind": "token", "data": "x"}, id=f"{old_ms}-0")  # lost its expiry long ago
    r.xadd("kbchat:stream:new", {"kind": "token", "data": "y"})  # recent, but without an expiry
    old_run = _sql("INSERT INTO eval_runs (kb_id, trigger, status, seed, sample_size, questions, hit_at_1, details, "
                   "started_at, finished_at) VALUES (:kb, 'scheduled', 'succeeded', 1, 1, 1, 1.0, "
                   "CAST(:details AS jsonb), now() - interval '40 days', now() - interval '40 days') RETURNING id",
                   kb=kb_id, details='[{"rank": 1}]')[0][0]
    new_run = _sql("INSERT INTO eval_runs (kb_id, trigger, status, seed, sample_size, questions, details) VALUES "
                   "(:kb, 'scheduled', 'succeeded', 1, 1, 1, CAST(:details AS jsonb)) RETURNING id",
                   kb=kb_id, details='[{"rank": 2}]')[0][0]
    dead_run = _sql("INSERT INTO eval_runs (kb_id, trigger, status, seed, sample_size, started_at) VALUES "
                    "(:kb, 'page', 'running', 1, 1, now() - interval '1 day') RETURNING id", kb=kb_id)[0][0]
    old_alert = _sql("INSERT INTO alerts (kind, message, payload, delivery, created_at) VALUES "
                     "('empty_retrievals', 'old', CAST('{}' AS jsonb), 'sent', now() - interval '100 days') "
                     "RETURNING id")[0][0]
    _sql_bypassing_foreign_keys("INSERT INTO document_blobs (document_id, data) VALUES (987654322, 'stray')")
    # An abandoned split-ingest run: its part and staged chunk belong to a run that no longer owns the document.
    document_id = upload_without_queue(kb_id, sorted(DEMO.glob("*.pdf"))[0])
    _sql("UPDATE documents SET task_id = 'current-run' WHERE id = :d", d=document_id)
    _sql("INSERT INTO ingest_parts (document_id, run, first_page, last_page, updated_at) VALUES "
         "(:d, 'old-run', 1, 5, now() - interval '2 days'), (:d, 'current-run', 6, 9, now() - interval '2 days')",
         d=document_id)
    _sql("INSERT INTO staged_chunks (document_id, run, first_page, ordinal, text, token_count, embedding) "
         "VALUES (:d, 'old-run', 1, 0, 'x', 1, CAST(:v AS vector))", d=document_id, v=str([0.1] * 384))

    removed = cleanup()["removed"]
    assert removed["events"] == 1 and removed["empty_retrievals"] == 1 and removed["queue_history"] == 1, removed
    assert removed["answer_streams"] == 1 and removed["eval_details"] >= 1 and removed["alerts"] >= 1, removed
    assert removed["stale_upload_files"] >= 1 and removed["abandoned_eval_runs"] >= 1, removed
    assert [fields["task_id"] for _, fields in r.xrange(events.EVENTS_KEY)] == ["new"]
    assert r.xlen(retrievals.EMPTY_RETRIEVALS_KEY) == 0
    assert not r.exists("kbchat:stream:old")
    assert 0 < r.ttl("kbchat:stream:new") <= get_settings_value("stream_ttl_seconds")
    assert tuple(_sql("SELECT details IS NULL, hit_at_1 FROM eval_runs WHERE id = :i", i=old_run)[0]) == (True, 1.0)
    assert _sql("SELECT details FROM eval_runs WHERE id = :i", i=new_run)[0][0] == [{"rank": 2}]
    assert _sql("SELECT status FROM eval_runs WHERE id = :i", i=dead_run)[0][0] == "failed"
    assert not _sql("SELECT 1 FROM alerts WHERE id = :i", i=old_alert)
    assert not _sql("SELECT 1 FROM document_blobs WHERE document_id = 987654322")
    assert removed["abandoned_split_ingest_rows"] == 2, removed
    assert [tuple(r) for r in _sql("SELECT run FROM ingest_parts WHERE document_id = :d", d=document_id)] == [
        ("current-run",)], "the current run's parts stay"
    again = cleanup()["removed"]
    assert again["events"] == 0 and again["eval_details"] == 0, "a second run finds nothing more to remove"


def get_settings_value(name: str):
    from infra.settings import get_settings

    return getattr(get_settings(), name)


# --- the schedule -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("backend_name", ["celery", "dramatiq"])
def test_the_scheduler_queues_every_upkeep_job_on_both_backends(services, env, backend_name, tmp_path):
    """``kbchat scheduler`` (Celery beat, or the Dramatiq-mode loop) queues each interval job on time, into a
    Redis database no worker reads (so nothing runs them here); the nightly evaluation is registered too."""
    from infra.redis_client import get_redis
    from telemetry import events
    from tests.conftest import start_scheduler, stop_process_group, wait_until

    base, _, _ = services["redis_url"].rpartition("/")
    env.set(KBCHAT_REDIS_URL=f"{base}/{4 if backend_name == 'celery' else 5}", KBCHAT_TASK_BACKEND=backend_name)
    get_redis().flushdb()
    jobs = ("maintenance.reconcile", "maintenance.consistency", "maintenance.alerts", "maintenance.cleanup")
    child_env = dict(os.environ, PYTHONUNBUFFERED="1", KBCHAT_RECONCILE_INTERVAL_SECONDS="1",
                     KBCHAT_CONSISTENCY_INTERVAL_SECONDS="1", KBCHAT_ALERT_CHECK_INTERVAL_SECONDS="1",
                     KBCHAT_CLEANUP_INTERVAL_SECONDS="1", KBCHAT_DATA_DIR=str(tmp_path))

    def queued() -> dict[str, int]:
        counts: dict[str, int] = {}
        for entry in events.recent_events(1000):
            if entry.get("event") == "queued":
                counts[entry.get("name", "")] = counts.get(entry.get("name", ""), 0) + 1
        return counts

    log_path = tmp_path / "scheduler.log"
    scheduler = start_scheduler(child_env, log_path)
    try:
        counts = wait_until(lambda: (c := queued()) and all(c.get(job, 0) >= 2 for job in jobs) and c, 60,
                            "every interval job queued twice")
        assert scheduler.poll() is None, log_path.read_text()
        assert "maintenance.evaluate" not in counts, "the nightly evaluation runs at its time, not at start"
        if backend_name == "dramatiq":
            assert "maintenance.evaluate daily at 02:30 UTC" in log_path.read_text()
    finally:
        stop_process_group(scheduler)
        get_redis().flushdb()
