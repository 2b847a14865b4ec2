"""Large PDFs split into page ranges that several ingest workers share; the run's last part stores the chunks.

A run is the ``ingest.document`` task id that split the document, which is also the document's ``task_id``: a part
of any other run stands down, exactly as an older ``ingest.document`` delivery does. Each part stages its chunks
(replacing its own earlier rows, so a redelivered part never duplicates); the part that finds every part of its
run done, under the document's row lock, moves the staged chunks into ``chunks`` in one transaction.

Chunks never cross a page (see ``rag.chunking``), so chunking each range alone gives the same chunks as chunking
the whole document: only the ordinals are renumbered when the parts are joined.
"""

from __future__ import annotations

import logging
import math
import time

from db.models import EMBEDDING, FINAL_STATES, READY
from db.repositories import chunks as chunk_repo
from db.repositories import documents as document_repo
from db.repositories import ingest_parts as part_repo
from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from infra.settings import get_settings
from rag.ingestion import SUPERSEDED, IngestResult, chunk, embed_rows, fail_document, gave_up_message
from rag.ingestion_timing import StageClock
from rag.parsing import ParseError, parse_pdf_pages

log = logging.getLogger(__name__)

SPLIT = "split"  # result of the splitting task: parts were queued
STAGED = "staged"  # result of a part whose run still has parts to go
NO_TEXT = "The PDF has no text layer (scanned images?); OCR is not enabled."


class _StandDown(Exception):
    def __init__(self, result: IngestResult) -> None:
        super().__init__(result.error or result.status)
        self.result = result


def plan(total_pages: int, max_pages: int) -> list[tuple[int, int]]:
    """Page ranges (1-based, inclusive) of at most ``max_pages`` pages, as even in size as possible."""
    parts = max(1, math.ceil(total_pages / max_pages))
    step = math.ceil(total_pages / parts)
    return [(first, min(first + step - 1, total_pages)) for first in range(1, total_pages + 1, step)]


def split_document(document_id: int, run: str, total_pages: int) -> IngestResult:
    """Record the run's page ranges (once: a redelivered splitting task keeps them) and return those not done."""
    with session_scope() as session:
        document = document_repo.lock(session=session, document_id=document_id)
        if document is None:
            return IngestResult(document_id=document_id, status="missing", error="document no longer exists")
        if document.task_id != run:
            return IngestResult(document_id, SUPERSEDED, error=f"superseded by task {document.task_id}")
        part_repo.delete_for_document(session=session, document_id=document_id, keep_run=run)
        if part_repo.count_parts(session=session, document_id=document_id, run=run)[0] == 0:
            part_repo.create_parts(
                session=session, document_id=document_id, run=run,
                ranges=plan(total_pages, get_settings().ingest_split_pages),
            )
        pending = part_repo.pending_parts(session=session, document_id=document_id, run=run)
        done = part_repo.pages_done_total(session=session, document_id=document_id, run=run)
        document_repo.set_stage(
            session=session, document_id=document_id, status=EMBEDDING, done=done, total=total_pages, pages=total_pages
        )
    log.info("document %s: %d pages split into %d parts (run %s)", document_id, total_pages, len(pending), run)
    return IngestResult(document_id, SPLIT, pages=total_pages, parts=[[first, last] for first, last in pending])


def ingest_pages(
    document_id: int, run: str, first_page: int, last_page: int, task_id: str | None = None, worker: str | None = None
) -> IngestResult:
    """Parse, chunk and embed one page range of a split PDF and stage its chunks; the run's last part stores them.

    The delivery (``task_id``) and its ``worker`` are recorded on the part, so the reconciler can send the part
    again when that worker's heartbeat lapses (an older delivery of the part then stands down); a part whose
    attempts are used up fails its document instead of running again."""
    settings = get_settings()
    clock = StageClock()
    with session_scope() as session:
        document = document_repo.lock(session=session, document_id=document_id)
        stale = _stale(session, document, document_id, run, first_page, task_id)
        if stale is not None:
            return stale
        before = part_repo.claim_part(session=session, document_id=document_id, run=run, first_page=first_page,
                                      task_id=task_id, worker=worker)
        gave_up = before > settings.max_retries
        kb = kb_repo.get(session=session, kb_id=document.kb_id)
        assert kb is not None
        kb_id, filename, context = kb.id, document.filename, document.context
        max_tokens, overlap = kb.chunk_tokens, kb.chunk_overlap_tokens
        data = b"" if gave_up else document_repo.get_blob(session=session, document_id=document_id) or b""
    if gave_up:
        return fail_run(document_id, run, f"Pages {first_page}–{last_page}: " + gave_up_message(before))

    report = _PartProgress(document_id, run, first_page, task_id)
    try:
        with clock.stage("parse"):
            parsed = parse_pdf_pages(data, first_page, last_page)
        with clock.stage("chunk"):
            drafts = chunk(parsed, filename, max_tokens, overlap)

        def report_pages(embedded: int) -> None:
            # Pages before the next chunk still to embed are done (a page's chunks are consecutive).
            pages_done = drafts[embedded].page - first_page if embedded < len(drafts) else last_page - first_page + 1
            report(pages_done, force=embedded == len(drafts))

        with clock.stage("embed"):
            rows = embed_rows(drafts, on_batch=report_pages, context=context)
    except ParseError as exc:
        return fail_run(document_id, run, str(exc))
    except _StandDown as stop:
        return stop.result

    part = f"{first_page}-{last_page}"
    with clock.stage("store"), session_scope() as session:
        # The document's row lock orders the parts' last steps: exactly one of them sees every part done.
        document = document_repo.lock(session=session, document_id=document_id)
        stale = _stale(session, document, document_id, run, first_page, task_id)
        if stale is not None:
            return stale
        part_repo.replace_staged(session=session, document_id=document_id, run=run, first_page=first_page, rows=rows)
        parts, done = part_repo.count_parts(session=session, document_id=document_id, run=run)
        if done < parts:
            pages_done = part_repo.pages_done_total(session=session, document_id=document_id, run=run)
            document_repo.set_stage(session=session, document_id=document_id, status=EMBEDDING, done=pages_done,
                                    total=document.pages or 0, pages=document.pages)
            staged = IngestResult(document_id, STAGED, pages=document.pages, chunks=len(rows))
        elif part_repo.count_staged(session=session, document_id=document_id) == 0:
            document_repo.mark_failed(session=session, document_id=document_id, error=NO_TEXT)
            part_repo.delete_for_document(session=session, document_id=document_id)
            return IngestResult(document_id, "failed", pages=document.pages, error=NO_TEXT)
        else:
            staged = None
            stored = chunk_repo.replace_from_staging(
                session=session, kb_id=kb_id, document_id=document_id, run=run,
                text_search_config=settings.text_search_config,
            )
            pages = document.pages or last_page
            document_repo.set_stage(session=session, document_id=document_id, status=EMBEDDING, done=pages,
                                    total=pages)
            document_repo.mark_ready(session=session, document_id=document_id, pages=pages, chunk_count=stored)
            part_repo.delete_for_document(session=session, document_id=document_id)
            kb_repo.bump_version(session=session, kb_id=kb_id)
    clock.report(document_id, last_page - first_page + 1, len(rows), part=part)
    if staged is not None:
        return staged
    log.info("ingested document %s (%s) from %d parts: %d pages, %d chunks", document_id, filename, parts, pages,
             stored)
    return IngestResult(document_id, READY, pages=pages, chunks=stored)


def fail_run(document_id: int, run: str, error: str) -> IngestResult:
    """A part failed for good: the document fails with the reason, unless a newer run owns it or it is final."""
    if not fail_document(document_id, error, task_id=run):
        return IngestResult(document_id, SUPERSEDED, error=error)
    return IngestResult(document_id=document_id, status="failed", error=error)


def _stale(session, document, document_id: int, run: str, first_page: int,
           task_id: str | None = None) -> IngestResult | None:
    """Why this part must not run (document gone, newer run, run finished or failed, the part sent again as
    another delivery), or None."""
    if document is None:
        return IngestResult(document_id=document_id, status="missing", error="document no longer exists")
    if document.task_id != run:
        return IngestResult(document_id, SUPERSEDED, error=f"superseded by task {document.task_id}")
    if document.status in FINAL_STATES:  # a duplicate delivery after the run finished
        return IngestResult(document_id, SUPERSEDED, error=f"run {run} already finished: {document.status}")
    part = part_repo.get_part(session=session, document_id=document_id, run=run, first_page=first_page)
    if part is None:
        return IngestResult(document_id, SUPERSEDED, error=f"pages from {first_page} are not a part of run {run}")
    if task_id and part.task_id and part.task_id != task_id:
        return IngestResult(document_id, SUPERSEDED, error=f"pages from {first_page} were sent again as {part.task_id}")
    return None


class _PartProgress:
    """Adds a part's embedded pages to the document's progress (pages done across every part), at most every
    ``interval`` s; stops the part when its run is no longer the document's."""

    def __init__(self, document_id: int, run: str, first_page: int, task_id: str | None = None,
                 interval: float = 0.5) -> None:
        self.document_id, self.run, self.first_page, self.interval = document_id, run, first_page, interval
        self.task_id = task_id
        self._last = 0.0

    def __call__(self, pages_done: int, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval:
            return
        self._last = now
        with session_scope() as session:
            document = document_repo.lock(session=session, document_id=self.document_id)
            stale = _stale(session, document, self.document_id, self.run, self.first_page, self.task_id)
            if stale is not None:
                raise _StandDown(stale)
            total_done = part_repo.set_pages_done(
                session=session, document_id=self.document_id, run=self.run, first_page=self.first_page,
                pages_done=pages_done,
            )
            document_repo.set_stage(session=session, document_id=self.document_id, status=EMBEDDING,
                                    done=total_done, total=document.pages or 0, pages=document.pages)
