"""Asking: a question goes to a chat worker, whose answer streams back; conversations are kept per user and base.

Asking and searching take ``viewer`` on the base; the base id the search runs on comes from the check. The task
carries the asker's id and checks again when it runs. An answer stream, a task's record and a conversation are
readable only by whoever started them (and admins).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from db.repositories import conversations as conversation_repo
from infra.database import session_scope
from rag import answering, conversation
from rag.access import Actor, NotFound
from telemetry import events
from usecases.access import require_conversation, require_kb
from usecases.audit import record_now
from usecases.ports import TaskQueue
from usecases.searching import search_passages  # noqa: F401  (asking.search_passages: tasks, API)

# Tasks queued for a person carry the person's id as their last argument (None: the operator or a job).
PERSONAL_TASKS = ("ingest.document", "chat.answer", "chat.search", "maintenance.evaluate",
                  "maintenance.evaluate_golden")


@dataclass(frozen=True)
class Asked:
    task_id: str  # follow the answer with ``telemetry.answer_streams.read_answer`` after ``check_task``
    conversation_id: int | None


def ask(
    queue: TaskQueue,
    actor: Actor,
    *,
    kb_id: int,
    question: str,
    conversation_id: int | None = None,
    document_ids: list[int] | None = None,
    save_question: bool = False,
) -> Asked:
    """Queue an answer to ``question``. With ``save_question`` it is added to the conversation first (a new one,
    titled after it, when ``conversation_id`` is None); the worker saves the answer next to it."""
    with session_scope() as session:
        kb_id = require_kb(session, actor, kb_id).id
        if conversation_id is not None:
            if require_conversation(session, actor, conversation_id).kb_id != kb_id:
                raise NotFound(f"Conversation {conversation_id} not found.")
        if save_question:
            if conversation_id is None:
                conversation_id = conversation_repo.create(session=session, kb_id=kb_id, title=question[:80],
                                                           user_id=actor.user_id).id
            conversation_repo.add_message(session=session, conversation_id=conversation_id, role="user",
                                          content=question)
    task_id = queue.enqueue("chat.answer", kb_id, question, conversation_id, document_ids or None, actor.user_id)
    return Asked(task_id, conversation_id)


def answer(
    queue: TaskQueue,
    actor: Actor | None,
    *,
    kb_id: int,
    question: str,
    conversation_id: int | None,
    document_ids: list[int] | None,
    task_id: str,
    emit: Callable[[str, Any], None],
    should_stop: Callable[[], bool],
) -> dict:
    """Retrieve and answer, streaming through ``emit`` (the asker's access checked again first); a conversation
    grown long is queued for a summary; the question is audited with the chunks retrieved."""
    actor = actor or Actor.operator()
    try:  # the access check runs in retrieval's own transaction
        result = answering.answer_question(kb_id=int(kb_id), question=question, conversation_id=conversation_id,
                                           task_id=task_id, emit=emit, should_stop=should_stop,
                                           document_ids=document_ids,
                                           authorize=lambda session: require_kb(session, actor, kb_id))
    except (NotFound, PermissionError) as exc:
        emit("error", str(exc))
        return {"error": str(exc)}
    record_now(actor, "question", kb_id=kb_id, target=question[:300], task_id=task_id, mode=result.get("mode"),
               chunk_ids=[c.get("chunk_id") for c in result.get("citations", [])])
    if result.get("summarize") and conversation_id is not None:
        queue.enqueue("chat.summarize", conversation_id)
    return result


def summarize(*, conversation_id: int) -> dict:
    """Condense a conversation's older turns into the summary later prompts use (queued by ``answer``)."""
    return conversation.summarize_conversation(conversation_id)


def preview_search(queue: TaskQueue, actor: Actor, *, kb_id: int, question: str, k: int = 10,
                   timeout: float = 30) -> list[dict]:
    """``search_passages`` run by a chat worker (which has the model loaded); TimeoutError or RuntimeError when
    none answers or the search fails."""
    with session_scope() as session:
        kb_id = require_kb(session, actor, kb_id).id
    return events.wait_for_result(queue.enqueue("chat.search", kb_id, question, k, actor.user_id),
                                  timeout=timeout)["hits"]


# --- tasks and answer streams: their starter's -------------------------------------------------------------


def task_owner(record_: dict) -> int | None:
    """The user a task was queued for (its last argument), or None (the operator, a job, an internal task)."""
    if record_.get("name") not in PERSONAL_TASKS:
        return None
    args = events.decode_args(record_.get("args")) or []
    owner = args[-1] if args else None
    return int(owner) if isinstance(owner, int) else None


def get_task(actor: Actor, *, task_id: str) -> dict:
    """A task's record, when the actor started it (or is an admin); NotFound otherwise, as for an unknown id."""
    found = events.get_task(task_id)
    if found is None or (not actor.is_admin and (actor.user_id is None or task_owner(found) != actor.user_id)):
        raise NotFound(f"Task {task_id} is unknown or its record expired.")
    return found


def recent_tasks(actor: Actor, *, limit: int = 50, scan: int = 5000) -> list[dict]:
    """The newest tasks the actor started (admins: everyone's), newest first: {"id", "name", "state", ...}."""
    seen: list[str] = []
    for event in events.recent_events(scan):
        task_id = event.get("task_id")
        if task_id and task_id not in seen:
            seen.append(task_id)
    records = events.get_tasks(seen)
    mine = []
    for task_id in seen:
        found = records.get(task_id)
        if found is None or (not actor.is_admin and (actor.user_id is None or task_owner(found) != actor.user_id)):
            continue
        mine.append({"id": task_id, "name": found.get("name", ""), "state": found.get("state", ""),
                     "queued_at": found.get("queued_at"), "finished_at": found.get("finished_at"),
                     "error": found.get("error", "")})
        if len(mine) >= limit:
            break
    return mine


def check_answer_stream(actor: Actor, *, task_id: str) -> None:
    """The answer stream of ``task_id`` may be read by the actor: their own question (or they are an admin)."""
    found = get_task(actor, task_id=task_id)
    if found.get("name") != "chat.answer":
        raise NotFound(f"Task {task_id} is unknown or its record expired.")


# --- conversations -----------------------------------------------------------------------------------------


def list_conversations(actor: Actor, *, kb_id: int, limit: int = 50) -> list[dict]:
    """The actor's own conversations in the base, most recently active first."""
    with session_scope() as session:
        kb_id = require_kb(session, actor, kb_id).id
        rows = conversation_repo.list_for_kb(session=session, kb_id=kb_id, limit=limit, user_id=actor.user_id)
        return [{"id": c.id, "title": c.title, "updated_at": c.updated_at, "created_at": c.created_at} for c in rows]


def conversation_messages(actor: Actor, *, conversation_id: int) -> list:
    with session_scope() as session:
        require_conversation(session, actor, conversation_id)
        return conversation_repo.messages(session=session, conversation_id=conversation_id)


def rename_conversation(actor: Actor, *, conversation_id: int, title: str) -> None:
    with session_scope() as session:
        require_conversation(session, actor, conversation_id)
        conversation_repo.rename(session=session, conversation_id=conversation_id, title=title)


def delete_conversation(actor: Actor, *, conversation_id: int) -> None:
    with session_scope() as session:
        require_conversation(session, actor, conversation_id)
        conversation_repo.delete_conversation(session=session, conversation_id=conversation_id)
