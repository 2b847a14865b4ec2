"""Upload names: what is kept of a file name a browser or a shell hands us."""

from __future__ import annotations

import pytest

from rag.library import safe_filename


@pytest.mark.parametrize(
    "raw,expected",
    [
        ("../../etc/passwd", "passwd"),
        ("..\\..\\Windows\\win.ini", "win.ini"),
        ("/abs/path/report.pdf", "report.pdf"),
        ("C:\\Users\\ana\\Desktop\\notes.md", "notes.md"),
        ("..", "unnamed"),
        ("  .hidden  ", "hidden"),
    ],
)
def test_path_parts_are_dropped(raw: str, expected: str):
    assert safe_filename(raw) == expected


def test_control_and_invisible_characters_are_removed():
    assert safe_filename("re\x00po\x1frt\x7f\u200b.pdf") == "report.pdf"
    assert safe_filename("line\nbreak\ttab.txt") == "linebreaktab.txt"


@pytest.mark.parametrize(
    "name",
    [
        "Отчёт о полёте 2024.pdf",
        "飞行事故报告.pdf",
        "تقرير الحادث.pdf",
        "Ελληνικά.docx",
        "報告書（最終版）.md",
    ],
)
def test_non_latin_names_are_kept_intact(name: str):
    assert safe_filename(name) == name


@pytest.mark.parametrize("stem", ["x" * 300, "я" * 200, "报" * 120])
def test_long_names_are_cut_to_255_bytes_keeping_the_extension(stem: str):
    name = safe_filename(stem + ".pdf")
    assert len(name.encode("utf-8")) <= 255
    assert len(name.encode("utf-8")) > 240  # cut, not emptied
    assert name.endswith(".pdf") and stem.startswith(name[:-4])


def test_long_name_without_extension_is_cut_too():
    assert safe_filename("a" * 400) == "a" * 255


@pytest.mark.parametrize("raw", ["", "   ", "/", "\x00\x01", "..."])
def test_nothing_left_means_unnamed(raw: str):
    assert safe_filename(raw) == "unnamed"


def test_names_are_nfc_normalised():
    decomposed = "Cafe\u0301.txt"  # macOS file systems hand out decomposed accents
    assert safe_filename(decomposed) == "Café.txt"
    assert len(safe_filename(decomposed)) == 8
