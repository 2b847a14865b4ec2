""".env.example documents every setting, with its real default, so the two cannot drift apart."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from infra.settings import Settings

ENV_EXAMPLE = Path(__file__).resolve().parents[2] / ".env.example"
LINE = re.compile(r"^#?\s*KBCHAT_([A-Z0-9_]+)=(.*)$")


def documented() -> dict[str, str]:
    entries: dict[str, str] = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        match = LINE.match(line.strip())
        if match:
            assert match.group(1) not in entries, f"KBCHAT_{match.group(1)} is listed twice"
            entries[match.group(1)] = match.group(2).strip()
    return entries


def test_every_setting_is_documented():
    missing = [f"KBCHAT_{name.upper()}" for name in Settings.model_fields if name.upper() not in documented()]
    assert not missing, f"add to .env.example: {missing}"


def test_nothing_documented_is_unknown():
    fields = {name.upper() for name in Settings.model_fields}
    unknown = [f"KBCHAT_{name}" for name in documented() if name not in fields]
    assert not unknown, f"not a setting (renamed or removed?): {unknown}"


def test_every_setting_has_an_explanation_above_it():
    lines = ENV_EXAMPLE.read_text(encoding="utf-8").splitlines()
    for index, line in enumerate(lines):
        if LINE.match(line.strip()):
            above = lines[index - 1].strip()
            assert above.startswith("#") and len(above) > 2, f"no explanation above {line!r}"


@pytest.mark.parametrize("name", sorted(Settings.model_fields))
def test_documented_default_is_the_real_default(name: str):
    field = Settings.model_fields[name]
    value = documented()[name.upper()]
    default = field.default
    if default is None or default == "":
        assert value == "", f"KBCHAT_{name.upper()} has no default: leave it empty"
    elif isinstance(default, Path):
        assert value == default.name, f"KBCHAT_{name.upper()}: document the folder as {default.name}"
    else:
        assert typing.get_origin(field.annotation) is typing.Literal or isinstance(default, int | float | str)
        assert value == str(default), f"KBCHAT_{name.upper()}={value} but the default is {default}"
