"""One engine per process, created lazily and thrown away after fork; ``session_scope()`` is the unit of work."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Engine, create_engine, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from infra.discovery import ServiceUnavailable, service_urls
from infra.urls import redact

_engine: Engine | None = None
_sessionmaker: sessionmaker[Session] | None = None
_application_name = "kbchat"


def set_application_name(name: str) -> None:
    """Tag this process's connections (``kbchat.web``, ``kbchat.worker``) so they show in pg_stat_activity."""
    global _application_name
    _application_name = name
    dispose_engine()


def get_engine() -> Engine:
    """The process's engine, created on first use."""
    global _engine, _sessionmaker
    if _engine is None:
        url = service_urls().database_url
        _engine = create_engine(
            url,
            pool_pre_ping=True,
            pool_size=5,
            max_overflow=10,
            connect_args={"application_name": _application_name, "connect_timeout": 5},
        )
        _sessionmaker = sessionmaker(_engine, expire_on_commit=False)
    return _engine


def dispose_engine() -> None:
    """Forget the engine; the next use opens fresh connections (call after fork and at worker shutdown)."""
    global _engine, _sessionmaker
    if _engine is not None:
        _engine.dispose(close=False)
    _engine = None
    _sessionmaker = None


# A forked child must never reuse its parent's sockets: Celery prefork and Dramatiq both fork.
os.register_at_fork(after_in_child=dispose_engine)


@contextmanager
def session_scope() -> Iterator[Session]:
    """A session that commits on success and rolls back on error."""
    get_engine()
    assert _sessionmaker is not None
    session = _sessionmaker()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def relaxed_commit(session: Session) -> None:
    """This transaction's commit returns without waiting for its write-ahead log to reach the disk (PostgreSQL's
    ``synchronous_commit = off`` for this transaction alone). A crash of the database server may lose the last
    fraction of a second of such transactions, never tear one. Only for rows that record what happened (audit
    entries, last-used times) in transactions that change nothing else: a flush costs several milliseconds on a busy
    disk, more than the search it would follow."""
    session.execute(text("SET LOCAL synchronous_commit TO OFF"))


def check_database(url: str) -> None:
    """Raise ServiceUnavailable with a plain message if the database does not answer or lacks pgvector."""
    engine = create_engine(url, connect_args={"connect_timeout": 3}, poolclass=None)
    try:
        with engine.connect() as conn:
            available = conn.execute(
                text("select 1 from pg_available_extensions where name = 'vector'")
            ).scalar()
    except OperationalError as exc:
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig else str(exc)
        raise ServiceUnavailable(
            f"PostgreSQL at {redact(url)} does not answer ({reason}). Start it, fix KBCHAT_DATABASE_URL, "
            "or unset it to use the embedded server."
        ) from None
    finally:
        engine.dispose()
    if not available:
        raise ServiceUnavailable(
            f"PostgreSQL at {redact(url)} has no pgvector extension ('vector'). Install pgvector on that server "
            "(or use a pgvector image), or unset KBCHAT_DATABASE_URL to use the embedded server, which has it."
        )
