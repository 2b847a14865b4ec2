"""Feedback on answers: whoever asked rates an answer (thumbs up or down, a comment); the owners of a base read
their base's feedback, admins everyone's, to find what retrieval or the model gets wrong."""

from __future__ import annotations

from datetime import datetime

from db.repositories import conversations as conversation_repo
from db.repositories import feedback as feedback_repo
from infra.database import session_scope
from infra.settings import get_settings
from rag.access import Actor, NotFound
from usecases.access import owned_kb_ids, require_conversation, require_kb

MAX_COMMENT = 2000


def rate(actor: Actor, *, task_id: str, rating: int, comment: str = "") -> None:
    """Rate one of the actor's own answers (by the task that made it): ``rating`` 1 (helpful) or -1 (not)."""
    if rating not in (1, -1):
        raise ValueError("A rating is 1 (helpful) or -1 (not helpful).")
    with session_scope() as session:
        message = conversation_repo.find_by_task(session=session, task_id=task_id)
        if message is None or message.role != "assistant":
            raise NotFound(f"No saved answer for task {task_id}.")
        conversation = require_conversation(session, actor, message.conversation_id)
        history = conversation_repo.messages(session=session, conversation_id=conversation.id)
        question = next((m.content for m in reversed(history) if m.role == "user" and m.id < message.id), "")
        feedback_repo.upsert(session=session, values={
            "user_id": actor.user_id, "username": actor.username, "kb_id": conversation.kb_id,
            "conversation_id": conversation.id, "task_id": task_id, "rating": rating,
            "comment": (comment or "").strip()[:MAX_COMMENT], "question": question, "answer": message.content,
            "mode": message.mode, "model": get_settings().tgi_model if message.mode == "llm" else None,
            "retrieved": [{"chunk_id": c.get("chunk_id"), "document": c.get("document"), "page": c.get("page"),
                           "score": c.get("score")} for c in message.citations or []],
            "created_at": datetime.now().astimezone(),
        })


def my_ratings(actor: Actor, *, task_ids: list[str]) -> dict[str, dict]:
    """The actor's ratings of these answers: {task_id: {"rating", "comment"}}."""
    with session_scope() as session:
        found = feedback_repo.of_user(session=session, user_id=actor.user_id, task_ids=task_ids)
        return {t: {"rating": f.rating, "comment": f.comment} for t, f in found.items()}


def list_feedback(actor: Actor, *, kb_id: int | None = None, since: datetime | None = None,
                  limit: int = 1000) -> list[dict]:
    """Feedback on the bases the actor owns (admins: all), newest first, as JSON-ready dicts."""
    with session_scope() as session:
        if kb_id is not None:
            kb_id = require_kb(session, actor, kb_id, "owner").id
        rows = feedback_repo.search(session=session, only=owned_kb_ids(actor), kb_id=kb_id, since=since,
                                    limit=limit)
        return [{"at": f.created_at.isoformat(), "kb": name, "kb_id": f.kb_id, "user": f.username,
                 "rating": f.rating, "comment": f.comment, "question": f.question, "answer": f.answer,
                 "mode": f.mode, "model": f.model, "retrieved": f.retrieved, "task_id": f.task_id}
                for f, name in rows]


def daily_rate(actor: Actor, *, kb_id: int | None = None) -> list[dict]:
    """Per day: how many ratings and the share that were helpful."""
    with session_scope() as session:
        if kb_id is not None:
            kb_id = require_kb(session, actor, kb_id, "owner").id
        return [{"day": day, "ratings": n, "helpful": up / n if n else None}
                for day, n, up in feedback_repo.daily_rates(session=session, only=owned_kb_ids(actor), kb_id=kb_id)]
