"""The same task bodies on Dramatiq: Redis broker, retries with backoff, time limits, results in Redis.

``DramatiqBackend`` is the one object a process sends tasks with; ``tasks.backend.make_backend`` makes it."""

from __future__ import annotations

import logging
import time
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.common import current_millis
from dramatiq.middleware import (
    AgeLimit,
    Callbacks,
    CurrentMessage,
    Middleware,
    Pipelines,
    Retries,
    ShutdownNotifications,
    TimeLimit,
)
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

from infra.database import dispose_engine, set_application_name
from infra.settings import get_settings
from tasks import monitoring
from tasks.context import reset_current_task, set_current_task
from tasks.queues import DRAMATIQ_NAMESPACE, QUEUES, RETRY_BACKOFF_SECONDS, is_transient
from tasks.registry import TaskSpec, give_up_message, heartbeat_lapse_seconds, spec, task_specs
from telemetry import events

log = logging.getLogger(__name__)


class KbchatEvents(Middleware):
    """Task events and worker heartbeats, in the same records Celery's signals write."""

    def __init__(self) -> None:
        self._started: dict[str, float] = {}
        self._heartbeat: events.Heartbeat | None = None

    def before_process_message(self, broker, message):
        self._started[message.message_id] = time.monotonic()
        events.record_started(message.message_id, name=message.actor_name, queue=message.queue_name,
                              worker=events.worker_id())

    def after_process_message(self, broker, message, *, result=None, exception=None):
        task_id = message.message_id
        runtime = round(time.monotonic() - self._started.pop(task_id, time.monotonic()), 3)
        worker = events.worker_id()
        try:
            self._record_outcome(message, worker, runtime, result, exception)
        finally:  # last, as on Celery (task_postrun follows task_success): a task no longer shown is counted
            events.task_ended_on(worker, task_id)

    def _record_outcome(self, message, worker: str, runtime: float, result, exception) -> None:
        task_id = message.message_id
        if exception is None:
            events.record(task_id, events.SUCCEEDED, name=message.actor_name, runtime=runtime, result=result,
                          worker=worker)
            events.count_task(worker, ok=True)
        elif message.failed:  # Retries (earlier in the chain) gave up
            events.record_failure(task_id, events.FAILED, exception, name=message.actor_name, runtime=runtime,
                                  worker=worker)
            events.count_task(worker, ok=False)
            item = spec(message.actor_name)
            if item.on_give_up:
                try:
                    item.on_give_up(list(message.args), give_up_message(item, exception, runtime), task_id)
                except Exception:
                    log.exception("could not record the failure of %s", task_id)
        else:
            events.record_failure(task_id, events.RETRY, exception, name=message.actor_name, worker=worker)

    def after_skip_message(self, broker, message):
        events.record(message.message_id, events.FAILED, name=message.actor_name, error="skipped (too old)")

    def after_worker_boot(self, broker, worker):
        set_application_name("kbchat.worker")
        queues = sorted(worker.consumer_whitelist or broker.get_declared_queues())
        self._heartbeat = events.Heartbeat(
            events.worker_id(),
            {"backend": "dramatiq", "queues": ",".join(q for q in queues if not q.endswith(".DQ")),
             "concurrency": worker.worker_threads},
            on_beat=monitoring.maybe_sample_queues,  # whichever worker beats first in an interval samples the queues
        )
        self._heartbeat.start()
        # Catch up on what was stuck while no worker ran, and once more when the heartbeat of a worker this one
        # replaced (restarted at once by a supervisor) has lapsed, so its work resumes now, not at the next tick.
        backend = DramatiqBackend(broker)
        backend.enqueue("maintenance.reconcile")
        backend.enqueue("maintenance.reconcile", delay=heartbeat_lapse_seconds())

    def after_worker_shutdown(self, broker, worker):
        # Only now, when the messages in hand are finished: until then the worker is alive and its claims stand.
        if self._heartbeat is not None:
            self._heartbeat.stop()
        dispose_engine()


def _retry_when(max_retries: int):
    def retry_when(retries: int, exception: BaseException) -> bool:
        return retries < max_retries and is_transient(exception)

    return retry_when


def _register(broker: RedisBroker, item: TaskSpec) -> dramatiq.Actor:
    def run(*args, **kwargs):
        message = CurrentMessage.get_current_message()
        token = set_current_task(message.message_id if message else None, DramatiqBackend(broker), events.worker_id())
        try:
            return item.fn(*args, **kwargs)
        finally:
            reset_current_task(token)

    run.__name__ = item.name.replace(".", "_")
    return dramatiq.actor(
        run,
        actor_name=item.name,
        queue_name=item.queue,
        broker=broker,
        max_retries=item.max_retries,
        retry_when=_retry_when(item.max_retries),
        min_backoff=RETRY_BACKOFF_SECONDS * 1000,  # the same rule as retry_delay_seconds on Celery
        max_backoff=get_settings().retry_backoff_max_seconds * 1000,
        time_limit=item.time_limit * 1000,
        store_results=True,
    )


def create_broker(redis_url: str) -> RedisBroker:
    """A Redis broker on ``redis_url`` with every task of the registry declared as an actor on it."""
    settings = get_settings()
    broker = RedisBroker(
        url=redis_url,
        namespace=DRAMATIQ_NAMESPACE,
        # A dead worker's unacknowledged messages are requeued by another worker once its heartbeat is this old.
        heartbeat_timeout=settings.dramatiq_heartbeat_timeout_seconds * 1000,
        maintenance_chance=settings.dramatiq_maintenance_chance,
        # after_* hooks run in reverse order: events go first so they see what Retries decided.
        middleware=[
            KbchatEvents(),
            AgeLimit(),
            TimeLimit(),
            ShutdownNotifications(),
            Callbacks(),
            Pipelines(),
            Retries(),
            CurrentMessage(),
            # Readable result keys (not bare MD5s), so the monitoring page can count them.
            Results(backend=RedisBackend(url=redis_url, namespace=f"{DRAMATIQ_NAMESPACE}-results",
                                         use_namespace_prefix_keys=True),
                    result_ttl=settings.result_ttl_seconds * 1000),
        ],
    )
    for item in task_specs():
        _register(broker, item)
    return broker


class DramatiqBackend:
    """Sends tasks through a Dramatiq broker; records them as queued (Dramatiq has no publish signal)."""

    name = "dramatiq"

    def __init__(self, broker: RedisBroker) -> None:
        self.broker = broker

    def enqueue(self, name: str, *args: Any, task_id: str | None = None, delay: float | None = None) -> str:
        """Send task ``name`` with JSON arguments to its queue (due in ``delay`` seconds); returns the task id.
        Call after the commit."""
        message = self.broker.get_actor(name).message(*args)
        if task_id:
            message = message.copy(message_id=task_id)
        events.record(message.message_id, events.QUEUED, name=name, queue=message.queue_name,
                      args=events.encode_args(args), backend="dramatiq")
        self.broker.enqueue(message, delay=int(delay * 1000) if delay else None)
        return message.message_id

    def waiting_ingest_runs(self) -> set[str]:
        """Task ids whose ingestion still waits in this backend's ingest queue."""
        return monitoring.waiting_ingest_runs(self.name)

    def release_lost_messages(self) -> None:
        """Put the messages that dead Dramatiq workers took (their broker heartbeat older than the broker's
        ``heartbeat_timeout``) back in their queues now: the broker itself does it only on a small, random share of
        its commands (``maintenance_chance``), so a dead worker's prefetched messages could wait minutes."""
        broker, dispatch = self.broker, self.broker.scripts["dispatch"]
        for queue in QUEUES:
            for name in (queue, f"{queue}.DQ"):
                dispatch(keys=[broker.namespace], args=[
                    "qsize", current_millis(), name, broker.broker_id, broker.heartbeat_timeout,
                    broker.dead_message_ttl, 1, broker._max_unpack_size(),
                ])

    def close(self) -> None:
        """Close the connections to Redis."""
        self.broker.close()
