"""Knowledge bases: list, create, rename, delete, and change how a base is chunked (which re-indexes it).

Whoever creates a base owns it; a base the operator creates (a shell on the server, the demo loader) is owned
by the first admin. Renaming, deleting and chunk settings take ``owner``.
"""

from __future__ import annotations

from db.repositories import identity as identity_repo
from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from rag import library
from rag.access import OWNER, Actor, Forbidden, NotFound
from usecases.access import level_of, readable_kb_ids, require_kb
from usecases.audit import record
from usecases.documents import enqueue_ingest
from usecases.ports import TaskQueue


def list_kbs(actor: Actor) -> list[dict]:
    """The bases the actor may read, by name, with their level: [{"id", "name", "level"}]."""
    with session_scope() as session:
        bases = kb_repo.list_knowledge_bases(session=session, only=readable_kb_ids(actor))
        levels = (identity_repo.levels_on_all(session=session, user_id=actor.user_id)
                  if not actor.is_admin and actor.user_id is not None else {})
        return [{"id": kb.id, "name": kb.name, "level": "owner" if actor.is_admin else levels.get(kb.id, "viewer")}
                for kb in bases]


def overview(actor: Actor) -> list[dict]:
    """Every base the actor may read with its document and chunk counts and the actor's level."""
    with session_scope() as session:
        rows = kb_repo.overview(session=session, only=readable_kb_ids(actor))
        levels = (identity_repo.levels_on_all(session=session, user_id=actor.user_id)
                  if not actor.is_admin and actor.user_id is not None else {})
        return [{**row, "level": "owner" if actor.is_admin else levels.get(row["id"], "viewer")} for row in rows]


def get_kb(actor: Actor, *, kb_id: int) -> dict:
    with session_scope() as session:
        kb = require_kb(session, actor, kb_id)
        return {"id": kb.id, "name": kb.name, "level": level_of(session, actor, kb.id),
                "chunk_tokens": kb.chunk_tokens, "chunk_overlap_tokens": kb.chunk_overlap_tokens,
                "embedding_model": kb.embedding_model, "created_at": kb.created_at}


def find_kb(actor: Actor, *, name: str) -> int:
    """The id of the base called ``name`` that the actor may read; NotFound otherwise."""
    with session_scope() as session:
        kb = kb_repo.get_by_name(session=session, name=" ".join(name.split()))
        if kb is None or level_of(session, actor, kb.id) is None:
            raise NotFound(f"No knowledge base called {name!r}.")
        return kb.id


def create_kb(actor: Actor, *, name: str) -> tuple[int, str]:
    """The knowledge base called ``name``, created (and owned by the actor) if new; returns (id, normalised name).
    ValueError: a bad name, or one another user's base has."""
    if actor.user_id is None and not actor.is_admin:
        raise Forbidden("No user is signed in.")
    with session_scope() as session:
        existing = kb_repo.get_by_name(session=session, name=" ".join(name.split()))
        if existing is not None:
            if level_of(session, actor, existing.id) is None:
                raise ValueError("That name is taken; choose another.")
            return existing.id, existing.name
        kb = library.get_or_create_kb(session=session, name=name)
        owner_id = actor.user_id
        if owner_id is None:  # the operator: the first admin owns it
            admins = [u for u in identity_repo.list_users(session=session) if u.role == "admin" and not u.disabled]
            owner_id = min(admins, key=lambda u: u.id).id if admins else None
        if owner_id is not None:
            identity_repo.set_grant(session=session, kb_id=kb.id, level=OWNER, user_id=owner_id)
        record(session, actor, "kb.create", kb_id=kb.id, target=kb.name)
        return kb.id, kb.name


def rename_kb(actor: Actor, *, kb_id: int, name: str) -> str:
    """Rename a base; returns the name as stored. ValueError when it is empty, too long or taken."""
    with session_scope() as session:
        kb = require_kb(session, actor, kb_id, OWNER)
        old = kb.name
        library.rename_kb(session=session, kb_id=kb.id, name=name)
        record(session, actor, "kb.rename", kb_id=kb.id, target=" ".join(name.split()), old=old)
    return " ".join(name.split())


def delete_kb(actor: Actor, *, kb_id: int) -> None:
    """Delete a base and everything in it (documents, stored files, chunks, conversations, grants)."""
    with session_scope() as session:
        kb = require_kb(session, actor, kb_id, OWNER)
        record(session, actor, "kb.delete", kb_id=kb.id, target=kb.name)
        library.delete_kb(session=session, kb_id=kb.id)


def change_chunking(queue: TaskQueue, actor: Actor, *, kb_id: int, chunk_tokens: int,
                    chunk_overlap_tokens: int) -> list[int]:
    """New chunk settings for a base, saved with every document put back to queued in one transaction, then
    re-indexed; returns the document ids queued. ValueError when the overlap is not below the chunk size."""
    if chunk_overlap_tokens >= chunk_tokens:
        raise ValueError("The overlap must be smaller than the chunk size.")
    with session_scope() as session:
        kb = require_kb(session, actor, kb_id, OWNER)
        kb_repo.set_chunking(session=session, kb_id=kb.id, chunk_tokens=chunk_tokens,
                             chunk_overlap_tokens=chunk_overlap_tokens)
        ids = library.reindex(session=session, kb_id=kb.id)
        record(session, actor, "kb.settings", kb_id=kb.id, target=kb.name, chunk_tokens=chunk_tokens,
               chunk_overlap_tokens=chunk_overlap_tokens, documents=len(ids))
    for document_id in ids:
        enqueue_ingest(queue, document_id, actor=actor)
    return ids
