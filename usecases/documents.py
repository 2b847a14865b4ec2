"""Documents: upload files, list, delete or re-index documents, and ingest one (the task body's work).

Reading takes ``viewer`` on the document's base; uploading, deleting and re-indexing ``editor``. An ingest queued
for a person carries their id and checks again when it runs: a grant revoked in between stops it.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterable

from db.models import FAILED
from db.repositories import chunks as chunk_repo
from db.repositories import documents as document_repo
from infra.database import session_scope
from infra.settings import get_settings
from rag import ingestion, library, page_ranges
from rag.access import EDITOR, Actor, NotFound
from rag.library import UploadOutcome
from rag.page_view import cached_render, render_pdf_page
from rag.page_view import surrounding as page_view_text
from usecases.access import require_document, require_kb
from usecases.accounts import actor_for_user_id
from usecases.audit import record
from usecases.ports import TaskQueue


def enqueue_ingest(queue: TaskQueue, document_id: int, *, actor: Actor | None = None) -> str:
    """Queue ``ingest.document`` for a committed document, its task id recorded on it first.

    Only the document's current task ingests it: an older message for the same document (redelivered after its
    worker died, while reconciliation had already queued a new one) finds another task id and stands down.
    """
    task_id = str(uuid.uuid4())
    with session_scope() as session:
        document_repo.set_task(session=session, document_id=document_id, task_id=task_id)
    return queue.enqueue("ingest.document", document_id, actor.user_id if actor else None, task_id=task_id)


def upload_files(queue: TaskQueue, actor: Actor, *, kb_id: int,
                 files: Iterable[tuple[str, bytes]]) -> list[UploadOutcome]:
    """Store each (filename, bytes) as a queued document, or say why not; queue the stored ones' ingest."""
    with session_scope() as session:
        kb_id = require_kb(session, actor, kb_id, EDITOR).id
    outcomes = []
    for filename, data in files:
        with session_scope() as session:  # one transaction per file: one bad file never undoes another
            outcome = library.store_upload(session=session, kb_id=kb_id, filename=filename, data=data)
            if outcome.status == "queued":
                record(session, actor, "document.upload", kb_id=kb_id, target=outcome.filename,
                       document_id=outcome.document_id, bytes=len(data))
            outcomes.append(outcome)
    for outcome in outcomes:
        if outcome.status == "queued" and outcome.document_id is not None:
            outcome.task_id = enqueue_ingest(queue, outcome.document_id, actor=actor)
    return outcomes


def list_documents(actor: Actor, *, kb_id: int, limit: int = 500, ready_only: bool = False) -> list:
    """The base's documents, newest first (detached rows: status, progress, error, counts)."""
    with session_scope() as session:
        kb_id = require_kb(session, actor, kb_id).id
        documents = document_repo.list_for_kb(session=session, kb_id=kb_id, limit=limit)
        return [d for d in documents if d.status == "ready"] if ready_only else documents


def get_document(actor: Actor, *, document_id: int, kb_id: int | None = None):
    """A readable document (in ``kb_id`` when given: another base's document is not found there)."""
    with session_scope() as session:
        document = require_document(session, actor, document_id)
        if kb_id is not None and document.kb_id != int(kb_id):
            raise NotFound(f"Document {document_id} not found.")
        return document


def document_original(actor: Actor, *, document_id: int, kb_id: int | None = None) -> tuple[str, str, bytes]:
    """(file name, media type, bytes) of a readable document's original file."""
    with session_scope() as session:
        document = require_document(session, actor, document_id)
        if kb_id is not None and document.kb_id != int(kb_id):
            raise NotFound(f"Document {document_id} not found.")
        data = document_repo.get_blob(session=session, document_id=document.id)
        if data is None:
            raise NotFound(f"The original file of document {document_id} is no longer stored.")
        return document.filename, document.mime or "application/octet-stream", data


def page_view(actor: Actor, *, document_id: int, page: int | None = None, chunk_id: int | None = None,
              width: int = 1000) -> dict:
    """What a citation opens: for a PDF {"kind": "image", "png", "page", "pages"} (the page rendered, the cited
    chunk's passage highlighted, cached); otherwise {"kind": "text", "before", "passage", "after"}."""
    with session_scope() as session:
        document = require_document(session, actor, document_id)
        chunk = chunk_repo.get(session=session, chunk_id=int(chunk_id)) if chunk_id is not None else None
        if chunk is not None and chunk.document_id != document.id:
            raise NotFound(f"Passage {chunk_id} is not in document {document_id}.")
        is_pdf = (document.mime or "") == "application/pdf"
        if not is_pdf:
            if chunk is None:
                raise ValueError("Which passage? A citation of this document names one.")
            around = chunk_repo.neighbours(session=session, document_id=document.id, ordinal=chunk.ordinal, radius=1)
            texts = [c.text for c in around]
            index = next(i for i, c in enumerate(around) if c.id == chunk.id)
            return {"kind": "text", "filename": document.filename, "locator": chunk.locator,
                    **page_view_text(texts, index)}
        data = document_repo.get_blob(session=session, document_id=document.id)
        number = page or (chunk.page if chunk is not None else 1) or 1
        filename, sha, pages = document.filename, document.sha256, document.pages
        passage = chunk.text if chunk is not None and chunk.page == number else None
    if data is None:
        raise NotFound(f"The original file of document {document_id} is no longer stored.")
    key = f"{sha}|{number}|{width}|{hashlib.sha256((passage or '').encode()).hexdigest()}"
    png = cached_render(get_settings().data_dir / "page-cache", key,
                        lambda: render_pdf_page(data, number, width=width, passage=passage))
    return {"kind": "image", "png": png, "page": number, "pages": pages, "filename": filename,
            "highlighted": passage is not None}


def document_chunks(actor: Actor, *, document_id: int, limit: int = 50, offset: int = 0) -> list:
    """A readable document's chunks in order."""
    with session_scope() as session:
        document = require_document(session, actor, document_id)
        return chunk_repo.list_for_document(session=session, document_id=document.id, limit=limit, offset=offset)


def delete_documents(actor: Actor, *, kb_id: int, document_ids: list[int]) -> int:
    """Delete documents of ``kb_id`` with their chunks and stored files; returns how many were deleted."""
    with session_scope() as session:
        kb_id = require_kb(session, actor, kb_id, EDITOR).id
        deleted = 0
        for document_id in document_ids:
            document = document_repo.get(session=session, document_id=document_id)
            if document is not None and document.kb_id == kb_id:
                record(session, actor, "document.delete", kb_id=kb_id, target=document.filename,
                       document_id=document_id)
            deleted += library.delete_document(session=session, kb_id=kb_id, document_id=document_id)
        return deleted


def reindex_documents(
    queue: TaskQueue, actor: Actor, *, kb_id: int, document_ids: list[int] | None = None, only_failed: bool = False
) -> list[int]:
    """Re-index documents of ``kb_id`` (all, the given ones, or the failed ones); returns the ids queued."""
    with session_scope() as session:
        kb_id = require_kb(session, actor, kb_id, EDITOR).id
        ids = library.reindex(session=session, kb_id=kb_id, document_ids=document_ids, only_failed=only_failed)
        if ids:
            record(session, actor, "document.reindex", kb_id=kb_id, target=f"{len(ids)} document(s)",
                   document_ids=ids[:200])
    for document_id in ids:
        enqueue_ingest(queue, document_id, actor=actor)
    return ids


def ingest_document(
    queue: TaskQueue, *, document_id: int, task_id: str, actor_id: int | None = None, worker: str | None = None
) -> dict:
    """Parse, chunk, embed and store one document on ``worker`` (its heartbeat identity, recorded on the document);
    a large PDF is split into ``ingest.pages`` parts, queued after the commit that recorded them (a redelivery
    re-sends those not done), and then the parts' own claims stand for the document.

    ``actor_id``: whoever queued it, checked again now (None: the operator or a scheduled job)."""
    if actor_id is not None:
        actor = actor_for_user_id(actor_id)
        try:
            if actor is None:
                raise NotFound("the uploader's account is disabled or gone")
            with session_scope() as session:
                require_document(session, actor, document_id, EDITOR)
        except (NotFound, PermissionError):
            who = actor.username if actor else f"user {actor_id}"
            reason = f"Stopped: {who} no longer has editor access to this knowledge base; re-index it to try again."
            ingestion.fail_document(document_id, reason, task_id=task_id)
            return {"document_id": document_id, "status": FAILED, "error": reason}
    result = ingestion.ingest_document(document_id, task_id=task_id, split=page_ranges.split_document, worker=worker)
    for first_page, last_page in result.parts:
        queue.enqueue("ingest.pages", document_id, task_id, first_page, last_page)
    if result.parts:
        ingestion.release_claim(document_id, task_id=task_id, worker=worker)
    return result.to_dict()
