"""One document's pipeline — parse → chunk → embed → store — with progress in PostgreSQL; idempotent."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace

from db.models import CHUNKING, EMBEDDING, FINAL_STATES, OCR, PARSING, READY, STORING
from db.repositories import chunks as chunk_repo
from db.repositories import documents as document_repo
from db.repositories import ingest_parts as part_repo
from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from infra.settings import get_settings
from rag import embedding
from rag.chunking import split_sections
from rag.context import header, page_headings
from rag.ingestion_timing import StageClock
from rag.parsing import ParseError, parse, parse_pdf_pages, pdf_page_count

log = logging.getLogger(__name__)

SUPERSEDED = "superseded"  # a result status, never a document's: a newer task owns the document


@dataclass
class IngestResult:
    document_id: int
    status: str
    pages: int | None = None
    chunks: int = 0
    error: str | None = None
    # Page ranges (first, last) of a split PDF that the caller enqueues as ``ingest.pages`` tasks.
    parts: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


class _Progress:
    """Writes a document's stage and progress in its own short transactions, at most every ``interval`` s."""

    def __init__(self, document_id: int, interval: float = 0.5) -> None:
        self.document_id = document_id
        self.interval = interval
        self._last = 0.0

    def stage(self, status: str, done: int = 0, total: int = 0, pages: int | None = None, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last < self.interval and done < total:
            return
        self._last = now
        with session_scope() as session:
            document_repo.set_stage(
                session=session, document_id=self.document_id, status=status, done=done, total=total, pages=pages
            )


def ingest_document(
    document_id: int, task_id: str | None = None, split: Callable[[int, str, int], IngestResult] | None = None,
    worker: str | None = None,
) -> IngestResult:
    """Run the whole pipeline for one stored document; a rerun replaces its chunks in one transaction.

    ``task_id`` is the delivering task's id: a task that is no longer the document's current one stands down.
    ``worker`` (the heartbeat identity of the worker running it) is recorded on the document, so the reconciler can
    start it over when that worker's heartbeat lapses; a document whose attempts are used up (each one ended with
    its worker lost: a file that crashes the parser or exhausts memory) fails instead of running again.
    ``split(document_id, task_id, pages)`` (``rag.page_ranges.split_document``) takes over a PDF longer than
    ``ingest_split_pages``; without it every document is ingested whole.
    """
    settings = get_settings()
    clock = StageClock()
    with session_scope() as session:
        document = document_repo.get(session=session, document_id=document_id)
        if document is None:  # deleted while queued: nothing to do
            return IngestResult(document_id=document_id, status="missing", error="document no longer exists")
        if document.status == READY:  # a duplicate delivery of a finished task
            return IngestResult(document_id, READY, document.pages, document.chunk_count)
        if _superseded(document, task_id):
            return IngestResult(document_id, SUPERSEDED, error=f"superseded by task {document.task_id}")
        if document.attempts > settings.max_retries:
            error = gave_up_message(document.attempts)
            document_repo.mark_failed(session=session, document_id=document_id, error=error)
            part_repo.delete_for_document(session=session, document_id=document_id)
            return IngestResult(document_id=document_id, status="failed", error=error)
        kb = kb_repo.get(session=session, kb_id=document.kb_id)
        assert kb is not None
        kb_id, filename = kb.id, document.filename
        max_tokens, overlap = kb.chunk_tokens, kb.chunk_overlap_tokens
        data = document_repo.get_blob(session=session, document_id=document_id) or b""
        document_repo.mark_started(session=session, document_id=document_id, worker=worker)
        document_repo.set_stage(session=session, document_id=document_id, status=PARSING)

    progress = _Progress(document_id)
    try:
        split_pages = settings.ingest_split_pages
        if split_pages > 0 and task_id is not None and split is not None:
            total = pdf_page_count(data)
            if total is not None and total > split_pages:
                # The parts each read a page range: the header comes from the first pages, once, for all.
                context = document_context(parse_pdf_pages(data, 1, CONTEXT_PAGES), filename)
                with session_scope() as session:
                    document_repo.set_context(session=session, document_id=document_id, context=context)
                return split(document_id, task_id, total)
        with clock.stage("parse"):
            parsed = parse(
                data,
                filename,
                progress=lambda done, total: progress.stage(PARSING, done, total, force=False),
                ocr_progress=lambda done, total: progress.stage(OCR, done, total, force=done == 0),
            )
        with clock.stage("chunk"):
            context = document_context(parsed, filename)
            progress.stage(CHUNKING, 0, len(parsed.sections), pages=parsed.pages)
            drafts = chunk(parsed, filename, max_tokens, overlap)
        if not drafts:
            raise ParseError("The file contains no readable text.")
        progress.stage(EMBEDDING, 0, len(drafts))
        with clock.stage("embed"):
            rows = embed_rows(
                drafts, context=context,
                on_batch=lambda embedded: progress.stage(EMBEDDING, embedded, len(drafts), force=False),
            )
    except ParseError as exc:
        with session_scope() as session:
            document_repo.mark_failed(session=session, document_id=document_id, error=str(exc))
        return IngestResult(document_id=document_id, status="failed", error=str(exc))

    progress.stage(STORING, 0, len(drafts))
    with clock.stage("store"), session_scope() as session:
        # The row lock orders concurrent runs of one document (a redelivery racing a requeue): the second sees the
        # first's chunks and replaces them, instead of colliding with them on (document_id, ordinal).
        document = document_repo.lock(session=session, document_id=document_id)
        if document is None:
            return IngestResult(document_id=document_id, status="missing", error="document no longer exists")
        if _superseded(document, task_id):
            return IngestResult(document_id, SUPERSEDED, error=f"superseded by task {document.task_id}")
        chunk_repo.replace_for_document(
            session=session,
            kb_id=kb_id,
            document_id=document_id,
            rows=rows,
            text_search_config=settings.text_search_config,
            context=context,
        )
        document_repo.set_context(session=session, document_id=document_id, context=context)
        document_repo.mark_ready(
            session=session, document_id=document_id, pages=parsed.pages, chunk_count=len(rows),
            note=" ".join(parsed.notes) or None,
        )
        part_repo.delete_for_document(session=session, document_id=document_id)  # an earlier split run's leftovers
        kb_repo.bump_version(session=session, kb_id=kb_id)
    log.info("ingested document %s (%s): %d pages, %d chunks", document_id, filename, parsed.pages, len(rows))
    clock.report(document_id, parsed.pages, len(rows))
    return IngestResult(document_id=document_id, status=READY, pages=parsed.pages, chunks=len(rows))


def gave_up_message(attempts: int) -> str:
    """Why a document that was started ``attempts`` times and never finished is failed, not started again."""
    return (f"Gave up after {attempts} attempts that did not finish: its worker was lost each time (killed, out "
            "of memory, or its host went down) or a service kept failing. A file that crashes the parser or "
            "exhausts memory does this; use Retry once the cause is fixed.")


def release_claim(document_id: int, *, task_id: str, worker: str | None) -> None:
    """The splitting task is done with the document: the claims of its parts stand for it from now on."""
    with session_scope() as session:
        document_repo.release_claim(session=session, document_id=document_id, task_id=task_id, worker=worker)


def fail_document(document_id: int, error: str, task_id: str | None = None) -> bool:
    """Mark a document failed for a reason outside the pipeline (time limit, retries exhausted, a split run's part
    failed for good), its split-run leftovers gone; not when ``task_id`` is no longer the document's task or the
    document is already final. Whether it was marked."""
    with session_scope() as session:
        document = document_repo.lock(session=session, document_id=document_id)
        if document is None or document.status in FINAL_STATES or _superseded(document, task_id):
            return False
        document_repo.mark_failed(session=session, document_id=document_id, error=error)
        part_repo.delete_for_document(session=session, document_id=document_id)
        return True


def _superseded(document, task_id: str | None) -> bool:
    return bool(task_id and document.task_id and document.task_id != task_id)


def chunk(parsed, filename: str, max_tokens: int, overlap: int) -> list:
    """The parsed sections as chunk drafts in the knowledge base's window (model tokens), each with its heading
    path (the document itself is named by the context header, which is not part of the window). A PDF's pages
    carry no headings of their own: each page gets the heading it sits under (``rag.context.page_headings``)."""
    sections = parsed.sections
    if parsed.kind == "pdf":
        headings = page_headings([s.text for s in sections])
        sections = [replace(s, heading=h) if h and not s.heading else s for s, h in zip(sections, headings, strict=True)]
    return split_sections(
        sections,
        count_tokens=embedding.count_tokens,
        max_tokens=max_tokens,
        overlap_tokens=overlap,
    )


CONTEXT_PAGES = 3  # the pages a document's title and date are looked for on


def document_context(parsed, filename: str) -> str | None:
    """The context header of a parsed document (or of its first pages): title · file name · date."""
    return header(
        title=parsed.title, filename=filename, first_pages=[s.text for s in parsed.sections[:CONTEXT_PAGES]]
    )


def embed_rows(
    drafts: list, on_batch: Callable[[int], None], context: str | None = None
) -> list[chunk_repo.ChunkRow]:
    """Embed the drafts in batches (``on_batch`` gets how many are done after each) and return the rows to store;
    each is embedded with the document's ``context`` header and its heading before its text."""
    texts = [embedding_text(context, d.heading, d.text) for d in drafts]
    # Batches of similar length across the whole document pad little (a page's last chunk is short).
    order = sorted(range(len(texts)), key=lambda i: len(texts[i]), reverse=True)
    vectors: list = [None] * len(texts)
    batch = get_settings().embedding_batch_size
    for start in range(0, len(order), batch):
        chosen = order[start : start + batch]
        for i, vector in zip(chosen, embedding.embed([texts[i] for i in chosen]), strict=True):
            vectors[i] = vector
        on_batch(min(start + batch, len(order)))
    return [
        chunk_repo.ChunkRow(
            ordinal=d.ordinal, page=d.page, locator=d.locator, heading=d.heading, text=d.text,
            token_count=d.token_count, embedding=vector,
        )
        for d, vector in zip(drafts, vectors, strict=True)
    ]


def embedding_text(context: str | None, heading: str | None, text: str) -> str:
    """What a chunk's vector is made from: the document's context header and the chunk's heading path go in, so
    a chunk can be found by what document and section it is from (the index gets the same text, in SQL)."""
    return "\n".join(part for part in (context, heading, text) if part)
