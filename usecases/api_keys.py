"""API keys: made for a user (optionally limited to some bases, optionally expiring), shown once, kept as a
SHA-256; a key acts as its user within its bases. Admins (and the operator) manage every key."""

from __future__ import annotations

import secrets as random
import time
from datetime import UTC, datetime, timedelta

from db.repositories import identity as identity_repo
from infra import secrets
from infra.database import session_scope
from infra.redis_client import get_redis
from infra.settings import get_settings
from rag.access import Actor, NotFound
from usecases.access import require_admin, require_kb
from usecases.accounts import actor_of
from usecases.audit import record

KEY_PREFIX = "kbk_"  # every key starts with it: easy to recognise (and to find when one leaks into a file)
RATE_KEY = "kbchat:apirate:{}:{}"


class KeyRefused(Exception):
    """Missing, unknown, revoked or expired key, or its user is disabled: the API answers 401."""


class RateLimited(Exception):
    def __init__(self, retry_after: int) -> None:
        super().__init__(f"Too many requests for this key; try again in {retry_after} s.")
        self.retry_after = retry_after


def _describe(key, username: str, names: dict[int, str]) -> dict:
    return {
        "prefix": key.prefix, "user": username,
        "scope": [names.get(i, str(i)) for i in key.kb_ids] if key.kb_ids is not None else "all granted bases",
        "kb_ids": key.kb_ids, "created_at": key.created_at.isoformat() if key.created_at else None,
        "expires_at": key.expires_at.isoformat() if key.expires_at else None,
        "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
        "revoked": key.revoked_at is not None,
    }


def create_key(actor: Actor, *, username: str, kb_ids: list[int] | None = None,
               expires_days: int | None = None) -> dict:
    """A new key for ``username``; returns {"key" (shown this once), "prefix", ...}. Each base in ``kb_ids`` must be
    one the user may read."""
    require_admin(actor, "Making API keys")
    if expires_days is not None and expires_days < 1:
        raise ValueError("--expires-days takes a whole number of days, 1 or more.")
    with session_scope() as session:
        user = identity_repo.user_by_name(session=session, username=username)
        if user is None:
            raise NotFound(f"No user called {username!r}. `kbchat users list` shows who there is.")
        owner = actor_of(user)
        for kb_id in kb_ids or []:
            require_kb(session, owner, kb_id)  # NotFound: the user cannot read it
        prefix = KEY_PREFIX + random.token_hex(4)
        key = prefix + random.token_urlsafe(32)
        expires_at = datetime.now(UTC) + timedelta(days=expires_days) if expires_days else None
        row = identity_repo.create_api_key(session=session, prefix=prefix, key_hash=secrets.token_digest(key),
                                           user_id=user.id, kb_ids=sorted(set(kb_ids)) if kb_ids else None,
                                           expires_at=expires_at)
        record(session, actor, "apikey.create", target=prefix, user=user.username, kb_ids=row.kb_ids)
        names = identity_repo.kb_names(session=session, kb_ids=row.kb_ids or [])
        return {"key": key, **_describe(row, user.username, names)}


def list_keys(actor: Actor) -> list[dict]:
    require_admin(actor, "The list of API keys")
    with session_scope() as session:
        rows = identity_repo.list_api_keys(session=session)
        names = identity_repo.kb_names(session=session, kb_ids=sorted({i for k, _ in rows for i in (k.kb_ids or [])}))
        return [_describe(key, username, names) for key, username in rows]


def revoke_key(actor: Actor, *, prefix: str) -> None:
    require_admin(actor, "Revoking API keys")
    with session_scope() as session:
        found = identity_repo.api_key_with_user(session=session, prefix=prefix.strip())
        if found is None:
            raise NotFound(f"No API key starts with {prefix!r}. `kbchat apikey list` shows them.")
        if found[0].revoked_at is None:
            found[0].revoked_at = datetime.now(UTC)
            record(session, actor, "apikey.revoke", target=found[0].prefix, user=found[1].username)


def actor_for_key(key: str | None, *, client_addr: str = "") -> Actor:
    """The actor a key stands for (its user, limited to its bases); KeyRefused otherwise."""
    if not key or not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + 12:
        raise KeyRefused("Send an API key as `Authorization: Bearer kbk_…` (`kbchat apikey create` makes one).")
    prefix = key[: len(KEY_PREFIX) + 8]
    now = datetime.now(UTC)
    with session_scope() as session:
        found = identity_repo.api_key_with_user(session=session, prefix=prefix)
        if found is None or not secrets.same(found[0].key_hash, secrets.token_digest(key)):
            raise KeyRefused("This API key is not known.")
        row, user = found
        if row.revoked_at is not None:
            raise KeyRefused("This API key was revoked.")
        if row.expires_at is not None and row.expires_at <= now:
            raise KeyRefused("This API key has expired; ask an admin for a new one.")
        if user.disabled:
            raise KeyRefused("The account of this API key is disabled.")
        if row.last_used_at is None or now - row.last_used_at > timedelta(seconds=60):
            identity_repo.touch_api_key(session=session, key_id=row.id, at=now)
        scope = frozenset(row.kb_ids) if row.kb_ids is not None else None
        return Actor(user_id=user.id, username=user.username, role=user.role, client_addr=client_addr,
                     scope=scope)


def check_rate(prefix: str) -> None:
    """At most ``api_rate_limit_per_minute`` calls per key in each minute (a Redis counter); RateLimited else."""
    limit = get_settings().api_rate_limit_per_minute
    now = time.time()
    window = int(now // 60)
    key = RATE_KEY.format(prefix, window)
    pipe = get_redis().pipeline()
    pipe.incr(key)
    pipe.expire(key, 120)
    count, _ = pipe.execute()
    if int(count) > limit:
        raise RateLimited(max(1, int((window + 1) * 60 - now) + 1))


def key_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 8]
