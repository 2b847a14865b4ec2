"""Queries that find where documents, chunks and blobs disagree (each optionally scoped to one knowledge base)."""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.orm import Session

_SCOPE = "(CAST(:kb_id AS bigint) IS NULL OR {column} = :kb_id)"

_READY_MISMATCH = text(f"""
    SELECT d.id, d.kb_id, d.filename, d.chunk_count,
           count(c.id) AS actual,
           count(c.id) FILTER (WHERE c.embedding IS NULL) AS missing_embeddings,
           count(c.id) FILTER (WHERE c.embedding IS NOT NULL AND vector_dims(c.embedding) <> k.embedding_dim)
               AS wrong_dimension,
           count(c.id) FILTER (WHERE c.kb_id <> d.kb_id) AS wrong_base
    FROM documents d
    JOIN knowledge_bases k ON k.id = d.kb_id
    LEFT JOIN chunks c ON c.document_id = d.id
    WHERE d.status = 'ready' AND {_SCOPE.format(column="d.kb_id")}
    GROUP BY d.id, k.embedding_dim
    HAVING count(c.id) <> d.chunk_count OR count(c.id) = 0
        OR count(c.id) FILTER (WHERE c.embedding IS NULL) > 0
        OR count(c.id) FILTER (WHERE c.embedding IS NOT NULL AND vector_dims(c.embedding) <> k.embedding_dim) > 0
        OR count(c.id) FILTER (WHERE c.kb_id <> d.kb_id) > 0
    ORDER BY d.id
""")

_FAILED_WITH_CHUNKS = text(f"""
    SELECT d.id, d.kb_id, d.filename, count(c.id) AS actual
    FROM documents d JOIN chunks c ON c.document_id = d.id
    WHERE d.status = 'failed' AND {_SCOPE.format(column="d.kb_id")}
    GROUP BY d.id ORDER BY d.id
""")

_ORPHAN_CHUNKS = text(f"""
    SELECT c.kb_id, count(*) FROM chunks c
    WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document_id) AND {_SCOPE.format(column="c.kb_id")}
    GROUP BY c.kb_id
""")

_ORPHAN_BLOBS = text("""
    SELECT count(*) FROM document_blobs b WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = b.document_id)
""")

_MISSING_BLOBS = text(f"""
    SELECT d.id, d.kb_id, d.filename FROM documents d
    WHERE NOT EXISTS (SELECT 1 FROM document_blobs b WHERE b.document_id = d.id) AND {_SCOPE.format(column="d.kb_id")}
    ORDER BY d.id
""")


def ready_mismatches(*, session: Session, kb_id: int | None) -> list[dict]:
    """Ready documents whose stored chunks do not match what they should be (count, embeddings, base)."""
    return [dict(row._mapping) for row in session.execute(_READY_MISMATCH, {"kb_id": kb_id})]


def failed_with_chunks(*, session: Session, kb_id: int | None) -> list[dict]:
    """Failed documents that still have searchable chunks."""
    return [dict(row._mapping) for row in session.execute(_FAILED_WITH_CHUNKS, {"kb_id": kb_id})]


def orphan_chunks(*, session: Session, kb_id: int | None) -> dict[int, int]:
    """Chunks whose document is gone, counted by knowledge base."""
    return {int(k): int(n) for k, n in session.execute(_ORPHAN_CHUNKS, {"kb_id": kb_id})}


def orphan_blobs(*, session: Session) -> int:
    return int(session.execute(_ORPHAN_BLOBS).scalar() or 0)


def missing_blobs(*, session: Session, kb_id: int | None) -> list[dict]:
    """Documents whose original file is gone (they cannot be re-indexed)."""
    return [dict(row._mapping) for row in session.execute(_MISSING_BLOBS, {"kb_id": kb_id})]


def delete_chunks_of(*, session: Session, document_ids: list[int]) -> int:
    if not document_ids:
        return 0
    session.execute(text("DELETE FROM document_lexemes WHERE document_id = ANY(:ids)"), {"ids": document_ids})
    return session.execute(text("DELETE FROM chunks WHERE document_id = ANY(:ids)"), {"ids": document_ids}).rowcount


def delete_orphan_chunks(*, session: Session, kb_id: int | None) -> int:
    return session.execute(text(f"""
        DELETE FROM chunks c WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = c.document_id)
        AND {_SCOPE.format(column="c.kb_id")}"""), {"kb_id": kb_id}).rowcount


def delete_orphan_blobs(*, session: Session) -> int:
    return session.execute(text("""
        DELETE FROM document_blobs b WHERE NOT EXISTS (SELECT 1 FROM documents d WHERE d.id = b.document_id)""")).rowcount
