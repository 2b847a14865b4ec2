"""What parsing makes of a file: sections of text with their locators, or a ParseError a person can act on."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field


class ParseError(ValueError):
    """A permanent problem with the file itself; the message is shown to the person who uploaded it."""


@dataclass(frozen=True)
class Section:
    """A run of text that shares one locator: a PDF page, or a block of a text file under one heading."""

    text: str
    page: int | None = None
    first_line: int | None = None
    heading: str | None = None
    unit: str = "lines"  # what first_line counts: lines (text), paragraphs (DOCX), rows (CSV)


@dataclass
class ParsedDocument:
    kind: str  # pdf | text | markdown | html | docx | csv
    mime: str
    sections: list[Section] = field(default_factory=list)
    pages: int = 0
    title: str | None = None
    notes: list[str] = field(default_factory=list)  # what the uploader should know (pages OCR could not read)


ProgressFn = Callable[[int, int], None]


def rows_with_header(rows: list[list[str]]) -> list[str]:
    """Each row as 'column: value; …' so a chunk of rows still says what every value means."""
    header, body = rows[0], rows[1:] or [rows[0]]
    if not rows[1:]:
        return ["; ".join(c for c in header if c)]
    out = []
    for row in body:
        pairs = [f"{h or f'column {i + 1}'}: {v}" for i, (h, v) in enumerate(zip(header, row, strict=False)) if v.strip()]
        out.append("; ".join(pairs) + ".")
    return out
