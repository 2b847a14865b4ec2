"""Queries on documents and their blobs."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from db.models import ACTIVE_STATES, FAILED, QUEUED, READY, Document, DocumentBlob


def create_with_blob(
    *, session: Session, kb_id: int, filename: str, sha256: str, mime: str | None, data: bytes
) -> Document:
    """Store a new queued document and its bytes in the caller's transaction."""
    document = Document(
        kb_id=kb_id,
        filename=filename,
        sha256=sha256,
        mime=mime,
        size_bytes=len(data),
        status=QUEUED,
        chunk_count=0,
        progress=0.0,
        progress_done=0,
        progress_total=0,
        attempts=0,
    )
    session.add(document)
    session.flush()
    session.add(DocumentBlob(document_id=document.id, data=data))
    session.flush()
    return document


def get(*, session: Session, document_id: int) -> Document | None:
    return session.get(Document, document_id)


def lock(*, session: Session, document_id: int) -> Document | None:
    """The document, fresh from the database and locked until the caller's transaction ends."""
    return session.scalar(
        select(Document).where(Document.id == document_id).with_for_update().execution_options(populate_existing=True)
    )


def get_blob(*, session: Session, document_id: int) -> bytes | None:
    return session.scalar(select(DocumentBlob.data).where(DocumentBlob.document_id == document_id))


def find_by_sha256(*, session: Session, kb_id: int, sha256: str) -> Document | None:
    return session.scalar(select(Document).where(Document.kb_id == kb_id, Document.sha256 == sha256))


def list_for_kb(*, session: Session, kb_id: int, limit: int = 500) -> list[Document]:
    return list(
        session.scalars(
            select(Document).where(Document.kb_id == kb_id).order_by(Document.created_at.desc(), Document.id.desc()).limit(limit)
        )
    )


def list_by_ids(*, session: Session, document_ids: list[int]) -> list[Document]:
    if not document_ids:
        return []
    return list(session.scalars(select(Document).where(Document.id.in_(document_ids)).order_by(Document.id)))


def set_task(*, session: Session, document_id: int, task_id: str) -> None:
    session.execute(update(Document).where(Document.id == document_id).values(task_id=task_id))


def set_stage(
    *, session: Session, document_id: int, status: str, done: int = 0, total: int = 0, pages: int | None = None
) -> None:
    """Record the stage a document is in and how far along it is."""
    values: dict = {
        "status": status,
        "progress_done": done,
        "progress_total": total,
        "progress": (done / total) if total else 0.0,
        "error": None,
    }
    if pages is not None:
        values["pages"] = pages
    session.execute(update(Document).where(Document.id == document_id).values(**values))


def mark_started(*, session: Session, document_id: int, worker: str | None = None) -> None:
    """An attempt starts: counted, and claimed by ``worker`` (its heartbeat identity) when known."""
    session.execute(
        update(Document)
        .where(Document.id == document_id)
        .values(started_at=func.now(), attempts=Document.attempts + 1, error=None, finished_at=None,
                worker=worker, claimed_at=func.now() if worker else None)
    )


def release_claim(*, session: Session, document_id: int, task_id: str, worker: str | None) -> None:
    """The task that split the document is done with it (its parts carry their own claims)."""
    session.execute(
        update(Document)
        .where(Document.id == document_id, Document.task_id == task_id, Document.worker == worker)
        .values(worker=None, claimed_at=None)
    )


def list_claimed(*, session: Session) -> list[Document]:
    """Documents in a non-final state that a worker has claimed (the dead-worker rule looks at these)."""
    return list(
        session.scalars(
            select(Document).where(Document.status.in_(ACTIVE_STATES), Document.worker.is_not(None)).order_by(Document.id)
        )
    )


def names(*, session: Session, kb_id: int) -> dict[int, str]:
    """Every document of a base: id → file name."""
    return {int(i): name for i, name in session.execute(select(Document.id, Document.filename).where(
        Document.kb_id == kb_id))}


def set_context(*, session: Session, document_id: int, context: str | None) -> None:
    """Record the context header the document's chunks are embedded and indexed with."""
    session.execute(update(Document).where(Document.id == document_id).values(context=context))


def mark_ready(
    *, session: Session, document_id: int, pages: int, chunk_count: int, note: str | None = None
) -> None:
    """Ready; ``note`` (kept in ``error``, shown beside the ready row) says what a person should know, e.g. pages
    OCR could not read."""
    session.execute(
        update(Document)
        .where(Document.id == document_id)
        .values(
            status=READY, pages=pages, chunk_count=chunk_count, progress=1.0, error=note, finished_at=func.now()
        )
    )


def mark_failed(*, session: Session, document_id: int, error: str) -> None:
    session.execute(
        update(Document)
        .where(Document.id == document_id)
        .values(status=FAILED, error=error[:2000], finished_at=func.now())
    )


def list_stuck(*, session: Session, older_than: timedelta) -> list[Document]:
    """Documents in a non-final state whose row has not moved for longer than ``older_than``."""
    cutoff = datetime.now().astimezone() - older_than
    return list(
        session.scalars(
            select(Document).where(Document.status.in_(ACTIVE_STATES), Document.updated_at < cutoff).order_by(Document.id)
        )
    )


def touch_queued(*, session: Session, document_id: int, lost_worker: str | None = None) -> None:
    """Put a document back to queued (before it is re-enqueued); ``lost_worker`` is the worker whose loss sent it."""
    values: dict = {"status": QUEUED, "progress": 0.0, "progress_done": 0, "progress_total": 0, "error": None,
                    "updated_at": func.now(), "worker": None, "claimed_at": None, "lost_worker": lost_worker}
    session.execute(update(Document).where(Document.id == document_id).values(**values))


def set_lost_worker(*, session: Session, document_id: int, worker: str) -> None:
    """Note the worker whose loss sent (a part of) the document back to the queue."""
    session.execute(update(Document).where(Document.id == document_id).values(lost_worker=worker))


def delete_document(*, session: Session, document_id: int) -> None:
    """Delete a document; its blob and chunks go with it (ON DELETE CASCADE)."""
    session.execute(delete(Document).where(Document.id == document_id))


def list_ids(*, session: Session, kb_id: int, statuses: tuple[str, ...] | None = None) -> list[int]:
    query = select(Document.id).where(Document.kb_id == kb_id)
    if statuses:
        query = query.where(Document.status.in_(statuses))
    return list(session.scalars(query.order_by(Document.id)))


def requeue(*, session: Session, document_ids: list[int]) -> None:
    """Put documents back to queued for re-indexing or retry (their chunks stay until the new ones replace them)."""
    if document_ids:
        session.execute(
            update(Document)
            .where(Document.id.in_(document_ids))
            .values(status=QUEUED, progress=0.0, progress_done=0, progress_total=0, error=None, attempts=0,
                    finished_at=None, updated_at=func.now(), worker=None, claimed_at=None, lost_worker=None)
        )


def find_by_filename(*, session: Session, kb_id: int, filename: str) -> Document | None:
    return session.scalar(
        select(Document).where(Document.kb_id == kb_id, Document.filename == filename).order_by(Document.id.desc()).limit(1)
    )
