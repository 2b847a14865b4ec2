"""Queries on conversations and their messages."""

from __future__ import annotations

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from db.models import Conversation, ConversationSummary, Message


def create(*, session: Session, kb_id: int, title: str, user_id: int | None = None) -> Conversation:
    conversation = Conversation(kb_id=kb_id, title=title[:200] or "New conversation", user_id=user_id)
    session.add(conversation)
    session.flush()
    return conversation


def get(*, session: Session, conversation_id: int) -> Conversation | None:
    return session.get(Conversation, conversation_id)


def list_for_kb(*, session: Session, kb_id: int, limit: int = 50, user_id: int | None = None) -> list[Conversation]:
    """The base's conversations (one user's, when ``user_id`` is given), most recently active first."""
    query = select(Conversation).where(Conversation.kb_id == kb_id)
    if user_id is not None:
        query = query.where(Conversation.user_id == user_id)
    return list(session.scalars(query.order_by(Conversation.updated_at.desc()).limit(limit)))


def add_message(
    *,
    session: Session,
    conversation_id: int,
    role: str,
    content: str,
    citations: list | None = None,
    mode: str | None = None,
    task_id: str | None = None,
    token_count: int = 0,
) -> Message:
    message = Message(
        conversation_id=conversation_id,
        role=role,
        content=content,
        citations=citations or [],
        mode=mode,
        task_id=task_id,
        token_count=token_count,
    )
    session.add(message)
    session.execute(update(Conversation).where(Conversation.id == conversation_id).values(title=Conversation.title))
    session.flush()
    return message


def messages(*, session: Session, conversation_id: int) -> list[Message]:
    return list(
        session.scalars(select(Message).where(Message.conversation_id == conversation_id).order_by(Message.id))
    )


def find_by_task(*, session: Session, task_id: str) -> Message | None:
    return session.scalar(select(Message).where(Message.task_id == task_id))


def rename(*, session: Session, conversation_id: int, title: str) -> None:
    title = " ".join(title.split())[:200]
    if title:
        session.execute(update(Conversation).where(Conversation.id == conversation_id).values(title=title))


def delete_conversation(*, session: Session, conversation_id: int) -> None:
    """Delete the conversation; its messages and summaries go with it (ON DELETE CASCADE)."""
    session.execute(delete(Conversation).where(Conversation.id == conversation_id))


def messages_after(*, session: Session, conversation_id: int, after_id: int = 0) -> list[Message]:
    """The conversation's messages with an id above ``after_id``, oldest first."""
    return list(
        session.scalars(
            select(Message)
            .where(Message.conversation_id == conversation_id, Message.id > after_id)
            .order_by(Message.id)
        )
    )


def latest_summary(*, session: Session, conversation_id: int) -> ConversationSummary | None:
    return session.scalar(
        select(ConversationSummary)
        .where(ConversationSummary.conversation_id == conversation_id)
        .order_by(ConversationSummary.up_to_message_id.desc(), ConversationSummary.id.desc())
        .limit(1)
    )


def add_summary(
    *, session: Session, conversation_id: int, up_to_message_id: int, content: str, token_count: int, mode: str
) -> ConversationSummary:
    summary = ConversationSummary(
        conversation_id=conversation_id,
        up_to_message_id=up_to_message_id,
        content=content,
        token_count=token_count,
        mode=mode,
    )
    session.add(summary)
    session.flush()
    return summary
