"""Enqueue tasks and read their state, the same way on either backend."""

from __future__ import annotations

from functools import lru_cache
from typing import Any

from infra.settings import get_settings
from tasks.registry import spec
from telemetry import events


@lru_cache(maxsize=1)
def _backend():
    """The configured backend's app (Celery) or actors (Dramatiq), imported on first use.

    The module-level app/broker is rebuilt when the Redis URL changed since it was made (settings are re-read
    after ``get_settings.cache_clear()``), so a process never keeps sending to a broker it no longer uses.
    """
    from infra.discovery import service_urls

    url = service_urls().redis_url
    if get_settings().task_backend == "dramatiq":
        from tasks import dramatiq_app

        if getattr(dramatiq_app.broker, "kbchat_url", url) != url:
            dramatiq_app.broker, dramatiq_app.actors = dramatiq_app.create_broker()
        return "dramatiq", dramatiq_app
    from tasks import celery_app

    if celery_app.app.conf.broker_url != url:
        celery_app.app = celery_app.create_app()
        celery_app.app.set_current()
    return "celery", celery_app


def enqueue(name: str, *args: Any, task_id: str | None = None) -> str:
    """Send task ``name`` with JSON arguments to its queue; returns the task id (``task_id`` if given).
    Call after the commit."""
    kind, module = _backend()
    item = spec(name)
    if kind == "dramatiq":
        actor = module.actors[name]
        message = actor.message(*args)
        if task_id:
            message = message.copy(message_id=task_id)
        events.record(message.message_id, events.QUEUED, name=name, queue=item.queue,
                      args=events.encode_args(args), backend="dramatiq")
        module.broker.enqueue(message)
        return message.message_id
    # Chat tasks keep no Celery result (see celery_app): then the client need not subscribe to one either.
    result = module.app.send_task(
        name, args=list(args), queue=item.queue, task_id=task_id, ignore_result=item.queue == "chat"
    )
    return result.id


def wait_for_result(task_id: str, timeout: float = 30.0) -> Any:
    """Block until the task succeeded and return its result; raise RuntimeError on failure, TimeoutError on silence."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = task_record(task_id) or {}
        if record.get("state") == events.SUCCEEDED:
            return record.get("result")
        if record.get("state") == events.FAILED:
            raise RuntimeError(record.get("error") or "the task failed")
        time.sleep(0.1)
    raise TimeoutError(f"task {task_id} did not finish within {timeout:.0f} s; are the workers running?")


def task_record(task_id: str) -> dict | None:
    """What the status page shows for a task id: our record (both backends), or None if unknown or expired."""
    return events.get_task(task_id)


def backend_name() -> str:
    return _backend()[0]


def enqueue_ingest(document_id: int) -> str:
    """Queue ``ingest.document`` for a committed document, its task id recorded on it first.

    Only the document's current task ingests it: an older message for the same document (redelivered after its
    worker died, while reconciliation had already queued a new one) finds another task id and stands down.
    """
    import uuid

    from db.repositories import documents as document_repo
    from infra.database import session_scope

    task_id = str(uuid.uuid4())
    with session_scope() as session:
        document_repo.set_task(session=session, document_id=document_id, task_id=task_id)
    return enqueue("ingest.document", document_id, task_id=task_id)
