"""The language model's circuit breaker, shared by every chat worker through Redis.

Once the server has failed ``llm_circuit_failures`` questions in a row (retries used up, or no first token in
time), questions skip it for ``llm_circuit_open_seconds`` and get an extractive answer at once, instead of each
waiting through its retries. When the key expires, the next question tries the server again; a first token
closes the breaker.
"""

from __future__ import annotations

import logging
from typing import Any

from infra.redis_client import get_redis
from infra.settings import get_settings

log = logging.getLogger(__name__)

CIRCUIT_KEY = "kbchat:llm:circuit"  # set while open; value = the reason; expires when the breaker half-opens
FAILURES_KEY = "kbchat:llm:failures"  # consecutive questions the server failed


def circuit_state() -> dict[str, Any]:
    """``{"open": bool, "reason": str, "seconds_left": float, "failures": int}`` (closed when Redis cannot say)."""
    try:
        r = get_redis()
        pipe = r.pipeline()
        pipe.get(CIRCUIT_KEY)
        pipe.pttl(CIRCUIT_KEY)
        pipe.get(FAILURES_KEY)
        reason, ttl_ms, failures = pipe.execute()
    except Exception:
        return {"open": False, "reason": "", "seconds_left": 0.0, "failures": 0}
    return {"open": reason is not None, "reason": reason or "", "seconds_left": max(0, ttl_ms or 0) / 1000,
            "failures": int(failures or 0)}


def server_failed(reason: str) -> None:
    settings = get_settings()
    if settings.llm_circuit_failures <= 0:
        return
    try:
        r = get_redis()
        failures = r.incr(FAILURES_KEY)
        r.expire(FAILURES_KEY, max(600, settings.llm_circuit_open_seconds * 4))
        if failures >= settings.llm_circuit_failures:
            r.set(CIRCUIT_KEY, reason[:300], ex=max(1, settings.llm_circuit_open_seconds))
            r.delete(FAILURES_KEY)
            log.warning("language model circuit open for %d s after %d failed questions: %s",
                        settings.llm_circuit_open_seconds, failures, reason)
    except Exception as exc:  # Redis trouble must not turn into an answer failure
        log.warning("could not record the model failure: %s", exc)


def server_answered() -> None:
    try:
        get_redis().delete(FAILURES_KEY)
    except Exception:
        pass


def open_state() -> dict[str, Any] | None:
    """The breaker's state while it is open (questions skip the server), None while closed or switched off."""
    if get_settings().llm_circuit_failures <= 0:
        return None
    state = circuit_state()
    return state if state["open"] else None
