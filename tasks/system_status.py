"""The services under the task layer, for the monitoring page and the exporter: Redis (memory, result keys, cache
hit ratio), PostgreSQL (counts and sizes), the generation server (health, model, limits, response time), and how
often a question found no relevant passage."""

from __future__ import annotations

import time
from typing import Any

from db.repositories import monitoring as monitoring_repo
from infra.database import session_scope
from infra.redis_client import get_redis
from infra.settings import get_settings
from infra.urls import shown_url
from rag import llm_client
from tasks.queues import DRAMATIQ_NAMESPACE

# Keys that hold one task result each: the classic way a result backend fills Redis when results never expire.
RESULT_KEY_PREFIXES = {
    "celery": "celery-task-meta-",
    "dramatiq": f"{DRAMATIQ_NAMESPACE}-results:",
    "kbchat": "kbchat:task:",
}
TGI_LIMITS = ("max_input_tokens", "max_total_tokens", "max_concurrent_requests", "max_best_of",
              "max_stop_sequences", "max_batch_total_tokens", "max_client_batch_size")


def redis_figures(scan_limit: int = 1_000_000) -> dict[str, Any]:
    """Memory against maxmemory, key counts (result keys by kind), keyspace hit ratio, evictions."""
    r = get_redis()
    memory, stats, clients = r.info("memory"), r.info("stats"), r.info("clients")
    counts = dict.fromkeys(RESULT_KEY_PREFIXES, 0)
    scanned = 0
    for key in r.scan_iter(count=2000):
        scanned += 1
        for kind, prefix in RESULT_KEY_PREFIXES.items():
            if key.startswith(prefix):
                counts[kind] += 1
                break
        if scanned >= scan_limit:
            break
    hits, misses = int(stats.get("keyspace_hits", 0)), int(stats.get("keyspace_misses", 0))
    return {
        "used_memory": int(memory.get("used_memory", 0)),
        "used_memory_peak": int(memory.get("used_memory_peak", 0)),
        "maxmemory": int(memory.get("maxmemory", 0)),  # 0: no limit
        "maxmemory_policy": memory.get("maxmemory_policy", ""),
        "keys": r.dbsize(),
        "result_keys": counts,
        "result_keys_complete": scanned < scan_limit,
        "hits": hits,
        "misses": misses,
        "hit_ratio": hits / (hits + misses) if hits + misses else None,
        "evicted_keys": int(stats.get("evicted_keys", 0)),
        "connected_clients": int(clients.get("connected_clients", 0)),
    }


def postgres_figures() -> dict[str, Any]:
    """Knowledge bases, documents by status, chunks; database, table and index sizes."""
    with session_scope() as session:
        figures = monitoring_repo.figures(session=session)
        figures["tables"] = monitoring_repo.table_sizes(session=session)
        figures["indexes"] = monitoring_repo.index_sizes(session=session)
    return figures


def tgi_status() -> dict[str, Any]:
    """Whether a generation server is configured and answers, with its model, limits and response time."""
    url = (getattr(get_settings(), "tgi_url", "") or "").strip()
    if not url:
        return {"configured": False}
    shown = shown_url(url)  # no credentials
    started = time.perf_counter()
    health = llm_client.health()
    response_ms = round((time.perf_counter() - started) * 1000, 1)
    info = llm_client.server_info() if health.get("ok") else {}
    return {
        "configured": True,
        "url": shown,
        "ok": bool(health.get("ok")),
        "detail": health.get("detail", ""),
        "response_ms": response_ms,
        "model_id": info.get("model_id"),
        "version": info.get("version"),
        "limits": {key: info[key] for key in TGI_LIMITS if info.get(key) is not None},
    }
