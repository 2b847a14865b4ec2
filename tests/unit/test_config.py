"""Settings from the environment, and finding the services (infra.settings, infra.discovery)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from infra.discovery import ServiceUnavailable, service_urls
from infra.settings import Settings
from infra.urls import redact


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """A clean KBCHAT_* environment and a working directory without a .env file."""
    import os

    for key in list(os.environ):
        if key.startswith("KBCHAT_"):
            monkeypatch.delenv(key)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


@pytest.mark.parametrize(
    "given,expected",
    [
        ("postgres://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql://u:p@h:5432/db", "postgresql+psycopg://u:p@h:5432/db"),
        ("postgresql+psycopg2://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
        ("postgresql+psycopg://u:p@h/db", "postgresql+psycopg://u:p@h/db"),
    ],
)
def test_database_url_uses_the_psycopg3_driver(env, given: str, expected: str):
    env.setenv("KBCHAT_DATABASE_URL", given)
    assert Settings().database_url == expected


@pytest.mark.parametrize("field", ["database_url", "redis_url", "tgi_api_key", "redelivery_timeout_seconds"])
def test_empty_values_mean_unset(env, field: str):
    env.setenv(f"KBCHAT_{field.upper()}", "")
    assert getattr(Settings(), field) is None


def test_empty_values_fall_back_to_defaults(env):
    env.setenv("KBCHAT_CHUNK_TOKENS", "")
    env.setenv("KBCHAT_TEXT_SEARCH_CONFIG", "")
    settings = Settings()
    assert settings.chunk_tokens == Settings.model_fields["chunk_tokens"].default
    assert settings.text_search_config == "english"


def test_values_are_read_with_the_prefix_and_typed(env):
    env.setenv("KBCHAT_CHUNK_TOKENS", "320")
    env.setenv("KBCHAT_MIN_RELEVANCE", "0.35")
    env.setenv("KBCHAT_TGI_API_KEY", "tok-123")
    env.setenv("CHUNK_TOKENS", "999")  # no prefix: not ours
    settings = Settings()
    assert settings.chunk_tokens == 320 and settings.min_relevance == 0.35
    assert settings.tgi_api_key is not None and settings.tgi_api_key.get_secret_value() == "tok-123"
    assert "tok-123" not in repr(settings)


def test_dotenv_file_is_read(env, tmp_path: Path):
    (tmp_path / ".env").write_text("KBCHAT_TOP_K=9\nKBCHAT_REDIS_URL=\n")
    settings = Settings()
    assert settings.top_k == 9 and settings.redis_url is None


@pytest.mark.parametrize(
    "key,value",
    [("KBCHAT_TASK_BACKEND", "rq"), ("KBCHAT_ENVIRONMENT", "staging"), ("KBCHAT_CHUNK_TOKENS", "many")],
)
def test_invalid_values_are_rejected(env, key: str, value: str):
    env.setenv(key, value)
    with pytest.raises(ValidationError):
        Settings()


def test_both_backends_are_accepted(env):
    for backend in ("celery", "dramatiq"):
        env.setenv("KBCHAT_TASK_BACKEND", backend)
        assert Settings().task_backend == backend


# --- infra.discovery ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,visible",
    [
        ("postgresql+psycopg://kbchat:s3cr3t@db:5432/kbchat", ["kbchat", "db:5432"]),
        ("postgres://kbchat:s3cr3t@db/kbchat", ["kbchat", "db"]),
        ("redis://:s3cr3t@redis:6379/0", ["redis:6379/0"]),
        ("redis://default:s3cr3t@redis:6379/0", ["default", "redis:6379/0"]),
        ("rediss://user:s3cr3t@cache.example:6380", ["user", "cache.example:6380"]),
    ],
)
def test_redact_hides_passwords(url: str, visible: list[str]):
    shown = redact(url)
    assert "s3cr3t" not in shown and "***" in shown
    assert all(part in shown for part in visible)


@pytest.mark.parametrize("url", ["redis://redis:6379/0", "postgresql+psycopg://db/kbchat"])
def test_redact_leaves_urls_without_password_alone(url: str):
    assert redact(url) == url


def test_service_urls_names_every_missing_variable(env, tmp_path: Path):
    with pytest.raises(ServiceUnavailable) as caught:
        service_urls(Settings(data_dir=tmp_path))
    message = str(caught.value)
    assert "KBCHAT_DATABASE_URL" in message and "KBCHAT_REDIS_URL" in message
    assert str(tmp_path) in message


def test_service_urls_names_only_what_is_missing(env, tmp_path: Path):
    env.setenv("KBCHAT_DATABASE_URL", "postgresql://u:p@h/db")
    with pytest.raises(ServiceUnavailable) as caught:
        service_urls(Settings(data_dir=tmp_path))
    assert "KBCHAT_REDIS_URL" in str(caught.value)
    assert "KBCHAT_DATABASE_URL" not in str(caught.value)


def test_service_urls_falls_back_to_the_state_file(env, tmp_path: Path):
    state = {
        "database_url": "postgresql+psycopg://kb@127.0.0.1:5544/kb",
        "redis_url": "redis://127.0.0.1:6400/0",
    }
    (tmp_path / "services.json").write_text(json.dumps(state))
    urls = service_urls(Settings(data_dir=tmp_path))
    assert (urls.database_url, urls.redis_url) == (state["database_url"], state["redis_url"])


def test_configured_urls_win_over_the_state_file(env, tmp_path: Path):
    (tmp_path / "services.json").write_text(
        json.dumps({"database_url": "postgresql+psycopg://a/b", "redis_url": "redis://a"})
    )
    env.setenv("KBCHAT_REDIS_URL", "redis://configured:6379/1")
    urls = service_urls(Settings(data_dir=tmp_path))
    assert urls.redis_url == "redis://configured:6379/1"
    assert urls.database_url == "postgresql+psycopg://a/b"


def test_a_corrupt_state_file_counts_as_none(env, tmp_path: Path):
    (tmp_path / "services.json").write_text("{not json")
    with pytest.raises(ServiceUnavailable):
        service_urls(Settings(data_dir=tmp_path))
