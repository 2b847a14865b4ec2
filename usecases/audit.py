"""The audit log: written in the same transaction as what it records; read by admins only."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy.orm import Session

from db.repositories import audit as audit_repo
from infra.database import relaxed_commit, session_scope
from infra.settings import get_settings
from rag.access import Actor
from usecases.access import require_admin

# What is recorded (the ``action`` column).
ACTIONS = (
    "login.success", "login.failure", "login.throttled", "logout",
    "user.create", "user.disable", "user.enable", "user.password", "user.role",
    "group.create", "group.delete", "group.member.add", "group.member.remove",
    "grant.set", "grant.remove",
    "kb.create", "kb.rename", "kb.delete", "kb.settings",
    "document.upload", "document.delete", "document.reindex",
    "question",
)


def record(session: Session, actor: Actor, action: str, *, kb_id: int | None = None, target: str = "",
           **details: Any) -> None:
    """Add an entry for ``actor``; never pass a password or a token in ``details``."""
    audit_repo.add(session=session, action=action, user_id=actor.user_id, username=actor.username, kb_id=kb_id,
                   target=target, details=details, client_addr=actor.client_addr)


def record_now(actor: Actor, action: str, *, kb_id: int | None = None, target: str = "", **details: Any) -> None:
    """``record`` in a transaction of its own (for what happens outside one, e.g. a question answered)."""
    with session_scope() as session:
        relaxed_commit(session)
        record(session, actor, action, kb_id=kb_id, target=target, **details)


def list_events(
    actor: Actor, *, since: datetime | None = None, username: str | None = None, action: str | None = None,
    kb_id: int | None = None, limit: int = 500,
) -> list[dict]:
    """Newest first, as JSON-ready dicts. Admins only."""
    require_admin(actor, "The audit log")
    with session_scope() as session:
        rows = audit_repo.search(session=session, since=since, username=username, action=action, kb_id=kb_id,
                                 limit=limit)
        return [
            {"id": r.id, "at": r.at.isoformat(), "user": r.username, "user_id": r.user_id, "action": r.action,
             "kb_id": r.kb_id, "target": r.target, "details": r.details, "client_addr": r.client_addr}
            for r in rows
        ]


def trim(*, now: datetime | None = None) -> int:
    """Remove entries older than the retention setting (the cleanup job); returns how many."""
    before = (now or datetime.now(UTC)) - timedelta(days=get_settings().audit_retention_days)
    with session_scope() as session:
        return audit_repo.delete_before(session=session, before=before)
