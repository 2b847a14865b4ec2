"""Queries for the monitoring page: counts and sizes, documents that stalled, documents that failed."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, or_, select, text
from sqlalchemy.orm import Session

from db.models import ACTIVE_STATES, FAILED, Document, IngestPart, KnowledgeBase

# The tables whose size an admin asks about; the rest are small.
SIZED_TABLES = ("chunks", "documents", "document_blobs", "messages", "conversations", "knowledge_bases")


def figures(*, session: Session) -> dict:
    """Knowledge bases, documents by status, chunks, and the database's size."""
    by_status = dict(session.execute(select(Document.status, func.count()).group_by(Document.status)).all())
    return {
        "knowledge_bases": session.scalar(select(func.count()).select_from(KnowledgeBase)) or 0,
        "documents": sum(by_status.values()),
        "documents_by_status": by_status,
        # The documents' own counts: exact, and far cheaper than count(*) over millions of chunks.
        "chunks": int(session.scalar(select(func.coalesce(func.sum(Document.chunk_count), 0))) or 0),
        "database_bytes": int(session.scalar(text("SELECT pg_database_size(current_database())")) or 0),
    }


def table_sizes(*, session: Session) -> list[dict]:
    """Per table: rows (the statistics collector's live-row estimate), data, index and total bytes."""
    rows = session.execute(
        text(
            "SELECT c.relname AS name, coalesce(s.n_live_tup, greatest(c.reltuples, 0))::bigint AS rows,"
            " pg_relation_size(c.oid) AS data_bytes, pg_indexes_size(c.oid) AS index_bytes,"
            " pg_total_relation_size(c.oid) AS total_bytes"
            " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE n.nspname = current_schema() AND c.relkind = 'r' AND c.relname = ANY(:names)"
            " ORDER BY total_bytes DESC"
        ),
        {"names": list(SIZED_TABLES)},
    ).mappings()
    return [dict(row) for row in rows]


def index_sizes(*, session: Session, limit: int = 12) -> list[dict]:
    """The largest indexes (the HNSW index on chunks is usually first)."""
    rows = session.execute(
        text(
            "SELECT indexrelname AS index, relname AS table, pg_relation_size(indexrelid) AS bytes"
            " FROM pg_stat_user_indexes ORDER BY bytes DESC LIMIT :limit"
        ),
        {"limit": limit},
    ).mappings()
    return [dict(row) for row in rows]


def stalled_documents(*, session: Session, older_than: timedelta, limit: int = 200) -> list[dict]:
    """Documents in a non-final state whose row has not moved for longer than ``older_than``, oldest first."""
    cutoff = datetime.now().astimezone() - older_than
    rows = session.execute(
        select(Document, KnowledgeBase.name)
        .join(KnowledgeBase, KnowledgeBase.id == Document.kb_id)
        .where(Document.status.in_(ACTIVE_STATES), Document.updated_at < cutoff)
        .order_by(Document.updated_at)
        .limit(limit)
    ).all()
    return [_stalled_row(document, kb_name) for document, kb_name in rows]


def claimed_documents(*, session: Session, limit: int = 500) -> list[dict]:
    """Documents in a non-final state that a worker claimed (or a part of their current run), or that went back to
    the queue because a worker was lost; each with the workers of its claims (``workers``)."""
    part_workers = (
        select(IngestPart.document_id, IngestPart.worker)
        .join(Document, Document.id == IngestPart.document_id)
        .where(IngestPart.done.is_(False), IngestPart.worker.is_not(None), IngestPart.run == Document.task_id,
               Document.status.in_(ACTIVE_STATES))
    )
    by_document: dict[int, set[str]] = {}
    for document_id, worker in session.execute(part_workers):
        by_document.setdefault(int(document_id), set()).add(worker)
    rows = session.execute(
        select(Document, KnowledgeBase.name)
        .join(KnowledgeBase, KnowledgeBase.id == Document.kb_id)
        .where(Document.status.in_(ACTIVE_STATES),
               or_(Document.worker.is_not(None), Document.lost_worker.is_not(None),
                   Document.id.in_(list(by_document) or [-1])))
        .order_by(Document.updated_at)
        .limit(limit)
    ).all()
    found = []
    for document, kb_name in rows:
        row = _stalled_row(document, kb_name)
        row["workers"] = ({document.worker} if document.worker else set()) | by_document.get(document.id, set())
        found.append(row)
    return found


def _stalled_row(document: Document, kb_name: str) -> dict:
    return {
        "id": document.id,
        "kb_id": document.kb_id,
        "kb": kb_name,
        "filename": document.filename,
        "status": document.status,
        "progress": document.progress,
        "attempts": document.attempts,
        "task_id": document.task_id,
        "worker": document.worker,
        "lost_worker": document.lost_worker,
        "created_at": document.created_at,
        "updated_at": document.updated_at,
    }


def failed_document_ids(*, session: Session) -> list[int]:
    """Every failed document, in every knowledge base."""
    return list(session.scalars(select(Document.id).where(Document.status == FAILED).order_by(Document.id)))


def document_summary(*, session: Session, document_id: int) -> dict | None:
    """What the status page says about the document a task concerns."""
    row = session.execute(
        select(Document, KnowledgeBase.name)
        .join(KnowledgeBase, KnowledgeBase.id == Document.kb_id)
        .where(Document.id == document_id)
    ).first()
    if row is None:
        return None
    document, kb_name = row
    return {
        "id": document.id,
        "kb_id": document.kb_id,
        "kb": kb_name,
        "filename": document.filename,
        "status": document.status,
        "pages": document.pages,
        "chunks": document.chunk_count,
        "error": document.error,
    }
