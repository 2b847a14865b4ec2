"""The task backend a process sends with: one object, made by a factory from the settings."""

from __future__ import annotations

from functools import lru_cache

from infra.discovery import service_urls
from infra.settings import get_settings
from tasks.celery_app import CeleryBackend, create_app
from tasks.dramatiq_app import DramatiqBackend, create_broker


def make_backend(kind: str | None = None, redis_url: str | None = None) -> CeleryBackend | DramatiqBackend:
    """A new backend of ``kind`` (default: the configured one) on ``redis_url`` (default: the discovered one)."""
    kind = kind or get_settings().task_backend
    redis_url = redis_url or service_urls().redis_url
    if kind == "dramatiq":
        return DramatiqBackend(create_broker(redis_url))
    return CeleryBackend(create_app(redis_url))


@lru_cache(maxsize=1)
def get_backend() -> CeleryBackend | DramatiqBackend:
    """This process's backend, made on first use (a test that changes the settings clears this cache)."""
    return make_backend()
