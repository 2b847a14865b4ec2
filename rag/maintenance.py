"""Upkeep jobs: bring documents that stalled (lost queue message, dead worker) back to a final state."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from db.repositories import documents as document_repo
from infra.database import session_scope
from infra.settings import get_settings

log = logging.getLogger(__name__)


def moved_recently(task_id: str | None, task_record: Callable[[str], dict | None]) -> bool:
    """A document's task record moved within the stuck timeout: a long backlog or a long document, not a stall."""
    record = task_record(task_id) if task_id else None
    return bool(record) and time.time() - float(record.get("updated_at", 0)) < get_settings().stuck_after_seconds


def reconcile_stuck_documents(
    *,
    enqueue: Callable[[int], object],
    task_record: Callable[[str], dict | None],
    waiting_runs: Callable[[], set[str]] = set,
    kb_id: int | None = None,
) -> dict:
    """Re-enqueue documents stuck in a non-final state past the timeout; fail those that used up their attempts.

    A document is left alone while its task record shows it moved recently, or while its task (or a page-range part
    of its run) still waits in the queue (``waiting_runs``, read once, only when some document looks stuck): a long
    backlog is not a stall, and starting it over would throw away the parts already done.
    """
    settings = get_settings()
    stuck_after = settings.stuck_after_seconds
    requeued: list[int] = []
    failed: list[int] = []
    with session_scope() as session:
        candidates = [
            (d.id, d.task_id, d.attempts)
            for d in document_repo.list_stuck(session=session, older_than=timedelta(seconds=stuck_after))
            if kb_id is None or d.kb_id == kb_id
        ]
    waiting: set[str] | None = None
    for document_id, task_id, attempts in candidates:
        if moved_recently(task_id, task_record):
            continue
        if waiting is None:
            waiting = waiting_runs()
        if task_id and task_id in waiting:
            continue
        with session_scope() as session:
            if attempts > settings.max_retries:
                document_repo.mark_failed(
                    session=session,
                    document_id=document_id,
                    error=f"Gave up after {attempts} attempts; use Retry once the cause is fixed.",
                )
                failed.append(document_id)
                continue
            document_repo.touch_queued(session=session, document_id=document_id)
        enqueue(document_id)
        requeued.append(document_id)
    if requeued or failed:
        log.warning("reconcile: re-enqueued %s, failed %s", requeued, failed)
    return {"requeued": requeued, "failed": failed, "checked": len(candidates)}
