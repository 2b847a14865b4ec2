"""What waits in Dramatiq's queues, read from its Redis broker's keys (exact, and no worker needs to answer).

``<ns>:<queue>`` lists the waiting message ids and ``<ns>:<queue>.msgs`` holds every unacknowledged message (waiting
or taken by a worker); ``<queue>.DQ.msgs`` holds retries waiting out their backoff and the ``<queue>.XQ`` sorted set
the dead-lettered ones.
"""

from __future__ import annotations

import json

from infra.redis_client import get_redis
from tasks.queues import DRAMATIQ_NAMESPACE, QueueDepth


def depths(queues: list[str]) -> list[QueueDepth]:
    pipe = get_redis().pipeline()
    for queue in queues:
        base = f"{DRAMATIQ_NAMESPACE}:{queue}"
        pipe.llen(base)
        pipe.hlen(f"{base}.msgs")
        pipe.hlen(f"{base}.DQ.msgs")
        pipe.zcard(f"{base}.XQ")
    values = pipe.execute()
    depths = []
    for i, queue in enumerate(queues):
        waiting, unacked, delayed, dead = values[i * 4 : i * 4 + 4]
        depths.append(QueueDepth("dramatiq", queue, waiting=waiting, reserved=max(0, unacked - waiting),
                                 delayed=delayed, dead=dead))
    return depths


def waiting(queue: str) -> list[tuple[str, str, list]]:
    redis = get_redis()
    base = f"{DRAMATIQ_NAMESPACE}:{queue}"
    ids = redis.lrange(base, 0, -1)
    raws = (redis.hmget(f"{base}.msgs", ids) if ids else []) + redis.hvals(f"{base}.DQ.msgs")
    out = []
    for raw in raws:
        try:
            message = json.loads(raw)
            out.append((message["message_id"], message["actor_name"], list(message["args"])))
        except (ValueError, KeyError, TypeError):
            continue
    return out
