"""Alerts raised by the scheduled jobs (and whether the webhook took them)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, text, update
from sqlalchemy.orm import Session

from db.models import Alert


def lock_kind(*, session: Session, kind: str, kb_id: int | None) -> None:
    """Serialise "was this alert sent lately?" checks for one kind and base until the transaction ends."""
    session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": f"alert:{kind}:{kb_id}"})


def last_sent(*, session: Session, kind: str, kb_id: int | None, since: datetime) -> Alert | None:
    """The newest alert of this kind for this base since ``since`` (sent, or not configured: shown on the page)."""
    query = select(Alert).where(Alert.kind == kind, Alert.created_at >= since, Alert.delivery != "failed")
    query = query.where(Alert.kb_id.is_(None) if kb_id is None else Alert.kb_id == kb_id)
    return session.scalars(query.order_by(Alert.created_at.desc()).limit(1)).first()


def add(
    *,
    session: Session,
    kind: str,
    kb_id: int | None,
    message: str,
    payload: dict,
    delivery: str,
    attempts: int,
    delivery_error: str | None,
) -> Alert:
    alert = Alert(
        kind=kind, kb_id=kb_id, message=message, payload=payload, delivery=delivery, attempts=attempts,
        delivery_error=delivery_error,
    )
    session.add(alert)
    session.flush()
    return alert


def set_delivery(*, session: Session, alert_id: int, delivery: str, attempts: int, error: str | None) -> None:
    """What the webhook said, recorded after the POST (which runs outside the transaction that added the alert)."""
    session.execute(
        update(Alert).where(Alert.id == alert_id).values(delivery=delivery, attempts=attempts, delivery_error=error)
    )


def recent(*, session: Session, limit: int = 50) -> list[Alert]:
    return list(session.scalars(select(Alert).order_by(Alert.created_at.desc(), Alert.id.desc()).limit(limit)))


def delete_older_than(*, session: Session, days: int) -> int:
    cutoff = datetime.now(UTC) - timedelta(days=days)
    return session.execute(delete(Alert).where(Alert.created_at < cutoff)).rowcount or 0


def counts_last_day(*, session: Session) -> dict[tuple[str, str], int]:
    """Alerts of the last 24 h per (kind, delivery), for the metrics exporter."""
    rows = session.execute(
        text("SELECT kind, delivery, count(*) FROM alerts WHERE created_at > now() - interval '1 day' GROUP BY 1, 2")
    )
    return {(kind, delivery): n for kind, delivery, n in rows}
