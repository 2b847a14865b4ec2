"""CSV and other delimited text: the delimiter guessed, rows in sections that each repeat the header."""

from __future__ import annotations

import csv
import io

from rag.parsing.document import ParsedDocument, Section, rows_with_header

_CSV_DELIMITERS = (",", ";", "\t", "|")


def csv_delimiter(text: str) -> str | None:
    lines = [line for line in text.split("\n")[:30] if line.strip()]
    if len(lines) < 3:
        return None
    for delimiter in _CSV_DELIMITERS:
        counts = {line.count(delimiter) for line in lines[:-1] or lines}
        if len(counts) == 1 and counts.pop() >= 1:
            return delimiter
    return None


def parse_csv(text: str, rows_per_section: int = 50) -> ParsedDocument:
    delimiter = csv_delimiter(text) or ","
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in row)]
    if not rows:
        return ParsedDocument(kind="csv", mime="text/csv", sections=[], pages=1)
    header, body = rows[0], rows[1:]
    sections = []
    for start in range(0, len(body), rows_per_section):
        part = body[start : start + rows_per_section]
        lines = rows_with_header([header, *part])
        sections.append(Section(text="\n".join(lines), first_line=start + 2, unit="rows"))
    return ParsedDocument(kind="csv", mime="text/csv", sections=sections, pages=1)
