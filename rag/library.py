"""Knowledge bases and uploads: create or find a base, store an upload once, refuse what cannot be stored."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from dataclasses import asdict, dataclass

from sqlalchemy.orm import Session

from db.repositories import documents as document_repo
from db.repositories import knowledge_bases as kb_repo
from infra.settings import get_settings
from rag import embedding
from rag.context import CHUNK_RECIPE
from rag.parsing import ParseError, sniff

MIME_TYPES = {
    "pdf": "application/pdf",
    "markdown": "text/markdown",
    "html": "text/html",
    "csv": "text/csv",
    "docx": "application/vnd.openxmlformats-officedocument.wordprocessingml.document",
    "text": "text/plain",
}


@dataclass
class UploadOutcome:
    filename: str
    status: str  # queued | duplicate | rejected
    document_id: int | None = None
    duplicate_of: int | None = None
    error: str | None = None
    # An older document with the same name but other content, which the user may want this one to replace.
    same_name_as: int | None = None
    task_id: str | None = None  # the ingest task of a queued document (set once it is queued)

    def to_dict(self) -> dict:
        return asdict(self)


def get_or_create_kb(*, session: Session, name: str):
    """The knowledge base called ``name``, created with the current embedding and chunk settings if new."""
    name = " ".join(name.split())
    if not name:
        raise ValueError("A knowledge base needs a name.")
    if len(name) > 200:
        raise ValueError("A knowledge base name can be at most 200 characters.")
    kb = kb_repo.get_by_name(session=session, name=name)
    if kb is None:
        settings = get_settings()
        kb = kb_repo.create(
            session=session,
            name=name,
            embedding_model=embedding.model_label(),
            embedding_dim=settings.embedding_dim,
            chunk_tokens=settings.chunk_tokens,
            chunk_overlap_tokens=settings.chunk_overlap_tokens,
            chunk_recipe=CHUNK_RECIPE,
        )
    return kb


def safe_filename(name: str) -> str:
    """A display name without path parts or control characters, at most 255 bytes, never empty."""
    name = unicodedata.normalize("NFC", name or "")
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    if not name:
        name = "unnamed"
    while len(name.encode("utf-8")) > 255:
        stem, dot, ext = name.rpartition(".")
        if dot and 0 < len(ext) <= 10 and stem:
            name = stem[:-1] + "." + ext
        else:
            name = name[:-1]
    return name


def store_upload(*, session: Session, kb_id: int, filename: str, data: bytes) -> UploadOutcome:
    """Store one uploaded file as a queued document, or say why not; the caller enqueues after commit."""
    settings = get_settings()
    filename = safe_filename(filename)
    limit = settings.max_upload_mb * 1024 * 1024
    if len(data) > limit:
        return UploadOutcome(
            filename, "rejected", error=f"The file is {len(data) / 1048576:.1f} MB; the limit is {settings.max_upload_mb} MB."
        )
    try:
        kind = sniff(data, filename)
    except ParseError as exc:
        return UploadOutcome(filename, "rejected", error=str(exc))
    sha256 = hashlib.sha256(data).hexdigest()
    existing = document_repo.find_by_sha256(session=session, kb_id=kb_id, sha256=sha256)
    if existing is not None and existing.status == "failed":
        # The same bytes failed before (e.g. a worker bug since fixed): uploading again means "try again".
        document_repo.requeue(session=session, document_ids=[existing.id])
        return UploadOutcome(filename, "queued", document_id=existing.id)
    if existing is not None:
        return UploadOutcome(
            filename,
            "duplicate",
            document_id=existing.id,
            duplicate_of=existing.id,
            error=f"Same content as '{existing.filename}' (document {existing.id}), already in this knowledge base.",
        )
    mime = MIME_TYPES.get(kind, "text/plain")
    older = document_repo.find_by_filename(session=session, kb_id=kb_id, filename=filename)
    document = document_repo.create_with_blob(
        session=session, kb_id=kb_id, filename=filename, sha256=sha256, mime=mime, data=data
    )
    return UploadOutcome(filename, "queued", document_id=document.id, same_name_as=older.id if older else None)


def rename_kb(*, session: Session, kb_id: int, name: str) -> None:
    """Rename a base; names stay unique."""
    name = " ".join(name.split())
    if not name or len(name) > 200:
        raise ValueError("A knowledge base name needs 1 to 200 characters.")
    existing = kb_repo.get_by_name(session=session, name=name)
    if existing is not None and existing.id != kb_id:
        raise ValueError(f"There is already a knowledge base called '{name}'.")
    kb_repo.rename(session=session, kb_id=kb_id, name=name)


def delete_kb(*, session: Session, kb_id: int) -> None:
    """Delete a base and everything in it (documents, blobs, chunks, conversations) — that base only."""
    kb_repo.delete_kb(session=session, kb_id=kb_id)


def delete_document(*, session: Session, kb_id: int, document_id: int) -> bool:
    """Delete one document of ``kb_id`` with its chunks and blob, in the caller's transaction."""
    document = document_repo.get(session=session, document_id=document_id)
    if document is None or document.kb_id != kb_id:
        return False
    document_repo.delete_document(session=session, document_id=document_id)
    kb_repo.bump_version(session=session, kb_id=kb_id)
    return True


def reindex(*, session: Session, kb_id: int, document_ids: list[int] | None = None,
            only_failed: bool = False) -> list[int]:
    """Put documents of the base back to queued; returns the ids to enqueue once the transaction commits."""
    ids = document_repo.list_ids(session=session, kb_id=kb_id, statuses=("failed",) if only_failed else None)
    if document_ids is not None:
        wanted = set(document_ids)
        ids = [i for i in ids if i in wanted]
    document_repo.requeue(session=session, document_ids=ids)
    return ids
