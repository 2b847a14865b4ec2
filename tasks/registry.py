"""Which tasks exist, on which queue, with which limits: the one table both backends register from."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from infra.settings import get_settings
from tasks import bodies
from tasks.queues import is_transient


@dataclass(frozen=True)
class TaskSpec:
    name: str
    fn: Callable
    queue: str
    time_limit: int  # seconds
    max_retries: int
    on_give_up: Callable[[list, str, str], None] | None = None  # (args, error, task id)


def task_specs() -> list[TaskSpec]:
    settings = get_settings()
    return [
        TaskSpec(
            "ingest.document",
            bodies.ingest_document,
            "ingest",
            settings.ingest_time_limit_seconds,
            settings.max_retries,
            on_give_up=bodies.give_up_ingest,
        ),
        TaskSpec(
            "ingest.pages",
            bodies.ingest_pages,
            "ingest",
            settings.ingest_time_limit_seconds,
            settings.max_retries,
            on_give_up=bodies.give_up_pages,
        ),
        TaskSpec("chat.answer", bodies.chat_answer, "chat", settings.chat_time_limit_seconds, 2,
                 on_give_up=bodies.give_up_answer),
        TaskSpec("chat.search", bodies.chat_search, "chat", 60, 2),
        TaskSpec("chat.summarize", bodies.chat_summarize, "chat", settings.chat_time_limit_seconds, 2),
        TaskSpec("maintenance.reconcile", bodies.maintenance_reconcile, "maintenance", 300, 2),
        TaskSpec("maintenance.evaluate", bodies.maintenance_evaluate, "maintenance", 3600, 2),
        TaskSpec("maintenance.evaluate_golden", bodies.maintenance_evaluate_golden, "maintenance", 3600, 2),
        TaskSpec("maintenance.consistency", bodies.maintenance_consistency, "maintenance", 900, 2),
        TaskSpec("maintenance.alerts", bodies.maintenance_alerts, "maintenance", 300, 2),
        TaskSpec("maintenance.cleanup", bodies.maintenance_cleanup, "maintenance", 600, 2),
    ]


def heartbeat_lapse_seconds() -> int:
    """When a worker's heartbeat that was renewed just now is certainly lapsed: its time-to-live and one beat."""
    settings = get_settings()
    return settings.heartbeat_ttl_seconds + settings.heartbeat_interval_seconds


def celery_redelivery_seconds() -> int:
    """Celery's visibility timeout: an unacknowledged task (its worker died) comes back after this; by default it
    outlasts the longest task, so a running task is never handed out twice."""
    settings = get_settings()
    return settings.redelivery_timeout_seconds or max(item.time_limit for item in task_specs()) + 300


def spec(name: str) -> TaskSpec:
    for item in task_specs():
        if item.name == name:
            return item
    raise KeyError(f"unknown task {name!r}")


@dataclass(frozen=True)
class Periodic:
    """A scheduled job: every ``every`` seconds, or daily at ``at`` (``HH:MM``, UTC)."""

    name: str
    every: float | None = None
    at: str | None = None

    @property
    def hour_minute(self) -> tuple[int, int]:
        hour, minute = (self.at or "00:00").split(":")
        return int(hour), int(minute)


def schedule() -> list[Periodic]:
    """Periodic jobs, for Celery beat and the Dramatiq-mode scheduler alike (the times are settings)."""
    settings = get_settings()
    return [
        Periodic("maintenance.reconcile", every=float(settings.reconcile_interval_seconds)),
        Periodic("maintenance.evaluate", at=settings.eval_at),
        Periodic("maintenance.consistency", every=float(settings.consistency_interval_seconds)),
        Periodic("maintenance.alerts", every=float(settings.alert_check_interval_seconds)),
        Periodic("maintenance.cleanup", every=float(settings.cleanup_interval_seconds)),
    ]


# The worker's clock for an attempt starts a little after the time limit's own timer (Celery's parent arms it when
# it hands the job over, before the child's task_prerun), so an attempt stopped by its limit may show a runtime a
# few milliseconds under it.
TIME_LIMIT_SLACK_SECONDS = 0.05


def give_up_message(spec: TaskSpec, exc: BaseException, runtime: float | None = None) -> str:
    """What a person sees on a document whose task failed for good. A time limit is named as such also when it
    struck inside something that reported it as its own error (an extension module being imported answers
    "ImportError: initialization failed"): when the time-limit exception is in the error's chain, or the attempt
    had run ``runtime`` seconds, about its limit or more."""
    name = type(exc).__name__
    if _chain_holds_time_limit(exc) or (
        runtime is not None and runtime >= spec.time_limit - TIME_LIMIT_SLACK_SECONDS
    ):
        return f"Processing took longer than the {spec.time_limit} s limit and was stopped."
    if is_transient(exc):
        return f"Gave up after {spec.max_retries} retries: a service was unavailable ({name}: {exc})."[:1000]
    return f"Internal error while processing ({name}: {exc}). Retry it; if it fails again, report it."[:1000]


def _chain_holds_time_limit(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception it was raised from or during (a bounded, cycle-safe walk) is a time limit's:
    Celery's SoftTimeLimitExceeded, Dramatiq's TimeLimitExceeded."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen and len(seen) < 20:
        if "TimeLimit" in type(link).__name__:
            return True
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return False
