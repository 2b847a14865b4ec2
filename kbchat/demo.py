"""The demo knowledge base that ``make run`` loads on first start (files shipped in ``demo/``)."""

from __future__ import annotations

from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from infra.settings import Settings
from rag.library import get_or_create_kb, store_upload
from tasks.client import enqueue_ingest

DEMO_SUFFIXES = (".pdf", ".md", ".txt")


def load_demo(settings: Settings) -> int:
    """Create the demo base and queue its files, once; returns how many files were queued (0 if it exists)."""
    files = sorted(p for p in settings.demo_dir.glob("*") if p.suffix.lower() in DEMO_SUFFIXES)
    if not files:
        return 0
    with session_scope() as session:
        if kb_repo.get_by_name(session=session, name=settings.demo_kb) is not None:
            return 0
        kb = get_or_create_kb(session=session, name=settings.demo_kb)
        outcomes = [store_upload(session=session, kb_id=kb.id, filename=p.name, data=p.read_bytes()) for p in files]
    queued = [o.document_id for o in outcomes if o.status == "queued" and o.document_id]
    for document_id in queued:
        enqueue_ingest(document_id)
    return len(queued)
