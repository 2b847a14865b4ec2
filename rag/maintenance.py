"""Upkeep jobs: bring documents that stalled (dead worker, lost queue message) back to a final state.

Two rules, the first fast and the second the last resort:

- *dead worker*: a document (or a part of a split document) records the worker running it; once that worker's
  heartbeat has lapsed (confirmed over one more heartbeat interval, so a Redis restart is not a massacre) the
  document is started over as a new run, or the part sent again as a new delivery; the old run or delivery stands
  down if its message is ever redelivered. A document whose attempts are used up fails with the reason instead.
- *stuck*: a document in a non-final state whose row has not moved for ``KBCHAT_STUCK_AFTER_SECONDS`` (its queue
  message was lost, say) is re-enqueued.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

from db.models import FINAL_STATES
from db.repositories import documents as document_repo
from db.repositories import ingest_parts as part_repo
from infra.database import session_scope
from infra.settings import get_settings
from rag.ingestion import fail_document, gave_up_message

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


@dataclass(frozen=True)
class _Claim:
    document_id: int
    run: str | None  # the document's task id
    worker: str
    attempts: int
    first_page: int | None = None  # a part of a split document, else the whole document
    last_page: int | None = None
    task_id: str | None = None  # the part's delivery


def recover_lost_workers(
    *,
    enqueue: Callable[[int], str],
    enqueue_part: Callable[[int, str, int, int, str], object],
    alive: Callable[[set[str]], set[str]],
    waiting_runs: Callable[[], set[str]] = set,
    link: Callable[[str, str], None] | None = None,
    confirm_seconds: float | None = None,
) -> dict:
    """Start over the documents and parts whose recorded worker's heartbeat has lapsed; fail those whose attempts
    are used up.

    ``alive(workers)`` says which of those heartbeat identities still beat; a worker that looks dead is looked at
    again after ``confirm_seconds`` (default: one heartbeat interval and a second). ``enqueue(document_id)`` queues
    a new run and returns its task id; ``enqueue_part(document_id, run, first, last, task_id)`` sends a part again;
    ``link(old, new)`` notes on the task records that the new task takes the old one's place. A document whose task
    (or a part) still waits in the queue (``waiting_runs``) is left to it.
    """
    settings = get_settings()
    with session_scope() as session:
        claims = [_Claim(d.id, d.task_id, d.worker, d.attempts) for d in document_repo.list_claimed(session=session)]
        claims += [_Claim(p.document_id, p.run, p.worker, p.attempts, p.first_page, p.last_page, p.task_id)
                   for p in part_repo.list_claimed(session=session)]
    workers = {c.worker for c in claims}
    lost = workers - alive(workers) if workers else set()
    if lost:
        time.sleep(settings.heartbeat_interval_seconds + 1 if confirm_seconds is None else confirm_seconds)
        lost -= alive(lost)
    requeued: list[int] = []
    parts: list[list[int]] = []
    failed: list[int] = []
    resent: list[tuple[int, str, int]] = []
    waiting: set[str] | None = None
    for claim in claims:
        if claim.worker not in lost:
            continue
        if waiting is None:
            waiting = waiting_runs()
        if (claim.task_id if claim.first_page is not None else claim.run) in waiting:
            continue  # its message is back in the queue (Dramatiq requeues a dead worker's messages)
        outcome = _recover(claim, settings.max_retries)
        if outcome == "failed":
            failed.append(claim.document_id)
        elif outcome == "document":
            new_id = enqueue(claim.document_id)
            if link and claim.run:
                link(claim.run, new_id)
            requeued.append(claim.document_id)
        elif outcome is not None:  # a part: the new delivery's id
            assert claim.run and claim.first_page is not None and claim.last_page is not None
            enqueue_part(claim.document_id, claim.run, claim.first_page, claim.last_page, outcome)
            if link and claim.task_id:
                link(claim.task_id, outcome)
            parts.append([claim.document_id, claim.first_page])
            resent.append((claim.document_id, claim.run, claim.first_page))
    # A worker takes more than it runs (Dramatiq prefetches): the parts of a run that lost a part, that nobody
    # started and that no longer wait in the queue were most likely held by the lost worker too. Sent again, an
    # old delivery of one (still held by a live worker after all) stands down.
    for document_id, run in {(d, r) for d, r, _ in resent}:
        if run in (waiting or set()):
            continue
        just_sent = {first for d, r, first in resent if (d, r) == (document_id, run)}
        for first_page, last_page, new_id in _resend_unclaimed(document_id, run, just_sent):
            enqueue_part(document_id, run, first_page, last_page, new_id)
            parts.append([document_id, first_page])
    if requeued or parts or failed:
        log.warning("reconcile: worker(s) %s lost; restarted documents %s, parts %s, failed %s",
                    sorted(lost), requeued, parts, failed)
    return {"lost_workers": sorted(lost), "requeued": requeued, "parts": parts, "failed": failed}


def _resend_unclaimed(document_id: int, run: str, skip: set[int]) -> list[tuple[int, int, str]]:
    """Give the run's unstarted parts new deliveries (first page, last page, task id), under the row lock."""
    resent = []
    with session_scope() as session:
        document = document_repo.lock(session=session, document_id=document_id)
        if document is None or document.status in FINAL_STATES or document.task_id != run:
            return []
        for part in part_repo.unclaimed_parts(session=session, document_id=document_id, run=run):
            if part.first_page in skip:
                continue
            new_id = str(uuid.uuid4())
            part_repo.requeue_part(session=session, document_id=document_id, run=run, first_page=part.first_page,
                                   task_id=new_id)
            resent.append((part.first_page, part.last_page, new_id))
    return resent


def _recover(claim: _Claim, max_retries: int) -> str | None:
    """Under the document's row lock, and only if the claim still stands: put the document (or the part) back to
    the queue — "document", or the part's new delivery id — or fail it ("failed"); None when someone moved on."""
    reason = None
    with session_scope() as session:
        document = document_repo.lock(session=session, document_id=claim.document_id)
        if document is None or document.status in FINAL_STATES or document.task_id != claim.run:
            return None
        if claim.first_page is None:
            if document.worker != claim.worker:
                return None
            if document.attempts > max_retries:
                reason = gave_up_message(document.attempts)
            else:
                document_repo.touch_queued(session=session, document_id=claim.document_id, lost_worker=claim.worker)
                return "document"
        else:
            part = part_repo.get_part(session=session, document_id=claim.document_id, run=claim.run,
                                      first_page=claim.first_page)
            if part is None or part.done or part.worker != claim.worker or part.task_id != claim.task_id:
                return None
            if part.attempts > max_retries:
                reason = f"Pages {claim.first_page}–{claim.last_page}: " + gave_up_message(part.attempts)
            else:
                new_id = str(uuid.uuid4())
                part_repo.requeue_part(session=session, document_id=claim.document_id, run=claim.run,
                                       first_page=claim.first_page, task_id=new_id)
                document_repo.set_lost_worker(session=session, document_id=claim.document_id, worker=claim.worker)
                return new_id
    fail_document(claim.document_id, reason, task_id=claim.run)
    return "failed"


LOST_ANSWER = "The worker answering this question stopped (killed or cut off) before it finished. Ask it again."


def end_lost_answers(
    *,
    lost_tasks: Callable[[], list[tuple[str, str]]],
    alive: Callable[[set[str]], set[str]],
    end_stream: Callable[[str, str], None],
    record_failed: Callable[[str, str, str], None],
    confirm_seconds: float | None = None,
) -> list[str]:
    """Tell the readers of answers whose chat worker's heartbeat lapsed that it stopped, at once rather than at
    their timeout: ``lost_tasks()`` gives (worker, task id); a worker is looked at again after ``confirm_seconds``
    (default one heartbeat interval and a second). Returns the task ids told."""
    found = lost_tasks()
    if not found:
        return []
    time.sleep(get_settings().heartbeat_interval_seconds + 1 if confirm_seconds is None else confirm_seconds)
    back = alive({worker for worker, _ in found})
    told = []
    for worker, task_id in found:
        if worker in back:
            continue
        end_stream(task_id, LOST_ANSWER)
        record_failed(task_id, worker, LOST_ANSWER)
        told.append(task_id)
    if told:
        log.warning("reconcile: answers %s lost their worker; their readers were told", told)
    return told
