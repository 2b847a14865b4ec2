"""Run the Alembic migrations programmatically (``kbchat migrate``, ``kbchat run``, the tests)."""

from __future__ import annotations

from pathlib import Path

from alembic.config import Config

from alembic import command

ROOT = Path(__file__).resolve().parent.parent


def upgrade(database_url: str | None = None) -> None:
    """Bring the database to the newest revision."""
    config = Config(str(ROOT / "alembic.ini"))
    config.set_main_option("script_location", str(ROOT / "alembic"))
    config.attributes["configure_logging"] = False
    if database_url:
        config.attributes["database_url"] = database_url
    command.upgrade(config, "head")
