"""The queues, what counts as a transient failure, and how deep a queue is: shared by the registry, both adapters
and the monitoring readers."""

from __future__ import annotations

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

