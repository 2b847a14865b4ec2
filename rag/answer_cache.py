"""Answers to repeated standalone questions, in Redis, keyed by the knowledge base's version: any ingest or
delete bumps the version, so older entries are never read again and expire on their own."""

from __future__ import annotations

import hashlib
import json
import logging
import re
import unicodedata

from infra.redis_client import get_redis
from infra.settings import get_settings

log = logging.getLogger(__name__)

KEY = "kbchat:answer:{kb_id}:{version}:{digest}"


def normalise(question: str) -> str:
    """The form two askings of the same question share: case, spacing, width and end punctuation folded."""
    text = unicodedata.normalize("NFKC", question).casefold()
    text = " ".join(text.split())
    return re.sub(r"[\s?!.。？！]+$", "", text)


def key(kb_id: int, version: int, question: str) -> str:
    digest = hashlib.sha256(normalise(question).encode()).hexdigest()[:32]
    return KEY.format(kb_id=kb_id, version=version, digest=digest)


def get(kb_id: int, version: int, question: str) -> dict | None:
    """The cached answer ({answer, citations, mode}), or None; a Redis failure is a miss, never an error."""
    if get_settings().answer_cache_ttl_seconds <= 0:
        return None
    try:
        raw = get_redis().get(key(kb_id, version, question))
        return json.loads(raw) if raw else None
    except Exception as exc:
        log.warning("answer cache read failed: %s", exc)
        return None


def put(kb_id: int, version: int, question: str, answer: dict) -> None:
    """Remember a complete answer for the cache's time-to-live."""
    ttl = get_settings().answer_cache_ttl_seconds
    if ttl <= 0:
        return
    try:
        get_redis().set(key(kb_id, version, question), json.dumps(answer, default=str), ex=ttl)
    except Exception as exc:
        log.warning("answer cache write failed: %s", exc)
