"""Unit-test fixtures: settings from a controlled environment, never from the developer's shell or ``.env``."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest


@pytest.fixture
def settings_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[Callable[..., None]]:
    """Set ``KBCHAT_*`` variables for this test and make ``get_settings()`` read them; restored afterwards.

    Usage: ``settings_env(task_backend="dramatiq", min_relevance=0.3)``.
    """
    from infra.settings import get_settings

    monkeypatch.chdir(tmp_path)  # Settings reads ./.env: make sure there is none

    def apply(**values: object) -> None:
        for name, value in values.items():
            monkeypatch.setenv(f"KBCHAT_{name.upper()}", str(value))
        get_settings.cache_clear()

    get_settings.cache_clear()
    yield apply
    monkeypatch.undo()
    get_settings.cache_clear()
