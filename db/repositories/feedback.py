"""Queries on answer feedback."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Select, func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import AnswerFeedback, KnowledgeBase


def upsert(*, session: Session, values: dict) -> None:
    """One row per user and answer: a second rating replaces the first."""
    statement = insert(AnswerFeedback).values(**values)
    session.execute(statement.on_conflict_do_update(
        constraint="uq_answer_feedback_task_user",
        set_={k: statement.excluded[k] for k in ("rating", "comment", "created_at")},
    ))


def of_user(*, session: Session, user_id: int | None, task_ids: list[str]) -> dict[str, AnswerFeedback]:
    if not task_ids:
        return {}
    query = select(AnswerFeedback).where(AnswerFeedback.task_id.in_(task_ids))
    query = query.where(AnswerFeedback.user_id == user_id) if user_id is not None else query.where(
        AnswerFeedback.user_id.is_(None))
    return {f.task_id: f for f in session.scalars(query)}


def search(*, session: Session, only: Select | None, kb_id: int | None = None, since: datetime | None = None,
           limit: int = 1000) -> list[tuple[AnswerFeedback, str]]:
    """Newest first, with each row's base name; ``only``: a subquery of the base ids the reader may see."""
    query = select(AnswerFeedback, KnowledgeBase.name).join(KnowledgeBase, KnowledgeBase.id == AnswerFeedback.kb_id)
    if only is not None:
        query = query.where(AnswerFeedback.kb_id.in_(only))
    if kb_id is not None:
        query = query.where(AnswerFeedback.kb_id == kb_id)
    if since is not None:
        query = query.where(AnswerFeedback.created_at >= since)
    rows = session.execute(query.order_by(AnswerFeedback.created_at.desc()).limit(limit)).all()
    return [(f, name) for f, name in rows]


def daily_rates(*, session: Session, only: Select | None, kb_id: int | None = None) -> list[tuple]:
    """(day, ratings, helpful) per day, oldest first."""
    day = func.date_trunc("day", AnswerFeedback.created_at)
    query = select(day, func.count(), func.count().filter(AnswerFeedback.rating > 0))
    if only is not None:
        query = query.where(AnswerFeedback.kb_id.in_(only))
    if kb_id is not None:
        query = query.where(AnswerFeedback.kb_id == kb_id)
    return list(session.execute(query.group_by(day).order_by(day)).all())
