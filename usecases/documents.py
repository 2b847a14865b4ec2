"""Documents: upload files, delete or re-index documents, and ingest one (the task body's work)."""

from __future__ import annotations

import uuid
from collections.abc import Iterable

from db.repositories import documents as document_repo
from infra.database import session_scope
from rag import ingestion, library, page_ranges
from rag.library import UploadOutcome
from usecases.ports import TaskQueue


def enqueue_ingest(queue: TaskQueue, document_id: int) -> str:
    """Queue ``ingest.document`` for a committed document, its task id recorded on it first.

    Only the document's current task ingests it: an older message for the same document (redelivered after its
    worker died, while reconciliation had already queued a new one) finds another task id and stands down.
    """
    task_id = str(uuid.uuid4())
    with session_scope() as session:
        document_repo.set_task(session=session, document_id=document_id, task_id=task_id)
    return queue.enqueue("ingest.document", document_id, task_id=task_id)


def upload_files(queue: TaskQueue, *, kb_id: int, files: Iterable[tuple[str, bytes]]) -> list[UploadOutcome]:
    """Store each (filename, bytes) as a queued document, or say why not; queue the stored ones' ingest."""
    outcomes = []
    for filename, data in files:
        with session_scope() as session:  # one transaction per file: one bad file never undoes another
            outcomes.append(library.store_upload(session=session, kb_id=kb_id, filename=filename, data=data))
    for outcome in outcomes:
        if outcome.status == "queued" and outcome.document_id is not None:
            enqueue_ingest(queue, outcome.document_id)
    return outcomes


def delete_documents(*, kb_id: int, document_ids: list[int]) -> int:
    """Delete documents of ``kb_id`` with their chunks and stored files; returns how many were deleted."""
    with session_scope() as session:
        return sum(
            library.delete_document(session=session, kb_id=kb_id, document_id=document_id)
            for document_id in document_ids
        )


def reindex_documents(
    queue: TaskQueue, *, kb_id: int, document_ids: list[int] | None = None, only_failed: bool = False
) -> list[int]:
    """Re-index documents of ``kb_id`` (all, the given ones, or the failed ones); returns the ids queued."""
    with session_scope() as session:
        ids = library.reindex(session=session, kb_id=kb_id, document_ids=document_ids, only_failed=only_failed)
    for document_id in ids:
        enqueue_ingest(queue, document_id)
    return ids


def ingest_document(queue: TaskQueue, *, document_id: int, task_id: str, worker: str | None = None) -> dict:
    """Parse, chunk, embed and store one document on ``worker`` (its heartbeat identity, recorded on the document);
    a large PDF is split into ``ingest.pages`` parts, queued after the commit that recorded them (a redelivery
    re-sends those not done), and then the parts' own claims stand for the document."""
    result = ingestion.ingest_document(document_id, task_id=task_id, split=page_ranges.split_document, worker=worker)
    for first_page, last_page in result.parts:
        queue.enqueue("ingest.pages", document_id, task_id, first_page, last_page)
    if result.parts:
        ingestion.release_claim(document_id, task_id=task_id, worker=worker)
    return result.to_dict()
