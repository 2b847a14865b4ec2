"""The task the current thread is running: its id, the backend that runs it and the worker it runs on, set by the adapter around each
body (a body enqueues follow-up work through that backend, so no module holds one)."""

from __future__ import annotations

from contextvars import ContextVar, Token
from typing import Any

from usecases.ports import TaskQueue

_current: ContextVar[tuple[str, TaskQueue, str | None] | None] = ContextVar("kbchat_task", default=None)


def _get() -> tuple[str, TaskQueue, str | None]:
    current = _current.get()
    if current is None:
        raise RuntimeError("not inside a kbchat task")
    return current


def current_task_id() -> str:
    return _get()[0]


def current_backend() -> TaskQueue:
    """The backend running this task: what the body enqueues follow-up tasks with."""
    return _get()[1]


def current_worker() -> str | None:
    """The heartbeat identity of the worker running this task (what a document or part it starts records)."""
    return _get()[2]


def set_current_task(task_id: str | None, backend: TaskQueue, worker: str | None = None) -> Token[Any]:
    return _current.set((task_id, backend, worker) if task_id is not None else None)


def reset_current_task(token: Token[Any]) -> None:
    _current.reset(token)
