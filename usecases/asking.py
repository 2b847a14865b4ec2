"""Asking: a question goes to a chat worker, whose answer streams back; conversations are kept per base."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db.repositories import conversations as conversation_repo
from infra.database import session_scope
from rag import answering, conversation
from rag.retrieval import hit_to_dict, search
from telemetry import events
from usecases.ports import TaskQueue


@dataclass(frozen=True)
class Asked:
    task_id: str  # follow the answer with ``telemetry.answer_streams.read_answer``
    conversation_id: int | None


def ask(
    queue: TaskQueue,
    *,
    kb_id: int,
    question: str,
    conversation_id: int | None = None,
    document_ids: list[int] | None = None,
    save_question: bool = False,
) -> Asked:
    """Queue an answer to ``question``. With ``save_question`` it is added to the conversation first (a new one,
    titled after it, when ``conversation_id`` is None); the worker saves the answer next to it."""
    if save_question:
        with session_scope() as session:
            if conversation_id is None:
                conversation_id = conversation_repo.create(session=session, kb_id=kb_id, title=question[:80]).id
            conversation_repo.add_message(session=session, conversation_id=conversation_id, role="user",
                                          content=question)
    task_id = queue.enqueue("chat.answer", kb_id, question, conversation_id, document_ids or None)
    return Asked(task_id, conversation_id)


def answer(
    queue: TaskQueue,
    *,
    kb_id: int,
    question: str,
    conversation_id: int | None,
    document_ids: list[int] | None,
    task_id: str,
    emit: Callable[[str, Any], None],
    should_stop: Callable[[], bool],
) -> dict:
    """Retrieve and answer, streaming through ``emit``; a conversation grown long is queued for a summary."""
    result = answering.answer_question(kb_id=kb_id, question=question, conversation_id=conversation_id,
                                       task_id=task_id, emit=emit, should_stop=should_stop,
                                       document_ids=document_ids)
    if result.get("summarize") and conversation_id is not None:
        queue.enqueue("chat.summarize", conversation_id)
    return result


def summarize(*, conversation_id: int) -> dict:
    """Condense a conversation's older turns into the summary later prompts use."""
    return conversation.summarize_conversation(conversation_id)


def search_passages(*, kb_id: int, question: str, k: int = 10, mode: str | None = None) -> list[dict]:
    """The ``k`` passages closest to a question, as JSON-ready dicts (``mode``: see ``rag.retrieval.search``)."""
    with session_scope() as session:
        hits = search(session=session, kb_id=kb_id, question=question, k=k, mode=mode)
        return [hit_to_dict(h) for h in hits]


def preview_search(queue: TaskQueue, *, kb_id: int, question: str, k: int = 10, timeout: float = 30) -> list[dict]:
    """``search_passages`` run by a chat worker (which has the model loaded); TimeoutError or RuntimeError when
    none answers or the search fails."""
    return events.wait_for_result(queue.enqueue("chat.search", kb_id, question, k), timeout=timeout)["hits"]


def rename_conversation(*, conversation_id: int, title: str) -> None:
    with session_scope() as session:
        conversation_repo.rename(session=session, conversation_id=conversation_id, title=title)


def delete_conversation(*, conversation_id: int) -> None:
    with session_scope() as session:
        conversation_repo.delete_conversation(session=session, conversation_id=conversation_id)
