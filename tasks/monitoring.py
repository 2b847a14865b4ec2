"""What the monitoring page and the Prometheus exporter read: queue depth on either backend, workers (online and
lately gone), task counts, throughput and run times, recent failures, stalled documents. (What an admin can do
about them is in ``usecases.fixes``.)

Queue depth is read from the brokers' own Redis keys (``tasks.celery_queues``, ``tasks.dramatiq_queues``), so it
is exact and needs no worker to answer.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from datetime import timedelta
from typing import Any

from db.models import ACTIVE_STATES, QUEUED
from db.repositories import ingest_parts as part_repo
from db.repositories import monitoring as monitoring_repo
from infra.database import session_scope
from infra.redis_client import get_redis
from infra.settings import get_settings
from tasks import celery_queues, dramatiq_queues
from tasks.queues import QUEUES, QueueDepth
from telemetry import events, queue_history

# --- queues ----------------------------------------------------------------------------------------------------


def queue_depths(backend: str | None = None, queues: tuple[str, ...] | list[str] = QUEUES) -> list[QueueDepth]:
    """Depth of each queue on ``backend`` (default: the configured one), read from the broker's keys."""
    backend = backend or get_settings().task_backend
    return dramatiq_queues.depths(list(queues)) if backend == "dramatiq" else celery_queues.depths(list(queues))


def sample_queues() -> None:
    """Append the configured backend's queue depths to the queue-depth history."""
    backend = get_settings().task_backend
    sample: dict[str, Any] = {"ts": round(time.time(), 3), "backend": backend}
    for depth in queue_depths(backend):
        sample[f"{depth.queue}.waiting"] = depth.waiting
        sample[f"{depth.queue}.reserved"] = depth.reserved
        sample[f"{depth.queue}.delayed"] = depth.delayed
        sample[f"{depth.queue}.dead"] = depth.dead
    queue_history.append(sample)


def maybe_sample_queues() -> bool:
    """Take a sample unless another process took one in the last interval (workers call this each beat)."""
    if queue_history.claim_sample():
        sample_queues()
        return True
    return False


# --- workers ---------------------------------------------------------------------------------------------------


def workers() -> list[dict[str, Any]]:
    """Workers seen in the last day: online (heartbeat key alive), stopped (shut down cleanly) or offline
    (heartbeat expired: killed, crashed or cut off). Each with its current tasks and counts."""
    r = get_redis()
    live = {w["id"]: w for w in events.live_workers()}
    seen = dict(r.zrange(events.WORKERS_SEEN_KEY, 0, -1, withscores=True))
    infos = r.hgetall(events.WORKERS_INFO_KEY)
    rows = []
    for worker_id in set(live) | set(seen):
        if worker_id in live:
            record, status = live[worker_id], "online"
        else:
            try:
                record = json.loads(infos.get(worker_id) or "{}")
            except ValueError:
                record = {}
            status = "stopped" if record.get("stopped_at") else "offline"
        rows.append(_worker_row(worker_id, status, record, seen.get(worker_id)))
    _drop_finished_current_tasks([row for row in rows if row["status"] == "online"])
    order = {"online": 0, "offline": 1, "stopped": 2}
    return sorted(rows, key=lambda row: (order[row["status"]], -(row["last_heartbeat"] or 0), row["id"]))


def _worker_row(worker_id: str, status: str, record: dict, last_seen: float | None) -> dict[str, Any]:
    current = []
    for key, value in record.items():
        if key.startswith("task:"):
            try:
                info = json.loads(value)
            except ValueError:
                info = {}
            current.append({"id": key[5:], "name": info.get("name", ""), "started_at": info.get("started_at")})
    return {
        "id": worker_id,
        "status": status,
        "backend": record.get("backend", ""),
        "host": record.get("host", ""),
        "pid": int(record.get("pid") or 0),
        "queues": record.get("queues", ""),
        "concurrency": int(record.get("concurrency") or 0),
        "current": sorted(current, key=lambda t: t["started_at"] or 0),
        "processed": int(record.get("processed") or 0),
        "failed": int(record.get("failed") or 0),
        "started_at": float(record["started_at"]) if record.get("started_at") else None,
        "last_heartbeat": float(record.get("last_heartbeat") or last_seen or 0) or None,
        "stopped_at": float(record["stopped_at"]) if record.get("stopped_at") else None,
    }


def _drop_finished_current_tasks(rows: list[dict]) -> None:
    """A prefork child killed mid-task leaves its ``task:<id>`` field behind; the task record knows better."""
    ids = [task["id"] for row in rows for task in row["current"]]
    if not ids:
        return
    pipe = get_redis().pipeline()
    for task_id in ids:
        pipe.hget(events.TASK_KEY.format(task_id), "state")
    states = dict(zip(ids, pipe.execute(), strict=True))
    for row in rows:
        row["current"] = [t for t in row["current"] if states.get(t["id"]) in (events.STARTED, None)]


LOST_SHOWN_SECONDS = 3600  # a lost worker is summarised this long, and after it while what it held is unsettled


def lost_workers(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The offline workers (rows of ``workers()``) worth a line: lost in the last hour, or holding work nobody has
    taken over yet. Each gets ``held`` (its last tasks, each with ``fate``: finished, restarted, taken over or
    pending) and ``claims`` (unfinished documents or parts still naming it). A worker lost longer ago whose work is
    all accounted for is forgotten (taken out of the registry)."""
    offline = [row for row in rows if row["status"] == "offline"]
    if not offline:
        return []
    pipe = get_redis().pipeline()
    tasks = [(row, task) for row in offline for task in row["current"]]
    for _, task in tasks:
        pipe.hmget(events.TASK_KEY.format(task["id"]), "state", "retried_as", "worker")
    for (row, task), (state, retried_as, worker) in zip(tasks, pipe.execute(), strict=True):
        if retried_as:
            task["fate"] = "restarted"
        elif state in (events.SUCCEEDED, events.FAILED):
            task["fate"] = "finished"
        elif worker and worker != row["id"]:
            task["fate"] = "taken over"
        else:
            task["fate"] = "pending" if state else "finished"  # an expired record: long settled
    with session_scope() as session:
        claimed = monitoring_repo.claimed_documents(session=session)
    now = time.time()
    shown, forget = [], []
    for row in offline:
        row["held"] = row.pop("current")
        row["claims"] = sum(row["id"] in c["workers"] for c in claimed)
        settled = row["claims"] == 0 and all(t["fate"] != "pending" for t in row["held"])
        if now - (row["last_heartbeat"] or 0) < LOST_SHOWN_SECONDS or not settled:
            shown.append(row)
        else:
            forget.append(row["id"])
    events.forget_workers(forget)
    return shown


# --- tasks -----------------------------------------------------------------------------------------------------


def throughput(seconds: float, bucket_seconds: int = 60) -> list[dict[str, Any]]:
    """Finished tasks per minute in buckets of ``bucket_seconds``: [{minute (epoch s), succeeded, failed, retry}]."""
    per_bucket = max(1, bucket_seconds // 60)
    buckets: dict[int, dict[str, float]] = {}
    for minute, counts in events.minute_counts(seconds):
        start = (minute // per_bucket) * per_bucket * 60
        row = buckets.setdefault(start, {events.SUCCEEDED: 0.0, events.FAILED: 0.0, events.RETRY: 0.0})
        for key, n in counts.items():
            state = key.rpartition("|")[2]
            if state in row:
                row[state] += n / per_bucket  # a rate per minute, whatever the bucket
    return [{"minute": start, **row} for start, row in sorted(buckets.items())]


def _percentile(ordered: list[float], q: float) -> float:
    """Nearest-rank percentile of a sorted list."""
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def runtime_percentiles(seconds: float, limit: int = 20_000) -> list[dict[str, Any]]:
    """Run time of the tasks that succeeded in the last ``seconds``, per task name (newest ``limit`` events)."""
    start = int((time.time() - seconds) * 1000)
    runtimes: dict[str, list[float]] = defaultdict(list)
    for _, entry in get_redis().xrevrange(events.EVENTS_KEY, max="+", min=str(start), count=limit):
        if entry.get("event") == events.SUCCEEDED and entry.get("runtime"):
            runtimes[entry.get("name") or "?"].append(float(entry["runtime"]))
    rows = []
    for name, values in sorted(runtimes.items()):
        values.sort()
        rows.append({"task": name, "runs": len(values), "mean": sum(values) / len(values),
                     **{f"p{q}": _percentile(values, q) for q in (50, 90, 95, 99)}, "max": values[-1]})
    return rows


def recent_failures(limit: int = 20, scan: int = 5000) -> list[dict[str, Any]]:
    """The newest failed tasks (one row per task) with the error, traceback and whether they can be retried."""
    failed: dict[str, dict] = {}
    for _, entry in get_redis().xrevrange(events.EVENTS_KEY, count=scan):
        if entry.get("event") == events.FAILED and entry["task_id"] not in failed:
            failed[entry["task_id"]] = entry
            if len(failed) >= limit:
                break
    pipe = get_redis().pipeline()
    for task_id in failed:
        pipe.hgetall(events.TASK_KEY.format(task_id))
    rows = []
    for (task_id, entry), record in zip(failed.items(), pipe.execute(), strict=True):
        rows.append({
            "task_id": task_id,
            "name": record.get("name") or entry.get("name", ""),
            "queue": record.get("queue") or entry.get("queue", ""),
            "failed_at": float(entry.get("ts") or 0),
            "error": record.get("error") or entry.get("error", ""),
            "traceback": record.get("traceback", ""),
            "worker": record.get("worker") or entry.get("worker", ""),
            "args": record.get("args", ""),
            "retries": int(record.get("retries") or 0),
            "retried_as": record.get("retried_as"),
            "state": record.get("state", "expired"),
            "retryable": events.decode_args(record.get("args")) is not None,
        })
    return rows


def waiting_messages(queue: str, backend: str | None = None) -> list[tuple[str, str, list]]:
    """(task id, task name, args) of every message waiting in ``queue`` for a worker (and, on Dramatiq, retries
    waiting out their backoff): those will run without anyone re-enqueueing them. One read of the whole queue."""
    backend = backend or get_settings().task_backend
    return dramatiq_queues.waiting(queue) if backend == "dramatiq" else celery_queues.waiting(queue)


def waiting_ingest_runs(backend: str | None = None) -> set[str]:
    """Task ids whose ingestion waits in the ingest queue: ``ingest.document`` messages, and the run id (the
    document's task id) and own id of every waiting ``ingest.pages`` part. Reconciliation leaves those alone."""
    runs = set()
    for task_id, name, args in waiting_messages("ingest", backend):
        runs.add(task_id)
        if name == "ingest.pages" and len(args) >= 2:
            runs.add(str(args[1]))
    return runs


# --- stalled documents ----------------------------------------------------------------


def stalled_documents(older_than_seconds: float) -> list[dict[str, Any]]:
    """Documents in a non-final state that have not moved for ``older_than_seconds``, and those whose worker is
    lost (however recently), with their task's state and what their worker is doing (``worker``)."""
    with session_scope() as session:
        rows = monitoring_repo.stalled_documents(session=session, older_than=timedelta(seconds=older_than_seconds))
        claimed = monitoring_repo.claimed_documents(session=session)
    alive = events.alive_workers(set().union(*(row["workers"] for row in claimed)) if claimed else set())
    lost = {row["id"]: row for row in claimed if _lost(row, row["workers"], alive)}
    seen = {row["id"] for row in rows}
    rows += [row for row in lost.values() if row["id"] not in seen]
    pipe = get_redis().pipeline()
    for row in rows:
        pipe.hget(events.TASK_KEY.format(row["task_id"] or "-"), "state")
    for row, state in zip(rows, pipe.execute(), strict=True):
        row["task_state"] = state or ("expired" if row["task_id"] else "none")
        row["worker_state"] = lost_label(row["attempts"]) if row["id"] in lost else ""
    return rows


def lost_documents(documents: list) -> set[int]:
    """Of these documents (models), the ones in a non-final state whose worker, or the worker of a part of their
    current run, has no live heartbeat, or that wait in the queue for the attempt after a lost worker's."""
    active = [d for d in documents if d.status in ACTIVE_STATES]
    if not active:
        return set()
    with session_scope() as session:
        parts = part_repo.workers_of(session=session, document_ids=[d.id for d in active if not d.worker])
    claims = {d.id: ({d.worker} if d.worker else set()) | parts.get(d.id, set()) for d in active}
    alive = events.alive_workers(set().union(*claims.values()))
    return {d.id for d in active
            if _lost({"status": d.status, "lost_worker": d.lost_worker}, claims[d.id], alive)}


def _lost(row: dict, workers: set[str], alive: set[str]) -> bool:
    return bool(workers - alive) or (row["status"] == QUEUED and bool(row["lost_worker"]) and not workers)


def lost_label(attempts: int) -> str:
    """What the pages say about a document whose worker is gone: the reconciler starts the next attempt."""
    return f"worker lost — retrying (attempt {attempts + 1})"
