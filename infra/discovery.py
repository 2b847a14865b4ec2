"""Where the services are: the configured URLs, or the ones a running ``kbchat run`` wrote to its state file."""

from __future__ import annotations

import json
from dataclasses import dataclass

from infra.settings import Settings, get_settings


class ServiceUnavailable(RuntimeError):
    """A configured service does not answer; the message says which URL and what to do."""


@dataclass(frozen=True)
class ServiceUrls:
    database_url: str
    redis_url: str


def read_state(settings: Settings | None = None) -> dict | None:
    """The state file that ``kbchat run`` writes while its embedded services are up, if any."""
    settings = settings or get_settings()
    try:
        return json.loads(settings.state_file.read_text())
    except (FileNotFoundError, ValueError):
        return None


def service_urls(settings: Settings | None = None) -> ServiceUrls:
    """The database and Redis URLs every process uses: settings first, then the running embedded services."""
    settings = settings or get_settings()
    state = read_state(settings) or {}
    database_url = settings.database_url or state.get("database_url")
    redis_url = settings.redis_url or state.get("redis_url")
    if not database_url or not redis_url:
        missing = " and ".join(
            name for name, url in (("KBCHAT_DATABASE_URL", database_url), ("KBCHAT_REDIS_URL", redis_url)) if not url
        )
        raise ServiceUnavailable(
            f"No services: {missing} not set and no running 'kbchat run' found in {settings.data_dir}/. "
            "Start 'make run' in another shell, or set the URL(s)."
        )
    return ServiceUrls(database_url=database_url, redis_url=redis_url)
