"""What the monitoring and status pages read: task records, an event stream and worker heartbeats.

Both backends write them the same way, with bounded retention: task records expire with the results, the
event stream is capped, heartbeats carry a time-to-live.
"""

from __future__ import annotations

import json
import math
import os
import socket
import threading
import time
import traceback as tb
from collections.abc import Callable
from typing import Any

from infra.redis_client import get_redis
from infra.settings import get_settings

TASK_KEY = "kbchat:task:{}"
EVENTS_KEY = "kbchat:events"
WORKER_KEY = "kbchat:worker:{}"
WORKER_PATTERN = "kbchat:worker:*"
# Every worker seen lately (id → last beat) and its last heartbeat record, so one whose key expired shows offline.
WORKERS_SEEN_KEY = "kbchat:workers:seen"
WORKERS_INFO_KEY = "kbchat:workers:info"
# The tasks a worker has started and not ended (task id → name), written with each start: a worker that dies
# between two heartbeats still names what it held (its heartbeat record is copied only once a beat).
HELD_KEY = "kbchat:held:{}"
WORKERS_SEEN_SECONDS = 24 * 3600
WORKERS_SEEN_MAX = 500
# Task events counted per minute ("<name>|<event>" → n), kept a little over a day: exact hour and day counts.
STATS_KEY = "kbchat:stats:{}"
STATS_TTL_SECONDS = 25 * 3600

QUEUED, STARTED, RETRY, SUCCEEDED, FAILED = "queued", "started", "retry", "succeeded", "failed"
STATES = (QUEUED, STARTED, SUCCEEDED, FAILED, RETRY)


def _now() -> float:
    return round(time.time(), 3)


def summarise_args(args: tuple | list, kwargs: dict | None = None) -> str:
    """A short, readable form of a task's arguments (they are IDs and small JSON)."""
    text = json.dumps({"args": list(args), "kwargs": kwargs or {}}, default=str)
    return text if len(text) <= 300 else text[:297] + "..."


def encode_args(args: tuple | list, kwargs: dict | None = None) -> str:
    """The task's arguments as JSON, whole up to 16 kB, so the monitoring page can enqueue the task again."""
    text = json.dumps({"args": list(args), "kwargs": kwargs or {}}, default=str)
    return text if len(text) <= 16_000 else summarise_args(args, kwargs)


def decode_args(raw: str | None) -> list | None:
    """The positional arguments stored with a task (``encode_args``), or None when they cannot be replayed."""
    try:
        data = json.loads(raw or "")
    except ValueError:
        return None
    if not isinstance(data, dict) or not isinstance(data.get("args"), list) or data.get("kwargs"):
        return None
    return data["args"]


def record(task_id: str, event: str, *, name: str = "", queue: str = "", **fields: Any) -> None:
    """Update the task's record and append the event to the capped stream."""
    pipe = get_redis().pipeline()
    _record_into(pipe, task_id, event, name=name, queue=queue, **fields)
    pipe.execute()


def record_started(task_id: str, *, name: str, worker: str, queue: str = "") -> None:
    """A task attempt starts: its record, the event and the worker's running-task field in one round trip
    (it is on the way to every answer's first token)."""
    pipe = get_redis().pipeline()
    _record_into(pipe, task_id, STARTED, name=name, queue=queue, worker=worker)
    pipe.eval(_UPDATE_WORKER, 1, WORKER_KEY.format(worker), f"task:{task_id}",
              json.dumps({"name": name, "started_at": _now()}), "", "")
    pipe.hset(HELD_KEY.format(worker), task_id, name)
    pipe.expire(HELD_KEY.format(worker), get_settings().result_ttl_seconds)
    pipe.execute()


def _record_into(pipe, task_id: str, event: str, *, name: str = "", queue: str = "", **fields: Any) -> None:
    settings = get_settings()
    now = _now()
    mapping: dict[str, Any] = {"state": event, "updated_at": now}
    if name:
        mapping["name"] = name
    if queue:
        mapping["queue"] = queue
    if event == QUEUED:
        mapping["queued_at"] = now
    elif event == STARTED:
        mapping["started_at"] = now
    elif event in (SUCCEEDED, FAILED):
        mapping["finished_at"] = now
    for key, value in fields.items():
        if value is not None:
            mapping[key] = value if isinstance(value, str | int | float) else json.dumps(value, default=str)
    key = TASK_KEY.format(task_id)
    pipe.hset(key, mapping=mapping)
    if event == RETRY:
        pipe.hincrby(key, "retries", 1)
    elif event == SUCCEEDED:  # an earlier attempt's error is history (kept in the event stream), not this state
        pipe.hdel(key, "error", "traceback")
    pipe.expire(key, settings.result_ttl_seconds)
    stream = {"task_id": task_id, "event": event, "ts": now, "name": name, "queue": queue}
    for field in ("worker", "runtime", "error"):
        if fields.get(field) is not None:
            stream[field] = str(fields[field])[:500]
    pipe.xadd(EVENTS_KEY, stream, maxlen=settings.events_max_len, approximate=True)
    stats = STATS_KEY.format(int(now // 60))
    pipe.hincrby(stats, f"{name or '?'}|{event}", 1)
    pipe.expire(stats, STATS_TTL_SECONDS)


def record_failure(task_id: str, event: str, exc: BaseException, **fields: Any) -> None:
    """Record a retry or failure with the error line and the traceback."""
    trace = "".join(tb.format_exception(type(exc), exc, exc.__traceback__, limit=30))
    record(task_id, event, error=f"{type(exc).__name__}: {exc}"[:1000], traceback=trace[-8000:], **fields)


def get_task(task_id: str) -> dict[str, Any] | None:
    """The task's record, or None when unknown or expired."""
    data = get_redis().hgetall(TASK_KEY.format(task_id))
    if not data:
        return None
    for key in ("result",):
        if key in data:
            try:
                data[key] = json.loads(data[key])
            except ValueError:
                pass
    return data


def get_tasks(task_ids: list[str]) -> dict[str, dict[str, Any]]:
    """Several tasks' records in one round trip (unknown or expired ones left out)."""
    pipe = get_redis().pipeline()
    for task_id in task_ids:
        pipe.hgetall(TASK_KEY.format(task_id))
    return {task_id: data for task_id, data in zip(task_ids, pipe.execute(), strict=True) if data}


def recent_events(count: int = 100) -> list[dict[str, str]]:
    return [fields for _, fields in get_redis().xrevrange(EVENTS_KEY, count=count)]


def trim_stream(key: str, before: float) -> int:
    """Drop a capped stream's entries older than ``before`` (epoch seconds; entry ids are milliseconds)."""
    r = get_redis()
    return int(r.xtrim(key, minid=f"{int(before * 1000)}-0", approximate=False) or 0) if r.exists(key) else 0


def trim(before: float) -> int:
    """Drop the event stream's entries older than ``before``; returns how many."""
    return trim_stream(EVENTS_KEY, before)


def link_retry(task_id: str, new_id: str) -> None:
    """Note on both records that ``new_id`` runs ``task_id`` again (the old record keeps its expiry)."""
    pipe = get_redis().pipeline()
    pipe.hset(TASK_KEY.format(task_id), "retried_as", new_id)
    pipe.hset(TASK_KEY.format(new_id), "retry_of", task_id)
    pipe.execute()


def wait_for_result(task_id: str, timeout: float = 30.0) -> Any:
    """Block until the task succeeded and return its result; raise RuntimeError on failure, TimeoutError on silence."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        record = get_task(task_id) or {}
        if record.get("state") == SUCCEEDED:
            return record.get("result")
        if record.get("state") == FAILED:
            raise RuntimeError(record.get("error") or "the task failed")
        time.sleep(0.1)
    raise TimeoutError(f"task {task_id} did not finish within {timeout:.0f} s; are the workers running?")


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class Heartbeat:
    """A thread that keeps the worker's key alive; when the worker dies the key expires and it shows offline."""

    def __init__(self, worker: str, info: dict[str, Any], on_beat: Callable[[], object] | None = None) -> None:
        self.worker = worker
        self.on_beat = on_beat  # the task layer samples the queue depths here
        self.info = {"host": socket.gethostname(), "pid": os.getpid(), "started_at": _now(), **info}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="kbchat-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        try:  # a clean stop deregisters: the worker is gone, not lost, and nothing it held is left behind
            forget_workers([self.worker])
        except Exception:
            pass

    def beat(self) -> None:
        settings = get_settings()
        key = WORKER_KEY.format(self.worker)
        mapping = {k: v if isinstance(v, str | int | float) else json.dumps(v) for k, v in self.info.items()}
        now = mapping["last_heartbeat"] = _now()
        pipe = get_redis().pipeline()
        pipe.hset(key, mapping=mapping)
        pipe.expire(key, settings.heartbeat_ttl_seconds)
        pipe.hgetall(key)
        record = pipe.execute()[-1]
        # The registry of workers seen lately, bounded by age and count.
        pipe = get_redis().pipeline()
        pipe.zadd(WORKERS_SEEN_KEY, {self.worker: now})
        pipe.hset(WORKERS_INFO_KEY, self.worker, json.dumps(record))
        pipe.zrangebyscore(WORKERS_SEEN_KEY, 0, now - WORKERS_SEEN_SECONDS)
        pipe.zrange(WORKERS_SEEN_KEY, 0, -WORKERS_SEEN_MAX - 1)
        forgotten = set().union(*pipe.execute()[-2:])
        if forgotten:
            pipe = get_redis().pipeline()
            pipe.zrem(WORKERS_SEEN_KEY, *forgotten)
            pipe.hdel(WORKERS_INFO_KEY, *forgotten)
            pipe.execute()

    def _run(self) -> None:
        interval = get_settings().heartbeat_interval_seconds
        while not self._stop.is_set():
            try:
                self.beat()
                if self.on_beat is not None:
                    self.on_beat()
            except Exception:  # Redis restarting: try again next beat
                pass
            self._stop.wait(interval)


# Changes a worker's heartbeat record only while it exists: a write after expiry must not leave a key without TTL.
_UPDATE_WORKER = """
if redis.call('exists', KEYS[1]) == 0 then return 0 end
if ARGV[1] ~= '' then redis.call('hset', KEYS[1], ARGV[1], ARGV[2]) end
if ARGV[3] ~= '' then redis.call('hdel', KEYS[1], ARGV[3]) end
if ARGV[4] ~= '' then redis.call('hincrby', KEYS[1], ARGV[4], 1) end
return 1
"""


def _update_worker(worker: str, *, set_field: str = "", value: str = "", delete: str = "", count: str = "") -> None:
    get_redis().eval(_UPDATE_WORKER, 1, WORKER_KEY.format(worker), set_field, value, delete, count)


def task_ended_on(worker: str, task_id: str) -> None:
    """The attempt ended (success, failure or retry): the worker no longer runs it."""
    pipe = get_redis().pipeline()
    pipe.eval(_UPDATE_WORKER, 1, WORKER_KEY.format(worker), "", "", f"task:{task_id}", "")
    pipe.hdel(HELD_KEY.format(worker), task_id)
    pipe.execute()


def count_task(worker: str, ok: bool) -> None:
    """Count a processed or failed task on the worker's heartbeat record."""
    _update_worker(worker, count="processed" if ok else "failed")


def forget_workers(workers: list[str]) -> None:
    """Take workers out of the registry: their heartbeat key, the seen set and their last record."""
    if not workers:
        return
    pipe = get_redis().pipeline()
    pipe.delete(*[WORKER_KEY.format(w) for w in workers], *[HELD_KEY.format(w) for w in workers])
    pipe.zrem(WORKERS_SEEN_KEY, *workers)
    pipe.hdel(WORKERS_INFO_KEY, *workers)
    pipe.execute()


def lost_tasks(names: tuple[str, ...]) -> list[tuple[str, str]]:
    """(worker, task id) of the tasks named ``names`` that workers whose heartbeat lapsed were running, by the
    worker's last heartbeat record, and that their records still show started on that worker."""
    r = get_redis()
    seen = r.zrange(WORKERS_SEEN_KEY, 0, -1)
    gone = sorted(set(seen) - alive_workers(seen))
    if not gone:
        return []
    pipe = r.pipeline()
    for worker in gone:
        pipe.hgetall(HELD_KEY.format(worker))
    candidates = [(worker, task_id) for worker, held in zip(gone, pipe.execute(), strict=True)
                  for task_id, name in held.items() if name in names]
    if not candidates:
        return []
    pipe = r.pipeline()
    for _, task_id in candidates:
        pipe.hmget(TASK_KEY.format(task_id), "state", "worker")
    return [(worker, task_id) for (worker, task_id), (state, ran_on) in zip(candidates, pipe.execute(), strict=True)
            if state == STARTED and ran_on == worker]


def alive_workers(workers: set[str] | list[str]) -> set[str]:
    """Which of these heartbeat identities still have a live heartbeat key."""
    names = sorted(workers)
    if not names:
        return set()
    pipe = get_redis().pipeline()
    for name in names:
        pipe.exists(WORKER_KEY.format(name))
    return {name for name, found in zip(names, pipe.execute(), strict=True) if found}


def live_workers() -> list[dict[str, str]]:
    r = get_redis()
    workers = []
    for key in r.scan_iter(WORKER_PATTERN, count=500):
        data = r.hgetall(key)
        if data:
            data["id"] = key.split(":", 2)[2]
            workers.append(data)
    return sorted(workers, key=lambda w: w["id"])


# --- counts per minute -------------------------------------------------------------------------------------


def minute_counts(seconds: float) -> list[tuple[int, dict[str, int]]]:
    """(minute, {"<name>|<event>": n}) for each minute of the last ``seconds``, oldest first."""
    now = int(time.time() // 60)
    minutes = list(range(now - max(1, math.ceil(seconds / 60)) + 1, now + 1))
    pipe = get_redis().pipeline()
    for minute in minutes:
        pipe.hgetall(STATS_KEY.format(minute))
    return [(m, {k: int(v) for k, v in counts.items()}) for m, counts in zip(minutes, pipe.execute(), strict=True)]


def task_counts(seconds: float) -> dict[str, dict[str, int]]:
    """Events in the last ``seconds`` per task name and state, plus ``"all"``: {name: {state: n}}."""
    totals: dict[str, dict[str, int]] = {"all": dict.fromkeys(STATES, 0)}
    for _, counts in minute_counts(seconds):
        for key, n in counts.items():
            name, _, state = key.rpartition("|")
            if state in STATES:
                totals.setdefault(name, dict.fromkeys(STATES, 0))[state] += n
                totals["all"][state] += n
    return totals
