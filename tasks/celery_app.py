"""The task bodies on Celery: late acks, reject on worker lost, JSON only, expiring results, events in Redis.

``CeleryBackend`` is the one object a process sends tasks with; ``tasks.backend.make_backend`` makes it."""

from __future__ import annotations

import logging
import time
from typing import Any

from celery import Celery, signals
from celery.schedules import crontab
from kombu import Exchange, Queue

from infra.database import set_application_name
from infra.settings import get_settings
from tasks import monitoring
from tasks.context import reset_current_task, set_current_task
from tasks.queues import QUEUES, TRANSIENT_ERRORS, retry_delay_seconds
from tasks.registry import (
    Periodic,
    TaskSpec,
    celery_redelivery_seconds,
    give_up_message,
    heartbeat_lapse_seconds,
    schedule,
    spec,
    task_specs,
)
from telemetry import events

log = logging.getLogger(__name__)


def _register(app: Celery, item: TaskSpec) -> None:
    def run(self, *args, **kwargs):
        # The worker's node name is its heartbeat identity (the main process beats for its pool children).
        token = set_current_task(self.request.id, CeleryBackend(self.app), self.request.hostname or None)
        try:
            return item.fn(*args, **kwargs)
        except TRANSIENT_ERRORS as exc:
            # Our own backoff rather than autoretry's: its jitter may draw 0 s for every retry. Past max_retries,
            # retry() raises ``exc`` itself, so the failure handlers see the real cause.
            delay = retry_delay_seconds(self.request.retries, settings.retry_backoff_max_seconds)
            raise self.retry(exc=exc, countdown=delay) from exc
        finally:
            reset_current_task(token)

    settings = get_settings()
    app.task(
        name=item.name,
        bind=True,
        queue=item.queue,
        max_retries=item.max_retries,
        # Chat answers are read from their stream and our task record: Celery's result (and the STARTED state it
        # would store first, a round trip before the answer begins) is for nobody.
        ignore_result=item.queue == "chat",
        soft_time_limit=item.time_limit,
        time_limit=item.time_limit + 30,
    )(run)


def _beat_entry(job: Periodic) -> dict:
    """Celery beat's entry for a periodic job: an interval, or a daily crontab (beat runs in UTC)."""
    if job.at:
        hour, minute = job.hour_minute
        when = crontab(hour=hour, minute=minute)
    else:
        when = job.every
    return {"task": job.name, "schedule": when, "options": {"queue": spec(job.name).queue}}


class CeleryBackend:
    """Sends tasks through a Celery app (its signals below record them as queued)."""

    name = "celery"

    def __init__(self, app: Celery) -> None:
        self.app = app

    def enqueue(self, name: str, *args: Any, task_id: str | None = None, delay: float | None = None) -> str:
        """Send task ``name`` with JSON arguments to its queue (due in ``delay`` seconds); returns the task id.
        Call after the commit."""
        item = spec(name)
        # Chat tasks keep no Celery result (see _register): then the client need not subscribe to one either.
        result = self.app.send_task(
            name, args=list(args), queue=item.queue, task_id=task_id, ignore_result=item.queue == "chat",
            countdown=delay,
        )
        return result.id

    def waiting_ingest_runs(self) -> set[str]:
        """Task ids whose ingestion still waits in this backend's ingest queue."""
        return monitoring.waiting_ingest_runs(self.name)

    def release_lost_messages(self) -> None:
        """Nothing to do: Celery's Redis transport gives a dead worker's unacknowledged messages back after its
        visibility timeout, and a worker holds only what it runs (prefetch 1), which the documents' and parts'
        claims cover."""

    def close(self) -> None:
        """Close the connections to Redis."""
        self.app.close()


def create_app(redis_url: str) -> Celery:
    """A Celery app on ``redis_url`` with every task of the registry registered."""
    settings = get_settings()
    redelivery = celery_redelivery_seconds()
    app = Celery("kbchat", broker=redis_url, backend=redis_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=settings.result_ttl_seconds,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_track_started=True,
        worker_prefetch_multiplier=1,
        # A pool child that grew past the bound (a huge document's text, the embedder's arena) is replaced after
        # its task, so an ingest worker's processes stay bounded (KiB; None = never).
        worker_max_memory_per_child=settings.ingest_max_memory_mb * 1024 or None,
        task_queues=[Queue(name, Exchange(name, type="direct"), routing_key=name) for name in QUEUES],
        task_default_queue="maintenance",
        task_default_exchange="maintenance",
        task_default_routing_key="maintenance",
        broker_transport_options={"visibility_timeout": redelivery},
        result_backend_transport_options={"visibility_timeout": redelivery},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        timezone="UTC",  # beat's daily jobs (KBCHAT_EVAL_AT) are in UTC on both backends
        worker_send_task_events=True,  # Flower (compose monitoring profile) reads these
        task_send_sent_event=True,
        beat_schedule={job.name: _beat_entry(job) for job in schedule()},
    )
    for item in task_specs():
        _register(app, item)
    return app

# --- events for the monitoring page, written the same way as on Dramatiq ------------------------------
_started: dict[str, float] = {}
_worker: dict[str, object] = {}


@signals.before_task_publish.connect
def _on_publish(sender=None, body=None, headers=None, routing_key=None, **_):
    headers = headers or {}
    if headers.get("retries"):
        return  # a retry re-publishes; the retry event was already recorded
    args, kwargs = (body[0], body[1]) if isinstance(body, tuple | list) and len(body) >= 2 else ((), {})
    events.record(
        headers["id"],
        events.QUEUED,
        name=sender or headers.get("task", ""),
        queue=routing_key or "",
        args=events.encode_args(args, kwargs),
        backend="celery",
    )


@signals.task_prerun.connect
def _on_prerun(task_id=None, task=None, **_):
    _started[task_id] = time.monotonic()
    events.record_started(task_id, name=task.name, worker=task.request.hostname or "")


@signals.task_postrun.connect
def _on_postrun(task_id=None, task=None, **_):
    events.task_ended_on(task.request.hostname or "", task_id)


@signals.task_success.connect
def _on_success(sender=None, result=None, **_):
    task_id = sender.request.id
    runtime = round(time.monotonic() - _started.pop(task_id, time.monotonic()), 3)
    events.record(task_id, events.SUCCEEDED, name=sender.name, runtime=runtime, result=result,
                  worker=sender.request.hostname or "")
    events.count_task(sender.request.hostname or "", ok=True)


@signals.task_retry.connect
def _on_retry(request=None, reason=None, sender=None, **_):
    exc = reason if isinstance(reason, BaseException) else RuntimeError(str(reason))
    events.record_failure(request.id, events.RETRY, exc, name=sender.name if sender else "")


@signals.task_failure.connect
def _on_failure(task_id=None, exception=None, sender=None, args=None, **_):
    runtime = round(time.monotonic() - _started.pop(task_id, time.monotonic()), 3)
    events.record_failure(task_id, events.FAILED, exception, name=sender.name, runtime=runtime,
                          worker=sender.request.hostname or "")
    events.count_task(sender.request.hostname or "", ok=False)
    item = spec(sender.name)
    if item.on_give_up:
        try:
            item.on_give_up(list(args or []), give_up_message(item, exception, runtime), task_id)
        except Exception:
            log.exception("could not record the failure of %s", task_id)


@signals.worker_process_init.connect
def _on_process_init(**_):
    set_application_name("kbchat.worker")


@signals.celeryd_after_setup.connect
def _on_setup(sender=None, instance=None, **_):
    _worker["name"] = sender
    _worker["instance"] = instance


@signals.worker_ready.connect
def _on_ready(sender=None, **_):
    app = sender.app  # the consumer of the worker's app
    instance = _worker.get("instance")
    queues = sorted(q.name for q in app.amqp.queues.consume_from.values()) if app.amqp.queues.consume_from else []
    heartbeat = events.Heartbeat(
        str(_worker.get("name") or events.worker_id()),
        {"backend": "celery", "queues": ",".join(queues), "concurrency": getattr(instance, "concurrency", 0)},
        on_beat=monitoring.maybe_sample_queues,  # whichever worker beats first in an interval samples the queues
    )
    heartbeat.start()
    _worker["heartbeat"] = heartbeat
    # Catch up on whatever was stuck while no worker ran, and once more when the heartbeat of a worker this one
    # replaced (restarted at once by a supervisor) has lapsed, so the work it held resumes now, not at the next tick.
    backend = CeleryBackend(app)
    backend.enqueue("maintenance.reconcile")
    backend.enqueue("maintenance.reconcile", delay=heartbeat_lapse_seconds())


@signals.worker_shutdown.connect
def _on_shutdown(**_):
    heartbeat = _worker.pop("heartbeat", None)
    if heartbeat is not None:
        heartbeat.stop()
