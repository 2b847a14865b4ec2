"""Upkeep: what the scheduled jobs do and what an admin asks for by hand (reconcile, consistency, alerts,
evaluation, cleanup)."""

from __future__ import annotations

from functools import partial

from db.repositories import alerts as alert_repo
from db.repositories import evaluations as eval_repo
from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from rag import consistency, evaluation, golden, maintenance
from rag.access import OWNER, Actor, NotFound
from telemetry import answer_streams, events
from usecases.access import readable_kb_ids, require_admin, require_kb
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


def check_consistency(queue: TaskQueue, actor: Actor, *, kb_id: int | None = None, fix: bool = False) -> dict:
    """Documents, chunks and stored files agree (scoped to ``kb_id`` when given); with ``fix``, what does not is
    fixed and re-indexed through ``queue``. Admins (and the scheduled job)."""
    require_admin(actor, "The consistency check")
    return consistency.check(kb_id=kb_id, fix=fix, enqueue_ingest=partial(enqueue_ingest, queue),
                             task_record=events.get_task, waiting_runs=queue.waiting_ingest_runs)


def evaluate(
    queue: TaskQueue, actor: Actor, *, kb_id: int | None = None, seed: int | None = None,
    sample_size: int | None = None, trigger: str = "scheduled",
) -> dict:
    """Retrieval evaluation of one knowledge base (its owners, admins); without one (admins, the nightly job), an
    evaluation task per base is queued."""
    if kb_id is not None:
        with session_scope() as session:
            kb_id = require_kb(session, actor, kb_id, OWNER).id
        return evaluation.evaluate_kb(kb_id, trigger=trigger, seed=seed, sample_size=sample_size)
    require_admin(actor, "Evaluating every knowledge base")
    with session_scope() as session:
        ids = [kb.id for kb in kb_repo.list_knowledge_bases(session=session)]
    return {"enqueued": {str(i): request_evaluation(queue, actor, kb_id=i, seed=seed, sample_size=sample_size,
                                                    trigger=trigger) for i in ids}}


def request_evaluation(
    queue: TaskQueue, actor: Actor, *, kb_id: int | None = None, seed: int | None = None,
    sample_size: int | None = None, trigger: str = "page",
) -> str:
    """Queue an evaluation (of every base when ``kb_id`` is None: admins); returns the task id."""
    if kb_id is None:
        require_admin(actor, "Evaluating every knowledge base")
    else:
        with session_scope() as session:
            kb_id = require_kb(session, actor, kb_id, OWNER).id
    return queue.enqueue("maintenance.evaluate", kb_id, seed, sample_size, trigger, actor.user_id)


def request_golden_evaluation(queue: TaskQueue, actor: Actor, *, kb_id: int, data: bytes,
                              filename: str) -> tuple[int, str]:
    """Read an uploaded golden-question file (``golden.QuestionFileError`` says what is wrong with it), record the
    run, then queue it; returns (how many questions, the task id). Owners of the base, admins."""
    with session_scope() as session:
        kb_id = require_kb(session, actor, kb_id, OWNER).id
    questions = golden.load(kb_id, data, filename)
    run_id = golden.start_run(kb_id, questions, trigger="page")
    return len(questions), queue.enqueue("maintenance.evaluate_golden", run_id, actor.user_id)


def evaluation_history(actor: Actor, *, kb_id: int, golden_only: bool = False, recent: int = 10) -> dict:
    """A readable base's evaluation runs: {"history": [...], "recent": [...], "previous": run | None}."""
    with session_scope() as session:
        kb_id = require_kb(session, actor, kb_id).id
        history = eval_repo.history(session=session, kb_id=kb_id, golden=golden_only)
        recent_runs = eval_repo.recent(session=session, kb_id=kb_id, limit=recent, golden=golden_only)
        previous = (eval_repo.previous_comparable(session=session, run=history[-1])
                    if history and not golden_only else None)
        return {"history": history, "recent": recent_runs, "previous": previous}


def recent_alerts(actor: Actor, *, limit: int = 30) -> list:
    """Alerts of the bases the actor may read (admins: all, with the system-wide ones)."""
    with session_scope() as session:
        alerts = alert_repo.recent(session=session, limit=limit)
        only = readable_kb_ids(actor)
        if only is None:
            return alerts
        readable = set(session.scalars(only))
        return [a for a in alerts if getattr(a, "kb_id", None) in readable]


def kb_names(actor: Actor) -> dict[int, str]:
    with session_scope() as session:
        return {kb.id: kb.name for kb in kb_repo.list_knowledge_bases(session=session, only=readable_kb_ids(actor))}


def request_alert_check(queue: TaskQueue, actor: Actor) -> str:
    require_admin(actor, "Checking the alert rules")
    return queue.enqueue("maintenance.alerts")


def request_consistency_fix(queue: TaskQueue, actor: Actor) -> str:
    require_admin(actor, "The consistency check")
    return queue.enqueue("maintenance.consistency")


def run_golden(actor: Actor, *, run_id: int) -> dict:
    """Ask a recorded golden question set of its base (the task body; the requester checked again)."""
    with session_scope() as session:
        run = eval_repo.get(session=session, run_id=int(run_id))
        if run is None:
            raise NotFound(f"Evaluation run {run_id} not found.")
        require_kb(session, actor, run.kb_id, OWNER)
    return evaluation.evaluate_golden(int(run_id))
