"""URLs in messages and logs: without their password (services), without anything that can hold a secret
(webhooks), and scrubbed out of error text."""

from __future__ import annotations

from urllib.parse import urlsplit

from sqlalchemy.engine import make_url


def redact(url: str) -> str:
    """The URL without its password, for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (e.g. redis://)
        if "@" in url and "://" in url:
            scheme, rest = url.split("://", 1)
            creds, host = rest.rsplit("@", 1)
            user = creds.split(":", 1)[0]
            return f"{scheme}://{user}:***@{host}" if ":" in creds else url
        return url


def shown_url(url: str) -> str:
    """What of a webhook URL may be logged or shown: ``scheme://host[:port]``, nothing that can hold a secret."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    return f"{parts.scheme}://{host}" + (f":{parts.port}" if parts.port else "")


def scrub(message: str, url: str) -> str:
    """``message`` with every piece of ``url`` that could carry a secret replaced (requests quotes URLs in errors):
    user, password, the path and each of its segments, the query and each of its values."""
    parts = urlsplit(url)
    path_query = parts.path + (f"?{parts.query}" if parts.query else "")
    secrets = {url, path_query, path_query.lstrip("/"), parts.path, parts.path.lstrip("/"), parts.query,
               parts.password or "", parts.username or ""}
    secrets |= {segment for segment in parts.path.split("/") if len(segment) >= 4}
    secrets |= {pair.partition("=")[2] for pair in parts.query.split("&") if len(pair.partition("=")[2]) >= 4}
    for secret in sorted((s for s in secrets if s and s != "/"), key=len, reverse=True):
        message = message.replace(secret, "…")
    return message
