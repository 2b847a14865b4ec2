"""The id of the task the current thread is running, set by whichever backend runs it."""

from __future__ import annotations

from contextvars import ContextVar

_current: ContextVar[str | None] = ContextVar("kbchat_task_id", default=None)


def current_task_id() -> str:
    task_id = _current.get()
    if task_id is None:
        raise RuntimeError("not inside a kbchat task")
    return task_id


def set_current_task_id(task_id: str | None):
    return _current.set(task_id)


def reset_current_task_id(token) -> None:
    _current.reset(token)
