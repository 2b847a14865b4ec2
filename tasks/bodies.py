"""Task bodies, written once as plain functions: take IDs, call one ``rag`` function, return small JSON."""

from __future__ import annotations

from rag import answering, conversation, ingestion, maintenance
from tasks.context import current_task_id
from tasks.streams import StopFlag, StreamPublisher


def ingest_document(document_id: int) -> dict:
    """ingest.document: parse, chunk, embed and store one uploaded document; a large PDF is split into
    ``ingest.pages`` tasks that other workers share (this task's id is their run)."""
    task_id = current_task_id()
    result = ingestion.ingest_document(int(document_id), task_id=task_id)
    if result.parts:  # enqueued after the commit that recorded them; a redelivery re-sends those not done
        from tasks.client import enqueue

        for first_page, last_page in result.parts:
            enqueue("ingest.pages", int(document_id), task_id, first_page, last_page)
    return result.to_dict()


def ingest_pages(document_id: int, run: str, first_page: int, last_page: int) -> dict:
    """ingest.pages: parse, chunk and embed one page range of a split PDF; the run's last part stores them all."""
    from rag import page_ranges

    return page_ranges.ingest_pages(int(document_id), str(run), int(first_page), int(last_page)).to_dict()


def chat_answer(
    kb_id: int, question: str, conversation_id: int | None = None, document_ids: list[int] | None = None
) -> dict:
    """chat.answer: retrieve and answer, streaming the answer into the task's Redis stream."""
    task_id = current_task_id()
    emit = StreamPublisher(task_id)
    if emit.already_streamed():  # retried or redelivered after tokens were shown: never repeat them
        emit("notice", "The answer was interrupted (its worker stopped). Ask again for a complete answer.")
        emit("done", {"mode": "llm", "citations": [], "interrupted": True})
        return {"interrupted": True}
    try:
        result = answering.answer_question(
            kb_id=int(kb_id),
            question=str(question),
            conversation_id=int(conversation_id) if conversation_id is not None else None,
            task_id=task_id,
            emit=emit,
            should_stop=StopFlag(task_id),
            document_ids=[int(d) for d in document_ids] if document_ids else None,
        )
        if result.get("summarize"):
            from tasks.client import enqueue

            enqueue("chat.summarize", int(conversation_id))
        return result
    except Exception as exc:
        from tasks.registry import is_transient

        if not is_transient(exc):  # no retry will finish this stream: tell its reader now, not at its timeout
            try:
                emit("error", f"{type(exc).__name__}: {exc}".splitlines()[0][:300])
            except Exception:
                pass
        raise


def chat_summarize(conversation_id: int) -> dict:
    """chat.summarize: condense a conversation's older turns into a summary later prompts use."""
    return conversation.summarize_conversation(int(conversation_id))


def chat_search(kb_id: int, question: str, k: int = 10) -> dict:
    """chat.search: the passages closest to a question (the knowledge bases page's retrieval preview)."""
    from infra.database import session_scope
    from rag.retrieval import hit_to_dict, search

    with session_scope() as session:
        hits = search(session=session, kb_id=int(kb_id), question=str(question), k=int(k))
    return {"hits": [hit_to_dict(h) for h in hits]}


def maintenance_reconcile() -> dict:
    """maintenance.reconcile: re-enqueue documents stuck in a non-final state (e.g. after Redis lost its queues)."""
    from tasks.client import enqueue_ingest, task_record
    from tasks.monitoring import waiting_ingest_runs

    return maintenance.reconcile_stuck_documents(
        enqueue=enqueue_ingest, task_record=task_record, waiting_runs=waiting_ingest_runs
    )


def maintenance_evaluate(
    kb_id: int | None = None, seed: int | None = None, sample_size: int | None = None, trigger: str = "scheduled"
) -> dict:
    """maintenance.evaluate: retrieval evaluation of one knowledge base; without one, a task per base is queued."""
    from rag import evaluation

    if kb_id is None:
        from db.repositories import knowledge_bases as kb_repo
        from infra.database import session_scope
        from tasks.client import enqueue

        with session_scope() as session:
            ids = [kb.id for kb in kb_repo.list_knowledge_bases(session=session)]
        return {"enqueued": {str(i): enqueue("maintenance.evaluate", i, seed, sample_size, trigger) for i in ids}}
    return evaluation.evaluate_kb(int(kb_id), trigger=trigger, seed=seed, sample_size=sample_size)


def maintenance_consistency(kb_id: int | None = None) -> dict:
    """maintenance.consistency: documents, chunks and stored files agree; what does not is fixed."""
    from rag import consistency
    from tasks.client import enqueue_ingest, task_record

    return consistency.check(kb_id=int(kb_id) if kb_id is not None else None, fix=True,
                             enqueue_ingest=enqueue_ingest, task_record=task_record)


def maintenance_alerts() -> dict:
    """maintenance.alerts: the alert rules (the empty-retrieval share); an alert goes to the webhook."""
    from rag import alerts

    return alerts.check_empty_retrievals()


def maintenance_cleanup() -> dict:
    """maintenance.cleanup: old events, streams, evaluation details, alerts and stray stored files removed."""
    from rag import cleanup

    return cleanup.cleanup()


def give_up_ingest(args: list, error: str, task_id: str) -> None:
    """When ingest.document fails for good (time limit, retries exhausted), the document says why, unless a newer
    task owns it by now (a re-index or a requeue): that one decides."""
    if args:
        ingestion.fail_document(int(args[0]), error, task_id=task_id)


def give_up_pages(args: list, error: str, task_id: str) -> None:
    """When a part fails for good, its document fails with the reason (unless a newer run owns it)."""
    if len(args) >= 2:
        from rag import page_ranges

        page_ranges.fail_run(int(args[0]), str(args[1]), error)
