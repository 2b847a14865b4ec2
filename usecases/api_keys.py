"""API keys: made for a user (optionally limited to some bases, optionally expiring), shown once, kept as a
SHA-256; a key acts as its user within its bases. Admins (and the operator) manage every key.

Each API process remembers a key it has checked for a minute, so a call costs one Redis round trip (its rate
counter and the identity revision together) rather than a database transaction. A revoke, a disabled account or a
changed role bumps the revision (``accounts.identity_changed``), and the next call of every process looks again:
revocation takes effect at once everywhere.
"""

from __future__ import annotations

import secrets as random
import threading
import time
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

from db.repositories import identity as identity_repo
from infra import secrets
from infra.database import relaxed_commit, session_scope
from infra.redis_client import get_redis
from infra.settings import get_settings
from rag.access import Actor, NotFound
from usecases.access import require_admin, require_kb
from usecases.accounts import IDENTITY_REVISION, actor_of, identity_changed
from usecases.audit import record

KEY_PREFIX = "kbk_"  # every key starts with it: easy to recognise (and to find when one leaks into a file)
RATE_KEY = "kbchat:apirate:{}:{}"
REMEMBER_SECONDS = 60.0  # how long a process trusts a key it checked (if the identity revision holds)


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
    identity_changed()


@dataclass(frozen=True)
class _Checked:
    digest: str
    actor: Actor
    expires_at: datetime | None
    revision: str | None  # the identity revision read before the check
    checked_at: float  # time.monotonic()


_checked: dict[str, _Checked] = {}
_checked_lock = threading.Lock()


def admit(key: str | None, *, client_addr: str = "") -> Actor:
    """The actor a key stands for, with the call counted against the key's rate limit: KeyRefused (401) or
    RateLimited (429) otherwise. A key this process checked in the last minute costs one Redis round trip; a
    changed identity revision, an expired memory or an unknown key go to the database."""
    prefix = _shape(key)
    digest = secrets.token_digest(key)
    known = _checked.get(prefix)
    if (known is not None and secrets.same(known.digest, digest)
            and time.monotonic() - known.checked_at < REMEMBER_SECONDS
            and (known.expires_at is None or known.expires_at > datetime.now(UTC))):
        pipe = get_redis().pipeline()
        pipe.get(IDENTITY_REVISION)
        _count(pipe, prefix)
        revision, count, _ = pipe.execute()
        if revision == known.revision:
            _enforce(count)
            return replace(known.actor, client_addr=client_addr)
        actor = _check_and_remember(key, prefix, digest, revision, client_addr)  # counted already
        _enforce(count)
        return actor
    actor = _check_and_remember(key, prefix, digest, get_redis().get(IDENTITY_REVISION), client_addr)
    check_rate(prefix)  # an unknown key is refused before it is counted: nobody spends another's limit
    return actor


def _check_and_remember(key: str, prefix: str, digest: str, revision: str | None, client_addr: str) -> Actor:
    with _checked_lock:
        _checked.pop(prefix, None)
    actor, expires_at = _look_up(key, client_addr)
    with _checked_lock:
        if len(_checked) > 10_000:  # a process serves a bounded number of keys; forget them all now and then
            _checked.clear()
        _checked[prefix] = _Checked(digest, replace(actor, client_addr=""), expires_at, revision, time.monotonic())
    return actor


def _shape(key: str | None) -> str:
    if not key or not key.startswith(KEY_PREFIX) or len(key) < len(KEY_PREFIX) + 12:
        raise KeyRefused("Send an API key as `Authorization: Bearer kbk_…` (`kbchat apikey create` makes one).")
    return key_prefix(key)


def actor_for_key(key: str | None, *, client_addr: str = "") -> Actor:
    """The actor a key stands for (its user, limited to its bases), from the database; KeyRefused otherwise."""
    return _look_up(key, client_addr)[0]


def _look_up(key: str | None, client_addr: str) -> tuple[Actor, datetime | None]:
    prefix = _shape(key)
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
        if row.last_used_at is None or now - row.last_used_at > timedelta(seconds=30):
            relaxed_commit(session)  # a last-used time, nothing else
            identity_repo.touch_api_key(session=session, key_id=row.id, at=now)
        scope = frozenset(row.kb_ids) if row.kb_ids is not None else None
        return Actor(user_id=user.id, username=user.username, role=user.role, client_addr=client_addr,
                     scope=scope), row.expires_at


def check_rate(prefix: str) -> None:
    """At most ``api_rate_limit_per_minute`` calls per key in each minute (a Redis counter); RateLimited else."""
    pipe = get_redis().pipeline()
    _count(pipe, prefix)
    count, _ = pipe.execute()
    _enforce(count)


def _count(pipe, prefix: str) -> None:
    key = RATE_KEY.format(prefix, int(time.time() // 60))
    pipe.incr(key)
    pipe.expire(key, 120)


def _enforce(count) -> None:
    if int(count) > get_settings().api_rate_limit_per_minute:
        now = time.time()
        raise RateLimited(max(1, int((int(now // 60) + 1) * 60 - now) + 1))


def key_prefix(key: str) -> str:
    return key[: len(KEY_PREFIX) + 8]
