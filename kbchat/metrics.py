"""``kbchat metrics``: a Prometheus exporter for the task layer, on either backend.

Gauges are read at each scrape (queue depth per queue and state, workers by status, Redis memory and result keys);
counters and histograms follow the capped ``kbchat:events`` stream from the exporter's start (task events by task
and state, run times, ingested pages, chat time to first token from ``chat.answer`` results). Flower exports no
queue length at all; this does, the same on Celery and Dramatiq.
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections import deque
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from db.repositories import alerts as alert_repo
from db.repositories import evaluations as eval_repo
from infra.database import session_scope
from infra.redis_client import get_redis
from infra.settings import get_settings
from tasks import monitoring, system_status
from telemetry import events, retrievals

log = logging.getLogger(__name__)

RUNTIME_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, float("inf"))
TTFT_BUCKETS = (0.1, 0.25, 0.5, 0.75, 1, 1.5, 2, 3, 5, 10, 20, 45, float("inf"))
PAGES_WINDOW_SECONDS = 300
RESULT_KEYS_EVERY_SECONDS = 60  # a full key scan: not at every scrape
QUALITY_EVERY_SECONDS = 60  # evaluations run nightly: a database query a minute is plenty


class KbchatCollector(Collector):
    """Everything ``kbchat metrics`` exports; each scrape first catches up on the event stream."""

    def __init__(self, *, from_start: bool = False) -> None:
        self._lock = threading.Lock()
        self._quality_cache: tuple[float, dict | None] = (0.0, None)  # (monotonic time taken, figures)
        self._last_id = "0-0" if from_start else self._stream_end()
        self.task_events = Counter("kbchat_task_events", "Task events (queued, started, retry, succeeded, "
                                   "failed) by task name", ["task", "state"], registry=None)
        self.runtime = Histogram("kbchat_task_runtime_seconds", "Run time of finished task attempts",
                                 ["task", "state"], buckets=RUNTIME_BUCKETS, registry=None)
        self.ttft = Histogram("kbchat_chat_time_to_first_token_seconds", "chat.answer: from the task's start to "
                              "its first answer token", buckets=TTFT_BUCKETS, registry=None)
        self.pages = Counter("kbchat_ingest_pages", "Pages of documents ingested (ready)", registry=None)
        self._recent_pages: deque[tuple[float, int]] = deque()
        self._result_keys: tuple[float, dict[str, int]] = (0.0, {})

    @staticmethod
    def _stream_end() -> str:
        last = get_redis().xrevrange(events.EVENTS_KEY, count=1)
        return last[0][0] if last else "0-0"

    def poll(self, batch: int = 1000, most: int = 50_000) -> int:
        """Count the events added since the last poll; returns how many."""
        r = get_redis()
        seen = 0
        while seen < most:
            entries = r.xrange(events.EVENTS_KEY, min=f"({self._last_id}", max="+", count=batch)
            if not entries:
                break
            self._last_id = entries[-1][0]
            seen += len(entries)
            finished = []
            for _, entry in entries:
                name, state = entry.get("name") or "?", entry.get("event", "?")
                self.task_events.labels(name, state).inc()
                if entry.get("runtime"):
                    self.runtime.labels(name, state).observe(float(entry["runtime"]))
                if state == events.SUCCEEDED and name in ("chat.answer", "ingest.document", "ingest.pages"):
                    finished.append((name, entry["task_id"]))
            self._observe_results(finished)
        return seen

    def _observe_results(self, finished: list[tuple[str, str]]) -> None:
        if not finished:
            return
        pipe = get_redis().pipeline()
        for _, task_id in finished:
            pipe.hget(events.TASK_KEY.format(task_id), "result")
        for (name, _), raw in zip(finished, pipe.execute(), strict=True):
            try:
                result = json.loads(raw) if raw else {}
            except ValueError:
                continue
            if not isinstance(result, dict):
                continue
            if name == "chat.answer":
                first = (result.get("timings") or {}).get("first_token_ms")
                if first is not None and not result.get("error"):
                    self.ttft.observe(float(first) / 1000)
            elif result.get("status") == "ready" and result.get("pages"):
                self.pages.inc(int(result["pages"]))
                self._recent_pages.append((time.time(), int(result["pages"])))

    def _pages_per_second(self) -> float:
        cutoff = time.time() - PAGES_WINDOW_SECONDS
        while self._recent_pages and self._recent_pages[0][0] < cutoff:
            self._recent_pages.popleft()
        return sum(pages for _, pages in self._recent_pages) / PAGES_WINDOW_SECONDS

    def collect(self) -> Iterator[Metric]:
        with self._lock:
            up = GaugeMetricFamily("kbchat_up", "1 when the exporter could read Redis at this scrape")
            try:
                self.poll()
                gauges = list(self._gauges())
            except Exception as exc:  # Redis down: say so instead of failing the scrape
                log.warning("metrics: %s", exc)
                up.add_metric([], 0)
                yield up
                return
            up.add_metric([], 1)
            yield up
            yield from gauges
            yield from self._quality()
            yield from self.task_events.collect()
            yield from self.runtime.collect()
            yield from self.ttft.collect()
            yield from self.pages.collect()

    def _gauges(self) -> Iterator[Metric]:
        monitoring.maybe_sample_queues()  # the exporter keeps the page's depth history going too
        backend = get_settings().task_backend
        depth = GaugeMetricFamily("kbchat_queue_messages", "Messages per queue and state (waiting, reserved: "
                                  "taken by a worker and not acknowledged, delayed, dead)",
                                  labels=["backend", "queue", "state"])
        for item in monitoring.queue_depths(backend):
            for state in ("waiting", "reserved", "delayed", "dead"):
                depth.add_metric([backend, item.queue, state], getattr(item, state))
        yield depth

        workers = GaugeMetricFamily("kbchat_workers", "Workers seen in the last day by status (online: heartbeat "
                                    "alive; offline: expired; stopped: shut down)", labels=["status"])
        by_status = {"online": 0, "offline": 0, "stopped": 0}
        for worker in monitoring.workers():
            by_status[worker["status"]] += 1
        for status, n in by_status.items():
            workers.add_metric([status], n)
        yield workers

        empty = CounterMetricFamily("kbchat_empty_retrievals", "Questions that found no relevant passage")
        empty.add_metric([], float(get_redis().hget(retrievals.EMPTY_RETRIEVALS_COUNT_KEY, "total") or 0))
        yield empty

        pages = GaugeMetricFamily("kbchat_ingest_pages_per_second",
                                  f"Pages ingested per second over the last {PAGES_WINDOW_SECONDS} s")
        pages.add_metric([], self._pages_per_second())
        yield pages

        info = get_redis().info("memory")
        memory = GaugeMetricFamily("kbchat_redis_memory_bytes", "Redis memory: used, and maxmemory (0 = no limit)",
                                   labels=["kind"])
        memory.add_metric(["used"], float(info.get("used_memory", 0)))
        memory.add_metric(["max"], float(info.get("maxmemory", 0)))
        yield memory

        taken, counts = self._result_keys
        if time.monotonic() - taken > RESULT_KEYS_EVERY_SECONDS or not counts:
            counts = system_status.redis_figures()["result_keys"]
            self._result_keys = (time.monotonic(), counts)
        keys = GaugeMetricFamily("kbchat_redis_result_keys", "Task-result keys in Redis by kind", labels=["kind"])
        for kind, n in counts.items():
            keys.add_metric([kind], n)
        yield keys

    def _quality(self) -> Iterator[Metric]:
        """The latest retrieval evaluation per knowledge base and alerts raised, from PostgreSQL (cached a minute;
        a database that does not answer leaves these out of the scrape rather than failing it)."""
        taken, figures = self._quality_cache
        if figures is None or time.monotonic() - taken > QUALITY_EVERY_SECONDS:
            try:
                figures = _quality_figures()
            except Exception as exc:
                log.warning("metrics: quality figures unavailable: %s", exc)
                return
            self._quality_cache = (time.monotonic(), figures)
        evaluation = GaugeMetricFamily("kbchat_retrieval_eval", "Latest retrieval evaluation per knowledge base: "
                                       "hit@1, hit@5, hit@10 and MRR over sampled chunks", labels=["kb", "metric"])
        age = GaugeMetricFamily("kbchat_retrieval_eval_age_seconds", "Seconds since the latest evaluation started",
                                labels=["kb"])
        for kb, run in figures["evaluations"].items():
            for metric in ("hit_at_1", "hit_at_5", "hit_at_10", "mrr"):
                evaluation.add_metric([kb, metric], run[metric])
            age.add_metric([kb], run["age_seconds"])
        yield evaluation
        yield age
        alerts = GaugeMetricFamily("kbchat_alerts_last_day", "Alerts raised in the last 24 h by kind and delivery",
                                   labels=["kind", "delivery"])
        for (kind, delivery), n in figures["alerts"].items():
            alerts.add_metric([kind, delivery], n)
        yield alerts


def _quality_figures() -> dict:
    with session_scope() as session:
        return {"evaluations": eval_repo.latest_scores_by_kb_name(session=session),
                "alerts": alert_repo.counts_last_day(session=session)}


def build_registry(*, from_start: bool = False) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(KbchatCollector(from_start=from_start))
    return registry


def serve(host: str, port: int) -> None:
    """Serve ``/metrics`` until SIGTERM or SIGINT."""
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    server, _ = start_http_server(port, addr=host, registry=build_registry())
    print(f"kbchat: metrics on http://{host}:{port}/metrics", flush=True)
    stop.wait()
    server.shutdown()
