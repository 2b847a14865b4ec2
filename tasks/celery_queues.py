"""What waits in Celery's queues, read from kombu's Redis transport keys (exact, and no worker needs to answer).

Per queue a list plus one per priority step (``ingest``, ``ingest\\x06\\x163``, ``…6``, ``…9``), and the ``unacked``
hash of messages a worker holds but has not acknowledged (running, prefetched, or waiting out a retry countdown).
"""

from __future__ import annotations

import base64
import json
from collections import defaultdict

from kombu.transport.redis import PRIORITY_STEPS, Channel

from infra.redis_client import get_redis
from tasks.queues import QueueDepth


def depths(queues: list[str]) -> list[QueueDepth]:
    pipe = get_redis().pipeline()
    for queue in queues:
        for step in PRIORITY_STEPS:
            pipe.llen(f"{queue}{Channel.sep}{step}" if step else queue)
    pipe.hvals(Channel.unacked_key)  # bounded by workers × prefetch
    *lengths, unacked = pipe.execute()
    reserved: dict[str, int] = defaultdict(int)
    for raw in unacked:
        try:
            reserved[json.loads(raw)[2]] += 1  # [message, exchange, routing key]; routing key = queue here
        except (ValueError, IndexError, TypeError):
            continue
    depths = []
    for i, queue in enumerate(queues):
        counts = lengths[i * len(PRIORITY_STEPS) : (i + 1) * len(PRIORITY_STEPS)]
        depths.append(
            QueueDepth("celery", queue, waiting=sum(counts), reserved=reserved.get(queue, 0),
                       by_priority=dict(zip(PRIORITY_STEPS, counts, strict=True)))
        )
    return depths


def waiting(queue: str) -> list[tuple[str, str, list]]:
    pipe = get_redis().pipeline()
    for step in PRIORITY_STEPS:
        pipe.lrange(f"{queue}{Channel.sep}{step}" if step else queue, 0, -1)
    out = []
    for raw in (item for items in pipe.execute() for item in items):
        try:
            message = json.loads(raw)
            headers = message["headers"]
            body = message["body"]
            if message.get("properties", {}).get("body_encoding") == "base64":
                body = base64.b64decode(body)
            args = json.loads(body)[0]  # protocol 2: [args, kwargs, embed]
            out.append((headers["id"], headers["task"], list(args)))
        except (ValueError, KeyError, IndexError, TypeError):
            continue
    return out
