"""The task layer through real workers, on Celery and on Dramatiq (the ``worker``/``backend`` fixtures).

Everything here is real: the embedded PostgreSQL+pgvector, Redis, ``kbchat worker`` processes, the scheduler.
"""

from __future__ import annotations

import io
import os
import random
import re
import signal
import time
import uuid
from pathlib import Path

import pytest

from tests.conftest import (
    backdate_document,
    finished_task_record,
    make_pdf,
    start_scheduler,
    start_worker,
    stop_process_group,
    stop_worker,
    stop_worker_gracefully,
    task_events,
    upload,
    wait_for_documents,
    wait_until,
)

pytestmark = pytest.mark.integration

PDF_PAGES = [
    "The lighthouse keeper logged a northerly gale on the first night. Waves reached the lantern gallery.",
    "A volcanic eruption buried the apricot orchard under grey ash. The farmers harvested nothing that year.",
    "Divers repaired the submarine telegraph cable near the harbour mouth after a trawler snagged it.",
]

# The fields a finished task's record has on either backend (record shape is part of the monitoring contract).
SUCCEEDED_RECORD_KEYS = {
    "state", "updated_at", "name", "queue", "queued_at", "args", "backend",
    "started_at", "worker", "finished_at", "runtime", "result",
}
# backend → the keys of its succeeded ingest record; the second backend's run compares with the first's.
_RECORD_SHAPES: dict[str, set[str]] = {}


# --- helpers ------------------------------------------------------------------------------------------


def _new_kb() -> tuple[int, str]:
    from infra.database import session_scope
    from rag.library import get_or_create_kb

    name = f"test-{uuid.uuid4().hex[:10]}"
    with session_scope() as session:
        return get_or_create_kb(session=session, name=name).id, name


def _chunks(document_id: int) -> list:
    from sqlalchemy import select

    from db.models import Chunk
    from infra.database import session_scope

    with session_scope() as session:
        return list(session.scalars(select(Chunk).where(Chunk.document_id == document_id).order_by(Chunk.ordinal)))


def _document_count(kb_id: int) -> int:
    from sqlalchemy import func, select

    from db.models import Document
    from infra.database import session_scope

    with session_scope() as session:
        return session.scalar(select(func.count()).select_from(Document).where(Document.kb_id == kb_id))


def _document(document_id: int):
    from db.repositories import documents as document_repo
    from infra.database import session_scope

    with session_scope() as session:
        return document_repo.get(session=session, document_id=document_id)


def _ingest_ready(kb_id: int, filename: str, data: bytes):
    outcome = upload(kb_id, filename, data)
    assert outcome.status == "queued", outcome
    document = wait_for_documents([outcome.document_id])[outcome.document_id]
    assert document.status == "ready", document.error
    return document


def _image_only_pdf() -> bytes:
    """A PDF whose only page holds a filled rectangle: no text layer at all (like a scan without OCR)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_fill_color(40, 40, 40)
    pdf.rect(20, 20, 120, 80, style="F")
    return bytes(pdf.output())


def _encrypted_pdf(user_password: str, text: str) -> bytes:
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([text]))))
    writer.encrypt(user_password=user_password, owner_password="owner-secret")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def _my_worker_record(handle) -> dict:
    from telemetry import events
    from tests.conftest import _pid_in_tree

    mine = [w for w in events.live_workers()
            if w.get("backend") == handle.backend and _pid_in_tree(handle.process.pid, int(w.get("pid", 0)))]
    assert len(mine) <= 1, mine
    return mine[0] if mine else {}


# --- ingestion ----------------------------------------------------------------------------------------


def test_pdf_text_and_markdown_reach_ready_with_locators(worker, kb):
    from infra.database import session_scope
    from rag.retrieval import search

    kb_id, _ = kb
    lines = [
        f"Entry {n:02d} notes that the {colour} heron waded past marker {n * 7} while the tide turned slowly."
        for n, colour in enumerate(["amber", "blue", "crimson", "dusky", "emerald"] * 8, start=1)
    ]
    markdown = (
        "# Field Guide\n\nThis guide describes common animals of the estuary.\n\n"
        "## Birds\n\nMany birds nest in the reeds along the shore.\n\n"
        "### Owls\n\nOwls hunt voles at night over the salt meadows and roost in the old barn.\n"
    )
    owls_line = markdown.split("\n").index("### Owls") + 1
    outcomes = [
        upload(kb_id, "pages.pdf", make_pdf(PDF_PAGES)),
        upload(kb_id, "heron-log.txt", ("\n".join(lines) + "\n").encode()),
        upload(kb_id, "guide.md", markdown.encode()),
    ]
    assert [o.status for o in outcomes] == ["queued"] * 3, outcomes
    ids = [o.document_id for o in outcomes]
    documents = wait_for_documents(ids)
    for document in documents.values():
        assert document.status == "ready", (document.filename, document.error)
        assert document.error is None
        assert document.chunk_count > 0
        assert document.chunk_count == len(_chunks(document.id))

    pdf, txt, md = (documents[i] for i in ids)

    # PDF: one page number per chunk, every page covered, the locator says the page.
    assert pdf.pages == 3
    pdf_chunks = _chunks(pdf.id)
    assert {c.page for c in pdf_chunks} == {1, 2, 3}
    for chunk in pdf_chunks:
        assert 1 <= chunk.page <= pdf.pages
        assert chunk.locator == f"p. {chunk.page}"
        assert PDF_PAGES[chunk.page - 1].split()[1] in chunk.text  # the chunk holds its own page's text
    with session_scope() as session:
        hits = search(session=session, kb_id=kb_id, question="volcanic ash buried the apricot orchard", k=3)
    assert hits[0].document == "pages.pdf" and hits[0].page == 2, hits[0]

    # Plain text: no pages; "lines a-b" locators that match the text they hold, covering the whole file.
    txt_chunks = _chunks(txt.id)
    assert len(txt_chunks) >= 2, "40 long lines should not fit one 200-token chunk"
    spans = []
    for chunk in txt_chunks:
        assert chunk.page is None
        match = re.fullmatch(r"lines (\d+)-(\d+)", chunk.locator or "")
        assert match, chunk.locator
        first, last = int(match.group(1)), int(match.group(2))
        assert 1 <= first < last <= len(lines)
        assert f"Entry {first:02d} " in chunk.text and f"Entry {last:02d} " in chunk.text, (chunk.locator, chunk.text)
        spans.append((first, last))
    assert spans[0][0] == 1 and spans[-1][1] == len(lines)
    assert all(a[0] < b[0] <= a[1] + 1 for a, b in zip(spans, spans[1:], strict=False))  # ordered, no gaps

    # Markdown: the heading path travels with each chunk, and the locator points at the section's lines.
    md_chunks = _chunks(md.id)
    owls = [c for c in md_chunks if "Owls hunt voles" in c.text]
    assert len(owls) == 1
    assert owls[0].heading == "Field Guide > Birds > Owls"
    assert re.fullmatch(rf"lines {owls_line}-\d+", owls[0].locator or ""), owls[0].locator
    assert {c.heading for c in md_chunks} >= {"Field Guide", "Field Guide > Birds", "Field Guide > Birds > Owls"}


def test_duplicate_content_in_the_same_kb_is_not_queued(worker, kb):
    kb_id, _ = kb
    data = b"Quarterly maintenance report.\nThe pumps were inspected and the seals replaced.\n"
    first = _ingest_ready(kb_id, "report.txt", data)
    task_id = first.task_id

    again = upload(kb_id, "report-copy.txt", data)
    assert again.status == "duplicate"
    assert again.duplicate_of == first.id and again.document_id == first.id
    assert "report.txt" in again.error
    assert _document_count(kb_id) == 1
    assert _document(first.id).task_id == task_id  # nothing was enqueued for it

    other_kb, _ = _new_kb()
    elsewhere = _ingest_ready(other_kb, "report.txt", data)
    assert elsewhere.id != first.id and elsewhere.kb_id == other_kb


def test_bad_files_fail_or_are_rejected_with_clear_messages_and_the_good_one_is_ready(worker, kb):

    kb_id, _ = kb
    junk = random.Random(7).randbytes(4096)
    assert b"%PDF-" not in junk
    batch = {
        "good.txt": b"The ferry timetable changes in October.\nSunday sailings are cancelled.\n",
        "corrupt.pdf": b"%PDF-1.4 garbage",
        "empty.txt": b"",
        "junk.bin": junk,
        "scan.pdf": _image_only_pdf(),
        "locked.pdf": _encrypted_pdf("secret", "The vault code is kept in the blue ledger."),
        "owner-only.pdf": _encrypted_pdf("", "Open to read: the canal locks close at dusk."),
    }
    outcomes = {name: upload(kb_id, name, data) for name, data in batch.items()}

    # Refused at store time: nothing stored, nothing queued.
    assert outcomes["empty.txt"].status == "rejected" and "empty" in outcomes["empty.txt"].error
    assert outcomes["junk.bin"].status == "rejected"
    assert "binary" in outcomes["junk.bin"].error and "Unsupported file type" in outcomes["junk.bin"].error
    assert outcomes["empty.txt"].document_id is None and outcomes["junk.bin"].document_id is None
    assert _document_count(kb_id) == 5

    queued = {name: o for name, o in outcomes.items() if o.status == "queued"}
    assert set(queued) == {"good.txt", "corrupt.pdf", "scan.pdf", "locked.pdf", "owner-only.pdf"}
    documents = wait_for_documents([o.document_id for o in queued.values()])
    by_name = {d.filename: d for d in documents.values()}

    assert by_name["good.txt"].status == "ready"
    assert by_name["owner-only.pdf"].status == "ready", by_name["owner-only.pdf"].error
    assert "canal locks" in _chunks(by_name["owner-only.pdf"].id)[0].text

    expectations = {"corrupt.pdf": "damaged", "scan.pdf": "no text layer", "locked.pdf": "password"}
    for name, words in expectations.items():
        document = by_name[name]
        assert document.status == "failed", (name, document.status)
        assert words in document.error, (name, document.error)
        assert "Traceback" not in document.error
        assert document.chunk_count == 0 and not _chunks(document.id)
        # A file that cannot be read is a handled outcome, not a crashed task.
        record = finished_task_record(document.task_id)
        assert record["result"]["status"] == "failed" and words in record["result"]["error"]


# --- task records and events --------------------------------------------------------------------------


def test_ingest_task_record_and_event_stream(worker, kb):
    from telemetry import events

    kb_id, _ = kb
    before = time.time()
    document = _ingest_ready(kb_id, "events.txt", b"Signal box twelve was rewired in March.\n")
    record = wait_until(lambda: (r := events.get_task(document.task_id)) and r.get("state") == "succeeded" and r,
                        10, "task record says succeeded")

    assert SUCCEEDED_RECORD_KEYS <= set(record), sorted(SUCCEEDED_RECORD_KEYS - set(record))
    assert not {"error", "traceback", "retries"} & set(record)
    _RECORD_SHAPES[worker.backend] = set(record)
    for other, keys in _RECORD_SHAPES.items():  # the same shape on Celery and on Dramatiq
        assert keys == set(record), f"{other} vs {worker.backend}: {sorted(keys ^ set(record))}"
    assert record["name"] == "ingest.document" and record["queue"] == "ingest"
    assert record["backend"] == worker.backend
    assert str(document.id) in record["args"]
    queued, started, finished = (float(record[k]) for k in ("queued_at", "started_at", "finished_at"))
    assert before - 1 <= queued <= started <= finished <= time.time() + 1
    assert 0 <= float(record["runtime"]) <= finished - queued + 1
    assert record["worker"]
    result = record["result"]
    assert (result["document_id"], result["status"], result["pages"], result["chunks"], result["error"]) == \
        (document.id, "ready", 1, document.chunk_count, None)

    stream = task_events(document.task_id)
    assert [e["event"] for e in stream] == ["queued", "started", "succeeded"], stream
    assert all(e["name"] == "ingest.document" for e in stream)
    assert stream[0]["queue"] == "ingest"
    assert stream[1]["worker"] == stream[2]["worker"] == record["worker"]
    assert float(stream[2]["runtime"]) == pytest.approx(float(record["runtime"]))
    assert [float(e["ts"]) for e in stream] == sorted(float(e["ts"]) for e in stream)


def test_a_crashing_task_is_recorded_failed_and_its_answer_stream_says_so(worker, kb):
    """PostgreSQL refuses to save the answer (a trigger raises): a real, non-transient task failure — recorded
    failed with error and traceback, no retry, and the reader of the answer stream is told at once instead of
    waiting for its timeout."""
    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope
    from telemetry import events
    from telemetry.answer_streams import follow
    from tests.conftest import enqueue
    from tests.monitoring_support import RefusedMessages

    kb_id, _ = kb
    _ingest_ready(kb_id, "canal.txt", b"The canal locks close at dusk every day in winter.\n")
    with session_scope() as session:
        conversation_id = conversation_repo.create(session=session, kb_id=kb_id, title="refused").id
    refusal = RefusedMessages(conversation_id).install()
    try:
        task_id = enqueue("chat.answer", kb_id, "When do the canal locks close?", conversation_id)
        started = time.monotonic()
        received = list(follow(task_id, timeout=20))
        assert received[-1][0] == "error", received[-3:]
        assert "Error" in str(received[-1][1])  # the error line, e.g. "ProgrammingError: …"
        assert time.monotonic() - started < 20

        record = wait_until(lambda: (r := events.get_task(task_id)) and r.get("state") == "failed" and r,
                            15, "task record says failed")
        assert record["name"] == "chat.answer" and record["queue"] == "chat"
        assert "refused" in record["error"] + record["traceback"]
        assert "Traceback (most recent call last)" in record["traceback"]
        assert float(record["finished_at"]) >= float(record["started_at"])
        assert "retries" not in record  # not a transient error: no retry
        stream = task_events(task_id)
        assert [e["event"] for e in stream] == ["queued", "started", "failed"], stream
        assert stream[-1]["error"]
        with session_scope() as session:
            assert conversation_repo.find_by_task(session=session, task_id=task_id) is None
    finally:
        refusal.remove()


# --- workers ------------------------------------------------------------------------------------------


def test_worker_heartbeats_and_going_offline(worker, tmp_path):
    from telemetry import events

    mine = wait_until(lambda: _my_worker_record(worker), 15, "the session worker's heartbeat")
    assert mine["backend"] == worker.backend
    assert mine["queues"] == "chat,ingest,maintenance"
    assert int(mine["concurrency"]) == 1
    assert int(mine["pid"]) > 0 and mine["host"]
    assert time.time() - float(mine["last_heartbeat"]) < 15

    # A worker that is stopped (SIGTERM) removes its key at shutdown, well before the 20 s TTL would.
    second = start_worker(worker.backend, tmp_path / "second.log", queues="maintenance")
    try:
        record = _my_worker_record(second)
        assert record["queues"] == "maintenance" and record["backend"] == worker.backend
        key = events.WORKER_KEY.format(record["id"])
        assert events.get_redis().ttl(key) > 5
    finally:
        stop_worker_gracefully(second)
    assert second.process.returncode == 0, second.log()[-2000:]
    assert not events.get_redis().exists(key), "the stopped worker's heartbeat key is still there"
    assert record["id"] not in {w["id"] for w in events.live_workers()}

    # A worker killed with SIGKILL cannot clean up: its key expires within the TTL.
    ttl = 3
    third = start_worker(worker.backend, tmp_path / "third.log", queues="maintenance",
                         extra_env={"KBCHAT_HEARTBEAT_TTL_SECONDS": str(ttl),
                                    "KBCHAT_HEARTBEAT_INTERVAL_SECONDS": "1"})
    try:
        record = _my_worker_record(third)
        key = events.WORKER_KEY.format(record["id"])
        time.sleep(ttl + 0.5)  # it keeps beating past its TTL while alive
        assert events.get_redis().exists(key)
        os.killpg(third.process.pid, signal.SIGKILL)
        third.process.wait(timeout=10)
        killed = time.monotonic()
        wait_until(lambda: not events.get_redis().exists(key), ttl + 3, "the killed worker's key to expire",
                   interval=0.1)
        assert time.monotonic() - killed <= ttl + 1.5
    finally:
        stop_worker(third)
    assert record["id"] not in {w["id"] for w in events.live_workers()}


def test_a_worker_that_cannot_reach_the_database_refuses_to_start(backend, services, tmp_path):
    """Why the transient-failure test below cuts one connection instead of starting a worker with a bad
    KBCHAT_DATABASE_URL: ``kbchat worker`` checks its services first and exits with a plain message."""
    with pytest.raises(RuntimeError, match="does not answer"):
        start_worker(backend, tmp_path / "bad.log", queues="maintenance",
                     extra_env={"KBCHAT_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:1/none"})


def test_transient_database_failure_is_retried_then_succeeds(worker, kb):
    """The worker's database connection dies in the middle of an ingest (as when PostgreSQL restarts): the task
    is recorded as a retry with the OperationalError, retried with backoff, and the document ends ready.

    The session worker consumes every queue, so a second worker with a broken database URL could not be made to
    take the task deterministically (and ``kbchat worker`` refuses to start without a database, see above).
    Instead the test holds a row lock on the document so the worker's first UPDATE waits, then terminates that
    worker's backend connection with pg_terminate_backend: a real OperationalError, for that worker only."""
    from sqlalchemy import text

    from infra.database import get_engine, session_scope
    from rag.library import store_upload
    from telemetry import events
    from tests.conftest import enqueue

    kb_id, _ = kb
    with session_scope() as session:
        outcome = store_upload(session=session, kb_id=kb_id, filename="retry.txt",
                               data=b"The night train to Inverness was rerouted via Perth.\n")
    document_id = outcome.document_id

    with get_engine().connect() as holder:
        transaction = holder.begin()
        holder.execute(text("SELECT id FROM documents WHERE id = :id FOR UPDATE"), {"id": document_id})
        holder_pid = holder.execute(text("SELECT pg_backend_pid()")).scalar()
        task_id = enqueue("ingest.document", document_id)
        try:
            blocked = wait_until(
                lambda: holder.execute(
                    text("SELECT pid FROM pg_stat_activity WHERE :holder = ANY(pg_blocking_pids(pid))"),
                    {"holder": holder_pid},
                ).scalars().all(),
                60, "the worker's UPDATE to wait on the row lock",
            )
            assert len(blocked) == 1
            assert holder.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": blocked[0]}).scalar()
            wait_until(lambda: int((events.get_task(task_id) or {}).get("retries", 0)) >= 1, 30,
                       "the task to be recorded as a retry")
        finally:
            transaction.rollback()

    document = wait_for_documents([document_id], timeout=60)[document_id]
    assert document.status == "ready", document.error
    assert document.chunk_count == 1
    record = wait_until(lambda: (r := events.get_task(task_id)) and r.get("state") == "succeeded" and r,
                        10, "task record says succeeded")
    assert int(record["retries"]) >= 1
    assert record["result"]["status"] == "ready"
    assert "error" not in record and "traceback" not in record, "a succeeded task still shows an old error"
    stream = task_events(task_id)
    kinds = [e["event"] for e in stream]
    assert kinds[0] == "queued" and kinds[-1] == "succeeded" and "retry" in kinds, kinds
    assert kinds.index("retry") < len(kinds) - 1 and kinds[kinds.index("retry") + 1] == "started"
    retry = stream[kinds.index("retry")]
    assert "OperationalError" in retry["error"], retry


# --- answers ------------------------------------------------------------------------------------------


def test_chat_answer_streams_through_the_worker_and_is_saved(worker, kb):
    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope
    from infra.settings import get_settings
    from telemetry import events
    from telemetry.answer_streams import follow
    from tests.conftest import enqueue

    kb_id, _ = kb
    document = _ingest_ready(kb_id, "orchard.pdf", make_pdf(PDF_PAGES))
    with session_scope() as session:
        conversation_id = conversation_repo.create(session=session, kb_id=kb_id, title="ash").id

    task_id = enqueue("chat.answer", kb_id, "What buried the apricot orchard?", conversation_id)
    received = list(follow(task_id, timeout=60))
    kinds = [kind for kind, _ in received]
    assert kinds.count("meta") == 1 and kinds[-1] == "done" and "error" not in kinds, kinds
    assert "token" in kinds and kinds.index("meta") < kinds.index("token"), kinds
    meta, done = received[kinds.index("meta")][1], received[-1][1]
    answer = "".join(data for kind, data in received if kind == "token")

    assert meta["mode"] == "extractive" and done["mode"] == "extractive"
    assert {"retrieval_ms", "first_token_ms", "total_ms"} <= set(done["timings"])
    citations = meta["citations"]
    assert citations and citations[0]["n"] == 1
    for citation in citations:
        assert {"document", "page", "score", "text", "chunk_id"} <= set(citation)
        assert citation["document"] == "orchard.pdf" and citation["document_id"] == document.id
        assert 1 <= citation["page"] <= 3
        assert citation["score"] >= get_settings().min_relevance
    assert citations[0]["page"] == 2 and "apricot orchard" in citations[0]["text"]
    assert re.search(r"\[\d+\] — \*orchard\.pdf", answer) and "apricot orchard" in answer

    with session_scope() as session:
        saved = conversation_repo.messages(session=session, conversation_id=conversation_id)
    assert len(saved) == 1
    message = saved[0]
    assert message.role == "assistant" and message.mode == "extractive" and message.task_id == task_id
    assert message.content == answer
    assert message.citations == done.get("citations", citations)
    assert [(c["document"], c["page"], c["chunk_id"]) for c in message.citations][:1] == \
        [("orchard.pdf", 2, citations[0]["chunk_id"])]
    record = wait_until(lambda: (r := events.get_task(task_id)) and r.get("state") == "succeeded" and r,
                        15, "the chat task's record says succeeded")  # `done` is streamed just before the return
    assert record["name"] == "chat.answer"
    assert record["result"]["answer"] == answer


def test_chat_answer_on_an_empty_kb_says_there_is_no_answer(worker, kb):
    from telemetry.answer_streams import follow
    from tests.conftest import enqueue

    kb_id, _ = kb
    task_id = enqueue("chat.answer", kb_id, "What is the boiling point of tungsten?", None)
    received = list(follow(task_id, timeout=60))
    meta = next(data for kind, data in received if kind == "meta")
    assert meta["mode"] == "extractive" and meta["citations"] == []
    assert received[-1][0] == "done" and not received[-1][1].get("citations")
    answer = "".join(data for kind, data in received if kind == "token")
    assert "does not seem to contain" in answer
    assert "[1]" not in answer


# --- periodic jobs and reconciliation -----------------------------------------------------------------


def test_scheduler_enqueues_reconcile_periodically_and_the_worker_runs_it(worker, tmp_path):
    from telemetry import events

    def scheduled_since(ts: float) -> list[str]:
        return [e["task_id"] for e in reversed(events.recent_events(2000))
                if e.get("event") == "queued" and e.get("name") == "maintenance.reconcile" and float(e["ts"]) > ts]

    log_path = tmp_path / "scheduler.log"
    env = dict(os.environ, KBCHAT_TASK_BACKEND=worker.backend, KBCHAT_RECONCILE_INTERVAL_SECONDS="1",
               PYTHONUNBUFFERED="1")
    time.sleep(0.5)  # the session worker's own start-up reconcile is queued before t0
    t0 = time.time()
    scheduler = start_scheduler(env, log_path)
    try:
        ids = wait_until(lambda: (ids := scheduled_since(t0)) and len(ids) >= 3 and ids, 45,
                         "three reconcile runs queued by the scheduler")
        assert scheduler.poll() is None, log_path.read_text()
        record = wait_until(lambda: (r := events.get_task(ids[0])) and r.get("state") == "succeeded" and r,
                            30, "the first scheduled reconcile to succeed")
        assert record["name"] == "maintenance.reconcile" and record["queue"] == "maintenance"
        assert record["backend"] == worker.backend and record["worker"]
        assert set(record["result"]) == {"requeued", "failed", "checked", "lost_workers", "parts",
                                         "answers_ended"}
        first_two = [float(events.get_task(i)["queued_at"]) for i in ids[:2]]
        assert 0.3 < first_two[1] - first_two[0] < 10  # periodic, about every second
    finally:
        stop_process_group(scheduler)
    stopped = time.time()
    time.sleep(2.5)
    assert not scheduled_since(stopped), "reconcile was still being queued after the scheduler stopped"
    if worker.backend == "celery":  # beat kept its schedule file in the data dir, not in the working tree
        data_dir = Path(os.environ["KBCHAT_DATA_DIR"])
        assert any(p.name.startswith("celerybeat-schedule") for p in data_dir.iterdir()), list(data_dir.iterdir())


def test_reconcile_requeues_a_document_whose_queue_message_was_lost(worker, kb):
    from infra.database import session_scope
    from infra.settings import get_settings
    from rag.library import store_upload
    from telemetry.events import wait_for_result
    from tests.conftest import enqueue

    kb_id, _ = kb
    wait_for_result(enqueue("maintenance.reconcile"), timeout=60)  # drain any start-up reconcile first

    with session_scope() as session:  # stored, but its message never reached Redis
        outcome = store_upload(session=session, kb_id=kb_id, filename="lost.txt",
                               data=b"The ferry to the island leaves at seven from pier four.\n")
    document_id = outcome.document_id
    assert _document(document_id).task_id is None

    # Not yet stuck: a fresh queued document is left alone.
    result = wait_for_result(enqueue("maintenance.reconcile"), timeout=60)
    assert document_id not in result["requeued"]
    assert _document(document_id).status == "queued"

    backdate_document(document_id, get_settings().stuck_after_seconds + 3600)
    result = wait_for_result(enqueue("maintenance.reconcile"), timeout=60)
    assert document_id in result["requeued"] and result["checked"] >= 1

    document = wait_for_documents([document_id], timeout=60)[document_id]
    assert document.status == "ready", document.error
    assert document.task_id
    record = finished_task_record(document.task_id)
    assert record["name"] == "ingest.document"
