"""The demo knowledge base that ``make run`` loads on first start (files shipped in ``demo/``)."""

from __future__ import annotations

from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from infra.settings import Settings
from rag.access import Actor
from tasks.backend import get_backend
from usecases.documents import upload_files
from usecases.knowledge_bases import create_kb

DEMO_SUFFIXES = (".pdf", ".md", ".txt")


def load_demo(settings: Settings) -> int:
    """Create the demo base and queue its files, once; returns how many files were queued (0 if it exists)."""
    files = sorted(p for p in settings.demo_dir.glob("*") if p.suffix.lower() in DEMO_SUFFIXES)
    if not files:
        return 0
    with session_scope() as session:
        if kb_repo.get_by_name(session=session, name=settings.demo_kb) is not None:
            return 0
    loader = Actor.operator("demo loader")  # the base is owned by the first admin
    kb_id, _ = create_kb(loader, name=settings.demo_kb)
    outcomes = upload_files(get_backend(), loader, kb_id=kb_id, files=[(p.name, p.read_bytes()) for p in files])
    return sum(o.status == "queued" for o in outcomes)
