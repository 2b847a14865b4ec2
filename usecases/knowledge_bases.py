"""Knowledge bases: create, rename, delete, and change how a base is chunked (which re-indexes it)."""

from __future__ import annotations

from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from rag import library
from usecases.documents import enqueue_ingest
from usecases.ports import TaskQueue


def create_kb(*, name: str) -> tuple[int, str]:
    """The knowledge base called ``name``, created if new; returns (id, normalised name). ValueError: bad name."""
    with session_scope() as session:
        kb = library.get_or_create_kb(session=session, name=name)
        return kb.id, kb.name


def rename_kb(*, kb_id: int, name: str) -> str:
    """Rename a base; returns the name as stored. ValueError when it is empty, too long or taken."""
    with session_scope() as session:
        library.rename_kb(session=session, kb_id=kb_id, name=name)
    return " ".join(name.split())


def delete_kb(*, kb_id: int) -> None:
    """Delete a base and everything in it (documents, stored files, chunks, conversations)."""
    with session_scope() as session:
        library.delete_kb(session=session, kb_id=kb_id)


def change_chunking(queue: TaskQueue, *, kb_id: int, chunk_tokens: int, chunk_overlap_tokens: int) -> list[int]:
    """New chunk settings for a base, saved with every document put back to queued in one transaction, then
    re-indexed; returns the document ids queued. ValueError when the overlap is not below the chunk size."""
    if chunk_overlap_tokens >= chunk_tokens:
        raise ValueError("The overlap must be smaller than the chunk size.")
    with session_scope() as session:
        kb_repo.set_chunking(session=session, kb_id=kb_id, chunk_tokens=chunk_tokens,
                             chunk_overlap_tokens=chunk_overlap_tokens)
        ids = library.reindex(session=session, kb_id=kb_id)
    for document_id in ids:
        enqueue_ingest(queue, document_id)
    return ids
