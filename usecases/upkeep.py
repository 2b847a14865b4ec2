"""Upkeep: what the scheduled jobs do and what an admin asks for by hand (reconcile, consistency, alerts,
evaluation, cleanup)."""

from __future__ import annotations

from functools import partial

from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from rag import consistency, evaluation, golden, maintenance
from telemetry import answer_streams, events
from usecases.documents import enqueue_ingest
from usecases.ports import TaskQueue


def reconcile(queue: TaskQueue) -> dict:
    """Start over the documents and parts whose worker's heartbeat lapsed, then re-enqueue documents stuck in a
    non-final state (e.g. after Redis lost its queues). Runs as the system (the scheduler, a worker's start)."""
    queue.release_lost_messages()
    lost = maintenance.recover_lost_workers(
        enqueue=partial(enqueue_ingest, queue), enqueue_part=partial(_enqueue_part, queue),
        alive=events.alive_workers, waiting_runs=queue.waiting_ingest_runs, link=events.link_retry,
    )
    stuck = maintenance.reconcile_stuck_documents(
        enqueue=partial(enqueue_ingest, queue), task_record=events.get_task, waiting_runs=queue.waiting_ingest_runs
    )
    answers = maintenance.end_lost_answers(
        lost_tasks=partial(events.lost_tasks, ("chat.answer",)), alive=events.alive_workers,
        end_stream=answer_streams.end_with_error, record_failed=_record_lost,
    )
    return {**stuck, "requeued": stuck["requeued"] + lost["requeued"], "failed": stuck["failed"] + lost["failed"],
            "lost_workers": lost["lost_workers"], "parts": lost["parts"], "answers_ended": answers}


def _record_lost(task_id: str, worker: str, error: str) -> None:
    events.record(task_id, events.FAILED, error=error, worker=worker)


def _enqueue_part(queue: TaskQueue, document_id: int, run: str, first_page: int, last_page: int, task_id: str) -> str:
    return queue.enqueue("ingest.pages", document_id, run, first_page, last_page, task_id=task_id)


def check_consistency(queue: TaskQueue, *, kb_id: int | None = None, fix: bool = False) -> dict:
    """Documents, chunks and stored files agree (scoped to ``kb_id`` when given); with ``fix``, what does not is
    fixed and re-indexed through ``queue``."""
    return consistency.check(kb_id=kb_id, fix=fix, enqueue_ingest=partial(enqueue_ingest, queue),
                             task_record=events.get_task, waiting_runs=queue.waiting_ingest_runs)


def evaluate(
    queue: TaskQueue, *, kb_id: int | None = None, seed: int | None = None, sample_size: int | None = None,
    trigger: str = "scheduled",
) -> dict:
    """Retrieval evaluation of one knowledge base; without one, an evaluation task per base is queued."""
    if kb_id is not None:
        return evaluation.evaluate_kb(kb_id, trigger=trigger, seed=seed, sample_size=sample_size)
    with session_scope() as session:
        ids = [kb.id for kb in kb_repo.list_knowledge_bases(session=session)]
    return {"enqueued": {str(i): request_evaluation(queue, kb_id=i, seed=seed, sample_size=sample_size,
                                                    trigger=trigger) for i in ids}}


def request_evaluation(
    queue: TaskQueue, *, kb_id: int | None = None, seed: int | None = None, sample_size: int | None = None,
    trigger: str = "page",
) -> str:
    """Queue an evaluation (of every base when ``kb_id`` is None); returns the task id."""
    return queue.enqueue("maintenance.evaluate", kb_id, seed, sample_size, trigger)


def request_golden_evaluation(queue: TaskQueue, *, kb_id: int, data: bytes, filename: str) -> tuple[int, str]:
    """Read an uploaded golden-question file (``golden.QuestionFileError`` says what is wrong with it), record the
    run, then queue it; returns (how many questions, the task id)."""
    questions = golden.load(kb_id, data, filename)
    run_id = golden.start_run(kb_id, questions, trigger="page")
    return len(questions), queue.enqueue("maintenance.evaluate_golden", run_id)


def request_alert_check(queue: TaskQueue) -> str:
    return queue.enqueue("maintenance.alerts")


def request_consistency_fix(queue: TaskQueue) -> str:
    return queue.enqueue("maintenance.consistency")
