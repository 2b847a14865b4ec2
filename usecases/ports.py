"""What a use case is handed to schedule work: whichever task backend the caller runs on."""

from __future__ import annotations

from typing import Any, Protocol


class TaskQueue(Protocol):
    """A task backend as the use cases see it."""

    name: str  # "celery" or "dramatiq"

    def enqueue(self, name: str, *args: Any, task_id: str | None = None) -> str:
        """Send task ``name`` (``ingest.document``) with JSON arguments; returns the task id."""
        ...

    def waiting_ingest_runs(self) -> set[str]:
        """Task ids whose ingestion still waits in the ingest queue (reconciliation leaves those alone)."""
        ...

    def release_lost_messages(self) -> None:
        """Hand the messages that dead workers took but never acknowledged back to their queues, where the broker
        can tell (Dramatiq); the reconciler calls it first."""
        ...
