"""Word (DOCX) files: paragraphs under their heading styles, then the tables; zip bombs refused."""

from __future__ import annotations

import io
import re
import zipfile

import docx

from rag.parsing.document import ParsedDocument, ParseError, Section, rows_with_header

# A DOCX is a ZIP; refuse archives that would inflate beyond these (zip bombs).
_DOCX_MAX_UNCOMPRESSED = 200 * 1024 * 1024
_DOCX_MAX_RATIO = 200


def is_docx(data: bytes) -> bool:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except zipfile.BadZipFile:
        return False


def parse_docx(data: bytes) -> ParsedDocument:
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            infos = archive.infolist()
            uncompressed = sum(i.file_size for i in infos)
            compressed = max(1, sum(i.compress_size for i in infos))
            if uncompressed > _DOCX_MAX_UNCOMPRESSED or uncompressed / compressed > _DOCX_MAX_RATIO:
                raise ParseError(
                    f"The Word file would expand to {uncompressed / 1048576:.0f} MB "
                    f"({uncompressed / compressed:.0f}x its size); refused as a possible zip bomb."
                )
        document = docx.Document(io.BytesIO(data))
    except ParseError:
        raise
    except Exception as exc:
        raise ParseError(f"The Word file is damaged or not a DOCX ({type(exc).__name__}: {exc}).") from exc

    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 1
    title = (document.core_properties.title or "").strip() or None

    def flush() -> None:
        if any(line.strip() for line in buffer):
            heading = " > ".join(name for _, name in path) or None
            sections.append(Section(text="\n".join(buffer), first_line=start, heading=heading, unit="paragraphs"))

    number = 0
    for number, paragraph in enumerate(document.paragraphs, start=1):
        style = (paragraph.style.name if paragraph.style is not None else "") or ""
        text = paragraph.text.strip()
        level = _heading_level(style)
        if level and text:
            flush()
            title = title or text
            path = [(lvl, n) for lvl, n in path if lvl < level] + [(level, text)]
            buffer, start = [text], number
        elif text:
            buffer.append(text)
    flush()
    for table in document.tables:
        rows = [[cell.text.strip() for cell in row.cells] for row in table.rows]
        if rows:
            sections.append(Section(text="\n".join(rows_with_header(rows)), first_line=number + 1,
                                    heading="table", unit="paragraphs"))
    return ParsedDocument(kind="docx", mime="application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                          sections=sections, pages=1, title=title)


def _heading_level(style: str) -> int:
    if style == "Title":
        return 1
    match = re.match(r"Heading (\d)", style)
    return int(match.group(1)) if match else 0
