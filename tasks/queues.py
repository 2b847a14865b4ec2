"""The queues, what counts as a transient failure, and how deep a queue is: shared by the registry, both adapters
and the monitoring readers."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import redis.exceptions
import sqlalchemy.exc

QUEUES = ("ingest", "chat", "maintenance")

# Dramatiq's Redis keys start with this (broker) and with ``<namespace>-results`` (its result backend).
DRAMATIQ_NAMESPACE = "kbchat-dramatiq"

# Worth retrying with backoff: the database or Redis is restarting or unreachable for a moment.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sqlalchemy.exc.OperationalError,
    sqlalchemy.exc.InterfaceError,
    sqlalchemy.exc.DisconnectionError,
    redis.exceptions.ConnectionError,
    redis.exceptions.TimeoutError,
    ConnectionError,
)


def is_transient(exc: BaseException) -> bool:
    """Whether ``exc`` is worth a retry with backoff."""
    return isinstance(exc, TRANSIENT_ERRORS)


# The first retry waits at least this long; each further one twice as long (Dramatiq's ``min_backoff``).
RETRY_BACKOFF_SECONDS = 2


def retry_delay_seconds(retries: int, maximum: float, draw: Callable[[float, float], float] = random.uniform) -> float:
    """How long retry number ``retries + 1`` waits: the exponential step times a jitter of 1–2 (Dramatiq's rule),
    at most ``maximum``. Never less than the step: a jitter down to zero (Celery's ``retry_jitter``) can spend every
    retry within a second, before a restarting database is back."""
    step = min(maximum, RETRY_BACKOFF_SECONDS * 2 ** min(retries, 32))
    return min(maximum, step * draw(1.0, 2.0))


@dataclass
class QueueDepth:
    backend: str
    queue: str
    waiting: int = 0  # ready for the next free worker
    reserved: int = 0  # taken by a worker, not acknowledged yet
    delayed: int = 0  # Dramatiq: retries waiting out their backoff
    dead: int = 0  # Dramatiq: dead-lettered (kept a week, then dropped)
    by_priority: dict[int, int] = field(default_factory=dict)  # Celery: waiting per priority step

    @property
    def pending(self) -> int:
        """Every message not finished yet (dead letters are finished: they will not run again)."""
        return self.waiting + self.reserved + self.delayed

    def to_dict(self) -> dict:
        return {**asdict(self), "pending": self.pending}

