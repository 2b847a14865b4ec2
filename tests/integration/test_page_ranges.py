"""Large PDFs split into page ranges (``ingest.pages``) that several workers share, on Celery and on Dramatiq.

Each test has its own Redis (``own_redis``, from the reliability tests), so only the workers it starts, with a
low ``KBCHAT_INGEST_SPLIT_PAGES``, take its tasks.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import OPERATOR, make_pdf, upload, wait_until
from tests.integration import test_reliability as reliability
from tests.integration.test_reliability import (
    DEAD_WORKER_RULE,
    FAST_REDELIVERY,
    _final,
    _kill_hard,
    _start,
    _wait_document,
    assert_chunks_intact,
    long_pdf,
)

# The reliability tests' fixtures: a Redis of the test's own, and the workers it starts (stopped at the end).
own_redis = reliability.own_redis
workers = reliability.workers

pytestmark = pytest.mark.integration

SPLIT = {"KBCHAT_INGEST_SPLIT_PAGES": "5"}
_WORDS = ["harbour", "glacier", "signal", "orchard", "lantern", "ash", "cable", "marsh", "ferry", "hut"]


def _pages(count: int = 23) -> list[str]:
    """Distinct text on every page; every fourth page long enough for several chunks, page 9 left blank."""
    pages = []
    for number in range(1, count + 1):
        word = _WORDS[number % len(_WORDS)]
        sentence = f"Marker P{number:02d}: the {word} report for page {number} lists {number * 17 % 89} items. "
        if number == 9:
            pages.append("")
        elif number % 4 == 0:
            pages.append(" ".join(f"{sentence}Clause {k} of page {number} concerns the {word}." for k in range(40)))
        else:
            pages.append(sentence * 3)
    return pages


def _chunks(document_id: int) -> list:
    from sqlalchemy import select

    from db.models import Chunk
    from infra.database import session_scope

    with session_scope() as session:
        return list(session.scalars(select(Chunk).where(Chunk.document_id == document_id).order_by(Chunk.ordinal)))


def _document(document_id: int):
    from db.repositories import documents as document_repo
    from infra.database import session_scope

    with session_scope() as session:
        return document_repo.get(session=session, document_id=document_id)


def _leftovers(document_id: int) -> tuple[int, int]:
    """(part rows, staged chunks) still stored for the document."""
    from db.repositories import ingest_parts as part_repo
    from infra.database import session_scope

    with session_scope() as session:
        return (part_repo.count_for_document(session=session, document_id=document_id),
                part_repo.count_staged(session=session, document_id=document_id))


def _parts_of_run(document_id: int, run: str) -> list[tuple[int, int]]:
    from sqlalchemy import select

    from db.models import IngestPart
    from infra.database import session_scope

    with session_scope() as session:
        rows = session.execute(
            select(IngestPart.first_page, IngestPart.last_page)
            .where(IngestPart.document_id == document_id, IngestPart.run == run).order_by(IngestPart.first_page)
        ).all()
    return [(r.first_page, r.last_page) for r in rows]


def _part_records(document_id: int) -> list[dict]:
    """The task records of every ``ingest.pages`` task queued for the document (any run)."""
    from telemetry import events

    ids = {e["task_id"] for e in events.recent_events(5000) if e.get("name") == "ingest.pages"}
    records = []
    for task_id in ids:
        record = events.get_task(task_id) or {}
        args = json.loads(record.get("args") or "{}").get("args") or []
        if args and int(args[0]) == document_id:
            records.append({**record, "id": task_id, "args_list": args})
    return records


def _expected_chunks(data: bytes, filename: str, kb_id: int) -> list[tuple[int | None, str]]:
    """(page, text) of every chunk an unsplit ingest makes of ``data``: the same parser and chunker, in process."""
    from db.repositories import knowledge_bases as kb_repo
    from infra.database import session_scope
    from rag import embedding
    from rag.chunking import split_sections
    from rag.parsing import parse

    with session_scope() as session:
        kb = kb_repo.get(session=session, kb_id=kb_id)
        max_tokens, overlap = kb.chunk_tokens, kb.chunk_overlap_tokens
    parsed = parse(data, filename)
    drafts = split_sections(parsed.sections, count_tokens=embedding.count_tokens, max_tokens=max_tokens,
                            overlap_tokens=overlap)
    return [(d.page, d.text) for d in drafts]


@pytest.mark.timeout(600)
def test_a_large_pdf_is_split_shared_by_two_workers_and_stored_once(backend, own_redis, kb, workers, tmp_path):
    """A 23-page PDF over a 5-page threshold: five parts, taken by both workers, every part also delivered twice;
    the document ends ready with exactly the chunks an unsplit ingest makes, progress counted in pages; a re-index
    replaces them, and a part of the old run stands down."""
    from tasks.backend import get_backend
    from telemetry.events import wait_for_result
    from tests.conftest import enqueue
    from usecases.fixes import requeue_documents

    kb_id, _ = kb
    for name in ("first", "second"):
        _start(workers, backend, tmp_path / f"{name}.log", "ingest", SPLIT)
    data = make_pdf(_pages())
    outcome = upload(kb_id, "long-manual.pdf", data)
    assert outcome.status == "queued", outcome
    document_id = outcome.document_id
    run = _document(document_id).task_id

    # A redelivered part, as after a lost acknowledgement: every part is queued a second time mid-run.
    parts = wait_until(lambda: _parts_of_run(document_id, run), 120, "the document to be split into parts")
    assert parts == [(1, 5), (6, 10), (11, 15), (16, 20), (21, 23)]
    for first, last in parts:
        enqueue("ingest.pages", document_id, run, first, last)

    seen = []

    def finished():
        document = _document(document_id)
        seen.append((document.status, document.progress_done, document.progress_total))
        return document if document.status in ("ready", "failed") else None

    document = wait_until(finished, 400, "the split document to finish", interval=0.1)
    assert document.status == "ready", document.error
    assert document.pages == 23 and document.task_id == run
    assert (document.progress_done, document.progress_total, document.progress) == (23, 23, 1.0)
    embedding_rows = [(done, total) for status, done, total in seen if status == "embedding"]
    assert embedding_rows, seen[:20]
    assert all(total == 23 and 0 <= done <= 23 for done, total in embedding_rows), embedding_rows

    # Exactly the chunks of an unsplit ingest: same pages and texts in the same order, ordinals 0..n-1.
    assert_chunks_intact(document)
    chunks = _chunks(document_id)
    assert [(c.page, c.text) for c in chunks] == _expected_chunks(data, "long-manual.pdf", kb_id)
    assert {c.page for c in chunks} == set(range(1, 24)) - {9}
    assert len(chunks) > 23  # the long pages made several chunks each

    # Ten part deliveries (five parts, each twice) all finished; the parts ran on both workers.
    records = wait_until(
        lambda: (r := _part_records(document_id)) and len(r) == 10 and all(x.get("state") == "succeeded" for x in r)
        and r,
        120, "every part delivery to finish",
    )
    statuses = sorted(r["result"]["status"] for r in records)
    assert statuses.count("ready") == 1, statuses  # one delivery stored the document
    assert set(statuses) <= {"ready", "staged", "superseded"}, statuses
    assert len({r["worker"] for r in records}) == 2, {r["worker"] for r in records}
    assert _leftovers(document_id) == (0, 0)

    # Re-index: a new run replaces every chunk; a part of the old run delivered late stands down.
    old_ids = {c.id for c in chunks}
    new_run = requeue_documents(get_backend(), OPERATOR, [document_id])[0]
    document = _final(document_id, 400)
    assert document.status == "ready", document.error
    assert document.task_id == new_run != run
    assert_chunks_intact(document)
    again = _chunks(document_id)
    assert [(c.page, c.text) for c in again] == [(c.page, c.text) for c in chunks]
    assert not old_ids & {c.id for c in again}
    stale = wait_for_result(enqueue("ingest.pages", document_id, run, 1, 5), timeout=120)
    assert stale["status"] == "superseded", stale
    assert [c.id for c in _chunks(document_id)] == [c.id for c in again]
    assert _leftovers(document_id) == (0, 0)


@pytest.mark.timeout(600)
def test_worker_killed_mid_part_the_part_is_redelivered_and_the_document_completes_once(
    backend, own_redis, kb, workers, tmp_path
):
    """kill -9 of the only worker while it embeds a part: the broker hands the part to the next worker and the
    document ends ready, every chunk once, nothing left staged."""
    kb_id, _ = kb
    env = {**FAST_REDELIVERY, "KBCHAT_INGEST_SPLIT_PAGES": "20"}
    first = _start(workers, backend, tmp_path / "first.log", "ingest", env)
    outcome = upload(kb_id, "long-split.pdf", long_pdf(60))
    document_id = outcome.document_id
    _wait_document(document_id, lambda d: d.status == "embedding" and d.progress_done > 0, 240,
                   "the first worker to be embedding a part")
    run = _document(document_id).task_id
    _kill_hard(first)
    assert _document(document_id).status == "embedding"

    _start(workers, backend, tmp_path / "second.log", "ingest", env)
    document = _final(document_id, 400)
    assert document.status == "ready", document.error
    assert document.task_id == run, "the same run finished (its parts were redelivered, not a new run queued)"
    assert document.pages == 60 and document.progress_total == 60
    assert_chunks_intact(document)
    assert {c.page for c in _chunks(document_id)} == set(range(1, 61))
    assert _leftovers(document_id) == (0, 0)


@pytest.mark.timeout(600)
def test_worker_killed_mid_part_the_reconciler_sends_the_part_again_in_the_same_run(
    backend, own_redis, kb, workers, tmp_path
):
    """kill -9 of the only worker while it embeds a part, the broker's redelivery out of reach: the part names its
    worker; the next worker's reconciliation sends that part again (a new delivery of the same run, the parts
    already done kept) and the document ends ready, every chunk once."""
    from sqlalchemy import select

    from db.models import IngestPart
    from infra.database import session_scope
    from tests.conftest import enqueue

    def claimed_parts():  # parts under way: claimed, some pages embedded, not done
        with session_scope() as session:
            return [(p.first_page, p.worker, p.task_id, p.attempts) for p in session.scalars(
                select(IngestPart).where(IngestPart.document_id == document_id, IngestPart.worker.is_not(None),
                                         IngestPart.done.is_(False), IngestPart.pages_done > 0))]

    kb_id, _ = kb
    env = {**DEAD_WORKER_RULE, "KBCHAT_INGEST_SPLIT_PAGES": "50"}
    first = _start(workers, backend, tmp_path / "first.log", "ingest", env)
    outcome = upload(kb_id, "lost-part.pdf", long_pdf())
    document_id = outcome.document_id
    wait_until(claimed_parts, 240, "the first worker to be embedding a part", interval=0.1)
    _kill_hard(first)
    run = _document(document_id).task_id
    claims = claimed_parts()
    assert claims, "the part under way when its worker was killed is still not done"
    assert _document(document_id).worker is None, "the split document's parts carry the claims"

    _start(workers, backend, tmp_path / "second.log", "ingest,maintenance", env)

    def resent():
        with session_scope() as session:
            part = session.scalar(select(IngestPart).where(IngestPart.document_id == document_id,
                                                           IngestPart.first_page == claims[0][0]))
        if part is None or part.done or part.task_id != claims[0][2]:
            return True
        enqueue("maintenance.reconcile")
        time.sleep(3)
        return False

    wait_until(resent, 120, "the reconciler to send the lost part again")
    document = _final(document_id, 400)
    assert document.status == "ready", document.error
    assert document.task_id == run, "the same run finished: only the lost part was sent again"
    assert document.lost_worker == claims[0][1]
    assert document.pages == 150
    assert_chunks_intact(document)
    assert {c.page for c in _chunks(document_id)} == set(range(1, 151))
    assert _leftovers(document_id) == (0, 0)
