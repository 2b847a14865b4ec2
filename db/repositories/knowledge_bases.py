"""Queries on knowledge bases."""

from __future__ import annotations

from sqlalchemy import Select, delete, func, select, update
from sqlalchemy.orm import Session

from db.models import Chunk, Document, KnowledgeBase


def list_knowledge_bases(*, session: Session, only: Select | None = None) -> list[KnowledgeBase]:
    """Every base by name, or those whose id is in ``only`` (a subquery of ids: the bases a user may read)."""
    query = select(KnowledgeBase).order_by(KnowledgeBase.name)
    if only is not None:
        query = query.where(KnowledgeBase.id.in_(only))
    return list(session.scalars(query))


def get_by_name(*, session: Session, name: str) -> KnowledgeBase | None:
    return session.scalar(select(KnowledgeBase).where(KnowledgeBase.name == name))


def get(*, session: Session, kb_id: int) -> KnowledgeBase | None:
    return session.get(KnowledgeBase, kb_id)


def create(
    *,
    session: Session,
    name: str,
    embedding_model: str,
    embedding_dim: int,
    chunk_tokens: int,
    chunk_overlap_tokens: int,
    chunk_recipe: int = 1,
) -> KnowledgeBase:
    kb = KnowledgeBase(
        name=name,
        chunk_recipe=chunk_recipe,
        embedding_model=embedding_model,
        embedding_dim=embedding_dim,
        chunk_tokens=chunk_tokens,
        chunk_overlap_tokens=chunk_overlap_tokens,
        version=0,
        description="",
    )
    session.add(kb)
    session.flush()
    return kb


def bump_version(*, session: Session, kb_id: int) -> None:
    """Mark the base as changed so answer caches keyed by its version go stale."""
    session.execute(update(KnowledgeBase).where(KnowledgeBase.id == kb_id).values(version=KnowledgeBase.version + 1))


def stats(*, session: Session, kb_id: int) -> dict[str, int]:
    documents = session.scalar(select(func.count()).select_from(Document).where(Document.kb_id == kb_id)) or 0
    chunks = session.scalar(select(func.count()).select_from(Chunk).where(Chunk.kb_id == kb_id)) or 0
    return {"documents": documents, "chunks": chunks}


def rename(*, session: Session, kb_id: int, name: str) -> None:
    session.execute(update(KnowledgeBase).where(KnowledgeBase.id == kb_id).values(name=name))


def set_chunking(*, session: Session, kb_id: int, chunk_tokens: int, chunk_overlap_tokens: int) -> None:
    session.execute(
        update(KnowledgeBase)
        .where(KnowledgeBase.id == kb_id)
        .values(chunk_tokens=chunk_tokens, chunk_overlap_tokens=chunk_overlap_tokens)
    )


def delete_kb(*, session: Session, kb_id: int) -> None:
    """Delete the base; its documents, blobs, chunks and conversations go with it (ON DELETE CASCADE)."""
    session.execute(delete(KnowledgeBase).where(KnowledgeBase.id == kb_id))


def overview(*, session: Session, only: Select | None = None) -> list[dict]:
    """Every base (or those whose id is in ``only``) with its document counts by status and its chunk count, for the knowledge bases page."""
    docs = (
        select(
            Document.kb_id,
            func.count().label("documents"),
            func.count().filter(Document.status == "ready").label("ready"),
            func.count().filter(Document.status == "failed").label("failed"),
            func.coalesce(func.sum(Document.size_bytes), 0).label("bytes"),
            func.coalesce(func.sum(Document.chunk_count), 0).label("chunks"),
        )
        .group_by(Document.kb_id)
        .subquery()
    )
    query = (
        select(KnowledgeBase, docs.c.documents, docs.c.ready, docs.c.failed, docs.c.bytes, docs.c.chunks)
        .outerjoin(docs, docs.c.kb_id == KnowledgeBase.id)
        .order_by(KnowledgeBase.name)
    )
    if only is not None:
        query = query.where(KnowledgeBase.id.in_(only))
    rows = session.execute(query).all()
    return [
        {
            "id": kb.id,
            "name": kb.name,
            "documents": documents or 0,
            "ready": ready or 0,
            "failed": failed or 0,
            "bytes": int(size or 0),
            "chunks": int(chunks or 0),
            "embedding_model": kb.embedding_model,
            "chunk_tokens": kb.chunk_tokens,
            "chunk_overlap_tokens": kb.chunk_overlap_tokens,
            "created_at": kb.created_at,
        }
        for kb, documents, ready, failed, size, chunks in rows
    ]
