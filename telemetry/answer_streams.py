"""Answer streams: the chat worker appends events to a Redis stream keyed by the task id; readers follow it.

Events, in order: ``status`` ({message, code}: retrying, trimming) while nothing is shown yet, one ``meta``
({mode, citations}), ``token`` (text), ``notice`` (text: why the answer ended early), then ``done``
({mode, citations, timings, stopped?, interrupted?}) or ``error`` (text, or {code, message}). A reader asks the
worker to stop with ``request_stop``; the worker checks it between tokens.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from infra.redis_client import get_redis
from infra.settings import get_settings

STREAM_KEY = "kbchat:stream:{}"
STARTED_KEY = "kbchat:stream:{}:started"  # set with the first token: a redelivered task must not repeat them
STOP_KEY = "kbchat:stop:{}"
TERMINAL = ("done", "error")


class StreamPublisher:
    """Append answer events (meta, token, done, error) to the task's stream.

    ``meta`` is held back and written together with the event after it (the first token, or a notice or the
    end), which always follows at once: one write for both, and the reader gets both in one read instead of
    waking for the meta and asking again before it sees the first token.
    """

    def __init__(self, task_id: str) -> None:
        self.key = STREAM_KEY.format(task_id)
        self.started_key = STARTED_KEY.format(task_id)
        self.ttl = get_settings().stream_ttl_seconds
        self._first = True
        self._tokens = False
        self._held: list[str] = []  # meta payloads not written yet

    def __call__(self, kind: str, data: Any) -> None:
        payload = data if isinstance(data, str) else json.dumps(data, default=str)
        if kind == "meta":
            self._held.append(payload)
            return
        pipe = get_redis().pipeline(transaction=False)  # one connection keeps the order; no MULTI/EXEC per token
        for held in self._held:
            pipe.xadd(self.key, {"kind": "meta", "data": held})
        self._held = []
        pipe.xadd(self.key, {"kind": kind, "data": payload})
        if self._first or kind in TERMINAL:
            pipe.expire(self.key, self.ttl)
            self._first = False
        if kind == "token" and not self._tokens:
            pipe.set(self.started_key, 1, ex=self.ttl)
            self._tokens = True
        pipe.execute()

    def already_streamed(self) -> bool:
        """Whether an earlier attempt of this task already sent tokens (the task was retried or redelivered)."""
        return bool(get_redis().exists(self.started_key))


def end_with_error(task_id: str, message: str) -> None:
    """End a stream whose worker is gone, or whose task gave up, with an error its reader shows (a late redelivery
    finds it streamed); a stream that has ended already is left as it is."""
    ttl = get_settings().stream_ttl_seconds
    last = get_redis().xrevrange(STREAM_KEY.format(task_id), count=1)
    if last and last[0][1].get("kind") in TERMINAL:
        return
    pipe = get_redis().pipeline()
    pipe.xadd(STREAM_KEY.format(task_id), {"kind": "error", "data": message})
    pipe.expire(STREAM_KEY.format(task_id), ttl)
    pipe.set(STARTED_KEY.format(task_id), 1, ex=ttl)
    pipe.execute()


def request_stop(task_id: str) -> None:
    """Ask the worker answering ``task_id`` to stop; it ends the stream with a notice."""
    get_redis().set(STOP_KEY.format(task_id), 1, ex=get_settings().stream_ttl_seconds)


class StopFlag:
    """``flag()`` is True once someone asked to stop this task; Redis is read at most every 100 ms."""

    def __init__(self, task_id: str, interval: float = 0.1) -> None:
        self.key = STOP_KEY.format(task_id)
        self.interval = interval
        self._checked = 0.0
        self._stopped = False

    def __call__(self) -> bool:
        now = time.monotonic()
        if not self._stopped and now - self._checked >= self.interval:
            self._checked = now
            try:
                self._stopped = bool(get_redis().exists(self.key))
            except Exception:  # Redis hiccup: keep answering, look again next time
                pass
        return self._stopped


def follow(task_id: str, *, timeout: float = 120.0, block_ms: int = 1000) -> Iterator[tuple[str, Any]]:
    """Yield (kind, data) as the worker writes them, until done or error; raise TimeoutError on silence."""
    r = get_redis()
    key = STREAM_KEY.format(task_id)
    last_id = "0-0"
    deadline = time.monotonic() + timeout
    while True:
        response = r.xread({key: last_id}, block=block_ms, count=200)
        if not response:
            if time.monotonic() > deadline:
                raise TimeoutError(f"no answer for task {task_id} within {timeout:.0f} s")
            continue
        deadline = time.monotonic() + timeout
        for entry_id, fields in response[0][1]:
            last_id = entry_id
            kind, data = fields["kind"], fields["data"]
            if kind != "token":
                try:
                    data = json.loads(data)
                except ValueError:
                    pass
            yield kind, data
            if kind in TERMINAL:
                return


def repair_expiry(now: float) -> int:
    """Streams and stop flags each have an expiry; one without (a crash between writing and setting it) is
    deleted once older than any reader, otherwise given its expiry again. Returns how many were deleted."""
    r = get_redis()
    ttl = get_settings().stream_ttl_seconds
    deleted = 0
    for pattern in (STREAM_KEY.format("*"), STOP_KEY.format("*")):
        for key in r.scan_iter(pattern, count=1000):
            if r.ttl(key) == -1:
                last = r.xrevrange(key, count=1) if r.type(key) == "stream" else []
                stamp = int(last[0][0].split("-")[0]) / 1000 if last else 0
                if now - stamp > ttl:
                    deleted += r.delete(key)
                else:
                    r.expire(key, ttl)
    return deleted


@dataclass
class AnswerRead:
    """What a reader saw of one answer's stream."""

    text: str = ""
    meta: dict = field(default_factory=dict)
    done: dict = field(default_factory=dict)
    notices: list[str] = field(default_factory=list)
    error: dict | None = None  # {"code", "message"} when the answer failed
    first_token_at: float | None = None  # time.perf_counter() of the first token

    @property
    def mode(self) -> str | None:
        return self.done.get("mode") or self.meta.get("mode")

    @property
    def citations(self) -> list[dict]:
        return self.done.get("citations", self.meta.get("citations", []))


def read_answer(
    task_id: str,
    *,
    timeout: float,
    on_status: Callable[[str], None] = lambda message: None,
    on_meta: Callable[[dict], None] = lambda meta: None,
    on_token: Callable[[str, str], None] = lambda piece, text: None,
    on_notice: Callable[[str], None] = lambda notice: None,
) -> AnswerRead:
    """Follow an answer's stream to its end, calling back as events arrive (``on_token`` gets the new piece and
    the text so far); TimeoutError when nothing arrives for ``timeout`` seconds."""
    read = AnswerRead()
    for kind, data in follow(task_id, timeout=timeout):
        if kind == "status":
            on_status(data.get("message", "") if isinstance(data, dict) else str(data))
        elif kind == "meta":
            read.meta = data
            on_meta(data)
        elif kind == "token":
            read.first_token_at = read.first_token_at or time.perf_counter()
            read.text += data
            on_token(data, read.text)
        elif kind == "notice":
            read.notices.append(str(data))
            on_notice(str(data))
        elif kind == "done":
            read.done = data
        elif kind == "error":
            read.error = ({"code": data.get("code"), "message": data.get("message", "")} if isinstance(data, dict)
                          else {"code": None, "message": str(data)})
    return read
