"""Fixes an admin makes from the monitoring and status pages: run a failed task again, retry every failed ingest,
re-enqueue stalled documents; and what a task concerns (its document, conversation or knowledge base)."""

from __future__ import annotations

import json
from typing import Any

from db.repositories import conversations as conversation_repo
from db.repositories import documents as document_repo
from db.repositories import knowledge_bases as kb_repo
from db.repositories import monitoring as monitoring_repo
from infra.database import session_scope
from rag.access import Actor
from telemetry import events
from telemetry.events import decode_args
from usecases.access import require_admin
from usecases.documents import enqueue_ingest
from usecases.ports import TaskQueue


def retry_task(queue: TaskQueue, actor: Actor, task_id: str) -> str:
    """Enqueue the task again with the same name and arguments; returns the new task id.

    An ingest is retried through its document (put back to queued, its attempts reset), so the document's page
    follows the new task. Raises LookupError when the record expired, ValueError when it cannot be replayed.
    """
    require_admin(actor, "Running a task again")
    record = events.get_task(task_id)
    if record is None:
        raise LookupError(f"task {task_id} is unknown or its record expired")
    args = decode_args(record.get("args"))
    if args is None or not record.get("name"):
        raise ValueError(f"task {task_id} has no stored arguments to run it again with")
    if record["name"] in ("ingest.document", "ingest.pages"):  # a part alone would stand down: redo the document
        new_id = requeue_documents(queue, actor, [int(args[0])])[0]
    else:
        new_id = queue.enqueue(record["name"], *args)
    events.link_retry(task_id, new_id)
    return new_id


def requeue_documents(queue: TaskQueue, actor: Actor, document_ids: list[int]) -> list[str]:
    """Put documents back to queued (attempts reset) and enqueue their ingest; returns the task ids. Admins."""
    require_admin(actor, "Re-enqueueing documents")
    with session_scope() as session:
        existing = [d.id for d in document_repo.list_by_ids(session=session, document_ids=document_ids)]
        if len(existing) != len(set(document_ids)):
            missing = sorted(set(document_ids) - set(existing))
            raise LookupError(f"document(s) {', '.join(map(str, missing))} no longer exist")
        document_repo.requeue(session=session, document_ids=existing)
    return [enqueue_ingest(queue, document_id) for document_id in existing]


def retry_failed_ingests(queue: TaskQueue, actor: Actor) -> list[int]:
    """Re-enqueue every failed document in every knowledge base; returns their ids. Admins."""
    require_admin(actor, "Retrying every failed ingest")
    with session_scope() as session:
        ids = monitoring_repo.failed_document_ids(session=session)
    if ids:
        requeue_documents(queue, actor, ids)
    return ids


def short_args(raw: str | None, limit: int = 200) -> str:
    """The stored arguments as one short line."""
    args = decode_args(raw)
    text = json.dumps(args, ensure_ascii=False, default=str)[1:-1] if args is not None else (raw or "")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def task_subject(record: dict) -> dict[str, Any] | None:
    """The document, conversation or knowledge base a task concerns, looked up now; None when none or gone.

    {"kind": "document" | "conversation" | "knowledge_base", "id", "kb_id", "kb", "label", ...}
    """
    name, args = record.get("name", ""), decode_args(record.get("args")) or []
    if not args or not name.startswith(("ingest.", "chat.")):
        return None
    try:
        with session_scope() as session:
            if name in ("ingest.document", "ingest.pages"):
                document = monitoring_repo.document_summary(session=session, document_id=int(args[0]))
                return {**document, "kind": "document", "label": document["filename"]} if document else None
            conversation_id = None
            if name == "chat.summarize":
                conversation_id = args[0]
            elif name == "chat.answer" and len(args) > 2:
                conversation_id = args[2]
            if conversation_id is not None:
                conversation = conversation_repo.get(session=session, conversation_id=int(conversation_id))
                if conversation is not None:
                    kb = kb_repo.get(session=session, kb_id=conversation.kb_id)
                    return {"kind": "conversation", "id": conversation.id, "kb_id": conversation.kb_id,
                            "kb": kb.name if kb else "", "label": conversation.title}
                if name == "chat.summarize":
                    return None
            kb = kb_repo.get(session=session, kb_id=int(args[0]))  # chat.answer, chat.search: (kb_id, question, …)
            if kb is None:
                return None
            return {"kind": "knowledge_base", "id": kb.id, "kb_id": kb.id, "kb": kb.name, "label": kb.name}
    except (TypeError, ValueError):  # arguments of an unexpected shape
        return None
