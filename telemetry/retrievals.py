"""Questions no passage was relevant enough for: a capped stream and counts, read by monitoring and alerting."""

from __future__ import annotations

import time
from typing import Any

from infra.redis_client import get_redis
from infra.settings import get_settings
from telemetry import events

EMPTY_RETRIEVALS_KEY = "kbchat:retrieval:empty"  # capped stream: kb_id, question, top_score, ts
EMPTY_RETRIEVALS_COUNT_KEY = "kbchat:retrieval:empty_count"  # hash: kb_id → count, plus "total"


def record_empty_retrieval(kb_id: int, question: str, top_score: float | None) -> None:
    """A question no passage was relevant enough for (the monitoring and alerting pages read these)."""
    settings = get_settings()
    pipe = get_redis().pipeline()
    pipe.xadd(
        EMPTY_RETRIEVALS_KEY,
        {"kb_id": kb_id, "question": question[:300], "top_score": "" if top_score is None else round(top_score, 4),
         "ts": round(time.time(), 3)},
        maxlen=settings.events_max_len,
        approximate=True,
    )
    pipe.hincrby(EMPTY_RETRIEVALS_COUNT_KEY, str(kb_id), 1)
    pipe.hincrby(EMPTY_RETRIEVALS_COUNT_KEY, "total", 1)
    pipe.execute()


def recent_empty_retrievals(count: int = 100) -> list[dict[str, str]]:
    return [fields for _, fields in get_redis().xrevrange(EMPTY_RETRIEVALS_KEY, count=count)]


def empty_retrievals(seconds: float) -> dict[str, Any]:
    """Questions that found no relevant passage in the last ``seconds``, against the answers attempted."""
    r = get_redis()
    start = int((time.time() - seconds) * 1000)
    empty = len(r.xrange(EMPTY_RETRIEVALS_KEY, min=str(start), max="+", count=100_000))
    answers = events.task_counts(seconds).get("chat.answer", {}).get(events.STARTED, 0)
    return {
        "empty": empty,
        "answers": answers,
        "rate": empty / answers if answers else None,
        "total": int(r.hget(EMPTY_RETRIEVALS_COUNT_KEY, "total") or 0),
    }


def trim(before: float) -> int:
    """Drop the records older than ``before`` (epoch seconds); returns how many."""
    return events.trim_stream(EMPTY_RETRIEVALS_KEY, before)
