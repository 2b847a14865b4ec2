"""The embedded PostgreSQL is given shared buffers sized for retrieval, once, and keeps them across starts."""

from __future__ import annotations

from sqlalchemy import create_engine, text


def _shared_buffers(url: str) -> str:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return connection.execute(text("SHOW shared_buffers")).scalar_one()
    finally:
        engine.dispose()


def test_embedded_postgres_gets_its_shared_buffers_and_keeps_them(tmp_path, services):
    from infra.settings import Settings
    from kbchat.services import Services

    def start(megabytes: int) -> tuple[Services, str]:
        running = Services(Settings(data_dir=tmp_path, database_url=None, redis_url=services["redis_url"],
                                    embedded_postgres_memory_mb=megabytes), write_state=False)
        return running, running.start().database_url

    first, url = start(160)
    try:
        assert _shared_buffers(url) == "160MB"
        with create_engine(url).begin() as connection:
            connection.execute(text("CREATE TABLE kept (id int)"))
    finally:
        first.stop()
    again, url = start(192)  # a new size is applied on the next start, and the data folder's tables stay
    try:
        assert _shared_buffers(url) == "192MB"
        with create_engine(url).connect() as connection:
            assert connection.execute(text("SELECT count(*) FROM kept")).scalar_one() == 0
    finally:
        again.stop()


def test_the_default_is_a_quarter_of_memory_within_bounds():
    from kbchat.services import shared_buffers_mb

    assert shared_buffers_mb(300) == 300
    assert 128 <= shared_buffers_mb(0) <= 2048
