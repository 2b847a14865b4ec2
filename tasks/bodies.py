"""Task bodies, written once as plain functions: take IDs, call one use case or ``rag`` function, return small
JSON. Follow-up work goes out through the backend running the task (``current_backend()``)."""

from __future__ import annotations

from rag import alerts, cleanup, ingestion, page_ranges
from rag.access import Actor, NotFound
from tasks.context import current_backend, current_task_id, current_worker
from tasks.queues import is_transient
from telemetry.answer_streams import StopFlag, StreamPublisher, end_with_error
from usecases import accounts, asking, audit, documents, upkeep

# A task queued for a person carries their id last (``usecases.asking.PERSONAL_TASKS``); the body acts as them,
# checked again now. None: the operator or a scheduled job, who act as admin.
OPERATOR = Actor.operator("kbchat")


def _actor(actor_id: int | None) -> Actor:
    """Who the task acts for; NotFound when that user is gone or disabled (nothing is done for them)."""
    if actor_id is None:
        return OPERATOR
    actor = accounts.actor_for_user_id(int(actor_id))
    if actor is None:
        raise NotFound(f"User {actor_id} no longer exists or is disabled.")
    return actor


def ingest_document(document_id: int, actor_id: int | None = None) -> dict:
    """ingest.document: parse, chunk, embed and store one uploaded document; a large PDF is split into
    ``ingest.pages`` tasks that other workers share (this task's id is their run)."""
    return documents.ingest_document(current_backend(), document_id=int(document_id), task_id=current_task_id(),
                                     actor_id=int(actor_id) if actor_id is not None else None,
                                     worker=current_worker())


def ingest_pages(document_id: int, run: str, first_page: int, last_page: int) -> dict:
    """ingest.pages: parse, chunk and embed one page range of a split PDF; the run's last part stores them all."""
    return page_ranges.ingest_pages(int(document_id), str(run), int(first_page), int(last_page),
                                    task_id=current_task_id(), worker=current_worker()).to_dict()


def chat_answer(
    kb_id: int, question: str, conversation_id: int | None = None, document_ids: list[int] | None = None,
    actor_id: int | None = None,
) -> dict:
    """chat.answer: retrieve and answer, streaming the answer into the task's Redis stream."""
    task_id = current_task_id()
    emit = StreamPublisher(task_id)
    if emit.already_streamed():  # retried or redelivered after tokens were shown: never repeat them
        emit("notice", "The answer was interrupted (its worker stopped). Ask again for a complete answer.")
        emit("done", {"mode": "llm", "citations": [], "interrupted": True})
        return {"interrupted": True}
    try:
        try:
            actor = _actor(actor_id)
        except NotFound:
            emit("error", f"Knowledge base {kb_id} not found.")
            return {"error": "the asker no longer exists or is disabled"}
        return asking.answer(
            current_backend(),
            actor,
            kb_id=int(kb_id),
            question=str(question),
            conversation_id=int(conversation_id) if conversation_id is not None else None,
            document_ids=[int(d) for d in document_ids] if document_ids else None,
            task_id=task_id,
            emit=emit,
            should_stop=StopFlag(task_id),
        )
    except Exception as exc:
        if not is_transient(exc):  # no retry will finish this stream: tell its reader now, not at its timeout
            try:
                emit("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            except Exception:
                pass
        raise


def chat_summarize(conversation_id: int) -> dict:
    """chat.summarize: condense a conversation's older turns into a summary later prompts use."""
    return asking.summarize(conversation_id=int(conversation_id))


def chat_search(kb_id: int, question: str, k: int = 10, actor_id: int | None = None) -> dict:
    """chat.search: the passages closest to a question (the knowledge bases page's retrieval preview)."""
    return {"hits": asking.search_passages(_actor(actor_id), kb_id=int(kb_id), question=str(question), k=int(k))}


def maintenance_reconcile() -> dict:
    """maintenance.reconcile: restart the documents and parts whose worker's heartbeat lapsed, and re-enqueue
    documents stuck in a non-final state (e.g. after Redis lost its queues)."""
    return upkeep.reconcile(current_backend())


def maintenance_evaluate(
    kb_id: int | None = None, seed: int | None = None, sample_size: int | None = None, trigger: str = "scheduled",
    actor_id: int | None = None,
) -> dict:
    """maintenance.evaluate: retrieval evaluation of one knowledge base; without one, a task per base is queued."""
    return upkeep.evaluate(current_backend(), _actor(actor_id), kb_id=int(kb_id) if kb_id is not None else None,
                           seed=seed, sample_size=sample_size, trigger=trigger)


def maintenance_evaluate_golden(run_id: int, actor_id: int | None = None) -> dict:
    """maintenance.evaluate_golden: ask a recorded golden question set (uploaded on the Quality tab) of its base."""
    return upkeep.run_golden(_actor(actor_id), run_id=int(run_id))


def maintenance_consistency(kb_id: int | None = None) -> dict:
    """maintenance.consistency: documents, chunks and stored files agree; what does not is fixed."""
    return upkeep.check_consistency(current_backend(), OPERATOR, kb_id=int(kb_id) if kb_id is not None else None,
                                    fix=True)


def maintenance_alerts() -> dict:
    """maintenance.alerts: the alert rules (the empty-retrieval share); an alert goes to the webhook."""
    return alerts.check_empty_retrievals()


def maintenance_cleanup() -> dict:
    """maintenance.cleanup: old events, streams, evaluation details, alerts, stray stored files, ended web
    sessions and audit entries past their retention removed."""
    return {**cleanup.cleanup(), "sessions": accounts.end_expired_sessions(), "audit": audit.trim()}


def give_up_ingest(args: list, error: str, task_id: str) -> None:
    """When ingest.document fails for good (time limit, retries exhausted), the document says why, unless a newer
    task owns it by now (a re-index or a requeue): that one decides."""
    if args:
        ingestion.fail_document(int(args[0]), error, task_id=task_id)


def give_up_pages(args: list, error: str, task_id: str) -> None:
    """When a part fails for good, its document fails with the reason (unless a newer run owns it)."""
    if len(args) >= 2:
        page_ranges.fail_run(int(args[0]), str(args[1]), error)


def give_up_answer(args: list, error: str, task_id: str) -> None:
    """When chat.answer fails for good on a service that stayed down past its retries (the body stays quiet on a
    failure a retry may mend), its reader is told now, not at its timeout."""
    end_with_error(task_id, error)
