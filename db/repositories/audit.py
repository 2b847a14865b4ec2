"""The audit log: who did what, when, to which base."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import delete, func, insert, select
from sqlalchemy.orm import Session

from db.models import AuditEvent


def add(
    *, session: Session, action: str, user_id: int | None, username: str, kb_id: int | None = None,
    target: str = "", details: dict[str, Any] | None = None, client_addr: str = "",
) -> None:
    # A plain INSERT (no unit of work, no id read back): an entry is written on every search and API call.
    session.execute(insert(AuditEvent).values(action=action, user_id=user_id, username=username[:64], kb_id=kb_id,
                                              target=target[:500], details=details or {},
                                              client_addr=client_addr[:64]))


def count_since(*, session: Session, action: str, since: datetime, username: str | None = None,
                client_addr: str | None = None) -> tuple[int, datetime | None]:
    """How many ``action`` entries since ``since`` (for a username, case-insensitive, or an address), and the
    oldest one's time."""
    query = select(func.count(), func.min(AuditEvent.at)).where(AuditEvent.action == action, AuditEvent.at >= since)
    if username is not None:
        query = query.where(func.lower(AuditEvent.username) == username.strip().lower()[:64])
    if client_addr is not None:
        query = query.where(AuditEvent.client_addr == client_addr[:64])
    count, oldest = session.execute(query).one()
    return int(count or 0), oldest


def search(
    *, session: Session, since: datetime | None = None, username: str | None = None, action: str | None = None,
    kb_id: int | None = None, limit: int = 500,
) -> list[AuditEvent]:
    """Newest first."""
    query = select(AuditEvent)
    if since is not None:
        query = query.where(AuditEvent.at >= since)
    if username:
        query = query.where(func.lower(AuditEvent.username) == username.strip().lower())
    if action:
        query = query.where(AuditEvent.action.startswith(action))
    if kb_id is not None:
        query = query.where(AuditEvent.kb_id == kb_id)
    return list(session.scalars(query.order_by(AuditEvent.at.desc(), AuditEvent.id.desc()).limit(limit)))


def delete_before(*, session: Session, before: datetime) -> int:
    return session.execute(delete(AuditEvent).where(AuditEvent.at < before)).rowcount
