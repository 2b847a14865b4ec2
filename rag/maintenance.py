"""Upkeep jobs: bring documents that stalled (lost queue message, dead worker) back to a final state."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import timedelta

from db.repositories import documents as document_repo
from db.session import session_scope
from rag.config import get_settings

log = logging.getLogger(__name__)


def reconcile_stuck_documents(
    *, enqueue: Callable[[int], object], task_record: Callable[[str], dict | None]
) -> dict:
    """Re-enqueue documents stuck in a non-final state past the timeout; fail those that used up their attempts.

    A document is left alone while its task record shows it moved recently (a long backlog is not a stall).
    """
    settings = get_settings()
    stuck_after = settings.stuck_after_seconds
    requeued: list[int] = []
    failed: list[int] = []
    with session_scope() as session:
        candidates = [
            (d.id, d.task_id, d.attempts)
            for d in document_repo.list_stuck(session=session, older_than=timedelta(seconds=stuck_after))
        ]
    for document_id, task_id, attempts in candidates:
        record = task_record(task_id) if task_id else None
        if record and time.time() - float(record.get("updated_at", 0)) < stuck_after:
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
