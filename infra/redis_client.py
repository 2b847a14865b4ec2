"""One Redis client per process, created lazily and forgotten after fork."""

from __future__ import annotations

import os

import redis

from infra.discovery import service_urls

RedisError = redis.RedisError  # what a call raises when Redis does not answer
_client: redis.Redis | None = None


def get_redis() -> redis.Redis:
    """The process's Redis client (text responses)."""
    global _client
    if _client is None:
        _client = redis.Redis.from_url(
            service_urls().redis_url, decode_responses=True, socket_connect_timeout=5, health_check_interval=30
        )
    return _client


def reset() -> None:
    global _client
    _client = None


os.register_at_fork(after_in_child=reset)
