"""Queue-depth history: one sample per interval from whichever worker gets there first, a day of them kept."""

from __future__ import annotations

import time
from typing import Any

from infra.redis_client import get_redis
from telemetry import events

HISTORY_KEY = "kbchat:queues:history"
HISTORY_LOCK_KEY = "kbchat:queues:history:lock"
SAMPLE_SECONDS = 30
HISTORY_MAX = 24 * 3600 // SAMPLE_SECONDS


def claim_sample() -> bool:
    """True for the one process that takes this interval's sample."""
    return bool(get_redis().set(HISTORY_LOCK_KEY, 1, nx=True, ex=SAMPLE_SECONDS))


def append(sample: dict[str, Any]) -> None:
    """Add one sample (ts, backend and ``<queue>.<state>`` counts) to the capped stream."""
    get_redis().xadd(HISTORY_KEY, sample, maxlen=HISTORY_MAX, approximate=True)


def queue_history(seconds: float) -> list[dict[str, Any]]:
    """Samples of the last ``seconds``, oldest first: ts, backend and ``<queue>.<state>`` counts."""
    start = int((time.time() - seconds) * 1000)
    rows = []
    for _, sample in get_redis().xrange(HISTORY_KEY, min=str(start), max="+"):
        rows.append({k: (v if k == "backend" else float(v) if k == "ts" else int(v)) for k, v in sample.items()})
    return rows


def trim(before: float) -> int:
    """Drop the samples taken before ``before`` (epoch seconds); returns how many."""
    return events.trim_stream(HISTORY_KEY, before)
