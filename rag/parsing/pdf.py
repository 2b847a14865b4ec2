"""File bytes → sections of text with page numbers (PDF) or line locators (text); the type comes from the content."""

from __future__ import annotations

import io
import logging
import re
import threading
import unicodedata
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from typing import TypeVar

from charset_normalizer import from_bytes

from infra.settings import get_settings

log = logging.getLogger(__name__)


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


ProgressFn = Callable[[int, int], None]
T = TypeVar("T")

_PDF_MAGIC = b"%PDF-"
_HTML_HINT = re.compile(rb"<!doctype html|<html[\s>]|<body[\s>]|<head[\s>]", re.IGNORECASE)
_CSV_DELIMITERS = (",", ";", "\t", "|")
# A DOCX is a ZIP; refuse archives that would inflate beyond these (zip bombs).
_DOCX_MAX_UNCOMPRESSED = 200 * 1024 * 1024
_DOCX_MAX_RATIO = 200
# pypdf's defaults reject some legitimate large filings (LimitReachedError). These are raised deliberately:
# 4-10x the defaults, still bounded; the per-task time limit and the upload size limit bound the rest.
PDF_LIMITS = {
    "stream_parsing_work_maximum_count": 20_000_000,
    "stream_decoding_work_maximum_length": 1_200_000_000,
    "array_maximum_element_count": 1_000_000,
    "dictionary_maximum_element_count": 1_000_000,
    "zlib_maximum_output_length": 300_000_000,
    "maximum_declared_stream_length": 300_000_000,
    "xform_maximum_invocations_per_extraction": 20_000,
}
_MARKDOWN_HINTS = re.compile(r"^(#{1,6}\s+\S|[-*+]\s+\S|\d+\.\s+\S|```|>\s)", re.MULTILINE)
_MARKDOWN_HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")


def sniff(data: bytes, filename: str = "") -> str:
    """The document kind from its first bytes; the file name only tells Markdown from plain text."""
    if not data:
        raise ParseError("The file is empty (0 bytes).")
    head = data[:1024].lstrip()
    if head.startswith(_PDF_MAGIC) or data[:1024].find(_PDF_MAGIC) != -1:
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        if _is_docx(data):
            return "docx"
        raise ParseError(
            "Unsupported file type: a ZIP archive that is not a Word document (DOCX). "
            "Upload PDF, Word (DOCX), HTML, Markdown, CSV or plain text."
        )
    if _looks_binary(data[:8192]):
        raise ParseError(
            "Unsupported file type: the content is binary, not a document. "
            "Upload PDF, Word (DOCX), HTML, Markdown, CSV or plain text."
        )
    if _HTML_HINT.search(data[:4096]):
        return "html"
    text = _decode(data[:65536])
    lower = filename.lower()
    if lower.endswith((".md", ".markdown")) or len(_MARKDOWN_HINTS.findall(text)) >= 3:
        return "markdown"
    if lower.endswith((".csv", ".tsv")) or _csv_delimiter(text) is not None:
        return "csv"
    return "text"


def parse(data: bytes, filename: str = "", progress: ProgressFn | None = None) -> ParsedDocument:
    """Parse ``data`` into sections; raises ParseError with a message a person can act on."""
    kind = sniff(data, filename)
    if kind == "pdf":
        document = _parse_pdf(data, progress)
    elif kind == "docx":
        document = _parse_docx(data)
    elif kind == "html":
        document = _parse_html(_decode(data))
    elif kind == "csv":
        document = _parse_csv(_decode(data))
    else:
        document = _parse_text(_decode(data), markdown=kind == "markdown")
    if not any(section.text.strip() for section in document.sections):
        if kind == "pdf":
            raise ParseError("The PDF has no text layer (scanned images?); OCR is not enabled.")
        raise ParseError("The file contains no readable text.")
    return document


def _looks_binary(sample: bytes) -> bool:
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a BOM is text
        return False
    if not sample:
        return False
    control = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return control / len(sample) > 0.10


def _decode(data: bytes) -> str:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        text = _decode_legacy(data)
    return text.replace("\x00", "")


# What Windows-1252 / Latin-1 text decodes to outside ASCII: Western European letters and typography.
# Icelandic ð/þ are left out: they are what Turkish ş/ğ (cp1254) become when read as cp1252.
_WESTERN = frozenset(
    "ÀÁÂÃÄÅÆÇÈÉÊËÌÍÎÏÑÒÓÔÕÖØÙÚÛÜÝßàáâãäåæçèéêëìíîïñòóôõöøùúûüýÿŒœŠšŽžŸ"
    "“”‘’‚„–—…•€«»°§©®™£¥¢¡¿·×÷\xa0"
)


def _decode_legacy(data: bytes) -> str:
    """Not UTF-8: charset-normalizer's guess, or Windows-1252 where that reads as Western European text and the
    guess does not read better. Alone, charset-normalizer misreads short or lightly accented French, Italian,
    Portuguese or German (café → cafﻠ, déjà → déjŕ, schön → schˆn): the most common legacy files."""
    results = from_bytes(data)
    best = results.best()
    guess = str(best) if best is not None else None
    try:
        western = data.decode("cp1252")
    except UnicodeDecodeError:
        western = None
    sample = 256 * 1024  # enough to judge by; the checks are pure Python
    if western is not None and _looks_western(western[:sample]):
        also_found = any(match.encoding in ("cp1252", "latin_1", "iso8859_15") for match in results)
        if guess is None or also_found or _oddities(guess[:sample]) > _oddities(western[:sample]):
            return western
    return guess if guess is not None else data.decode("utf-8", errors="replace")


def _looks_western(text: str) -> bool:
    """Every non-ASCII character a Western European letter or typographic mark, and accents a minority."""
    letters = [ch for ch in text if ch.isalpha()]
    accented = sum(1 for ch in letters if ord(ch) > 127)
    return all(ord(ch) < 128 or ch in _WESTERN for ch in text) and accented <= 0.4 * max(1, len(letters))


def _oddities(text: str) -> int:
    """Signs of a wrong code page inside words: a symbol between two letters (schˆn), two scripts (cafﻠ)."""
    odd = sum(
        1
        for before, ch, after in zip(text, text[1:], text[2:], strict=False)
        if ord(ch) > 127 and not ch.isalnum() and before.isalpha() and after.isalpha()
    )
    odd += sum(
        1
        for ch, after in zip(text, text[1:], strict=False)
        if ch.isalpha() and after.isalpha() and max(ord(ch), ord(after)) > 127 and _script(ch) != _script(after)
    )
    return odd


def _script(ch: str) -> str:
    return unicodedata.name(ch, "?").split()[0]  # LATIN, CYRILLIC, ARABIC, …


def pdf_page_count(data: bytes) -> int | None:
    """The page count of a PDF within the page limit, or None when ``data`` is not a PDF. pdfium counts (a few ms);
    where it cannot open the file, pypdf does and says what is wrong with it. ``parse`` checks the rest."""
    if sniff(data) != "pdf":
        return None
    with _PdfiumPages(data) as pdfium_pages:
        total = pdfium_pages.count()
    if total is None:
        return _with_pdf_limits(lambda: len(_open_pdf(data).pages))
    _check_page_limit(total)
    return total


def parse_pdf_pages(data: bytes, first: int, last: int) -> ParsedDocument:
    """Only pages ``first``..``last`` (1-based, inclusive) of a PDF, for one part of a split document.

    ``pages`` is still the whole document's count; a part whose pages hold no text is not an error here."""
    return _with_pdf_limits(lambda: _read_pdf(data, None, first=first, last=last))


def _parse_pdf(data: bytes, progress: ProgressFn | None) -> ParsedDocument:
    return _with_pdf_limits(lambda: _read_pdf(data, progress))


def _with_pdf_limits(read: Callable[[], T]) -> T:
    from pypdf import apply_configuration
    from pypdf.errors import LimitReachedError

    try:
        with apply_configuration(**PDF_LIMITS):
            return read()
    except LimitReachedError as exc:
        raise ParseError(
            f"The PDF exceeds the parser's safety limits ({exc}). It may be malformed or hostile; "
            "if it is legitimate, split it or print it to a new PDF and upload that."
        ) from exc


def _open_pdf(data: bytes):
    """A decrypted reader within the page limit, or ParseError saying what is wrong with the file."""
    from pypdf import PdfReader
    from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError, PdfReadError

    try:
        reader = PdfReader(io.BytesIO(data))
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise ParseError("The PDF is password-protected. Remove the password and upload it again.")
            except (FileNotDecryptedError, DependencyError, NotImplementedError) as exc:
                raise ParseError(
                    "The PDF is encrypted and cannot be opened without its password. "
                    "Remove the protection and upload it again."
                ) from exc
        total = len(reader.pages)
    except (ParseError, LimitReachedError):
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, OSError) as exc:
        raise ParseError(f"The PDF is damaged or not a PDF ({type(exc).__name__}: {exc}).") from exc
    _check_page_limit(total)
    return reader


def _check_page_limit(total: int) -> None:
    limit = get_settings().max_pdf_pages
    if total > limit:
        raise ParseError(
            f"The PDF has {total:,} pages; the limit is {limit:,}. Split it into parts, "
            "or ask an administrator to raise KBCHAT_MAX_PDF_PAGES."
        )


def _read_pdf(
    data: bytes, progress: ProgressFn | None, first: int = 1, last: int | None = None
) -> ParsedDocument:
    reader = _open_pdf(data)  # pypdf opens and checks the file, whichever engine reads the pages
    total = len(reader.pages)
    title = None
    try:
        title = (reader.metadata.title or "").strip() or None if reader.metadata else None
    except Exception:  # metadata is optional and often malformed
        title = None

    sections: list[Section] = []
    first_index, last_index = max(first, 1) - 1, min(last or total, total)
    with _PdfiumPages(data) as pdfium_pages:
        for index in range(first_index, last_index):
            text = pdfium_pages.text(index)
            if text is None:
                text = _pypdf_page_text(reader, index)
            sections.append(Section(text=_clean(text), page=index + 1))
            if progress:
                progress(index + 1 - first_index, last_index - first_index)
    return ParsedDocument(kind="pdf", mime="application/pdf", sections=sections, pages=total, title=title)


def _pypdf_page_text(reader, index: int) -> str:
    from pypdf.errors import LimitReachedError

    try:
        return reader.pages[index].extract_text() or ""
    except LimitReachedError:
        raise
    except Exception as exc:  # a broken page is named, not a traceback
        if "TimeLimit" in type(exc).__name__:  # the task's time limit (Celery's soft limit), not the page
            raise
        raise ParseError(f"Page {index + 1} of the PDF cannot be read ({type(exc).__name__}: {exc}).") from exc


# pdfium is not thread-safe, not even across documents: one call at a time per process (Dramatiq runs threads).
_pdfium_lock = threading.Lock()


class _PdfiumPages:
    """Page count and texts through pdfium when ``KBCHAT_PDF_TEXT_ENGINE=pdfium``; ``count()`` and ``text(i)`` are
    None where it cannot read (the file or that page), and the caller asks pypdf instead. Closes what it opened."""

    def __init__(self, data: bytes) -> None:
        self._data = data
        self._document = None

    def __enter__(self) -> _PdfiumPages:
        if get_settings().pdf_text_engine != "pdfium":
            return self
        try:
            import pypdfium2

            with _pdfium_lock:
                self._document = pypdfium2.PdfDocument(self._data)
        except Exception as exc:  # pypdf opened it, so it reads the pages instead
            log.warning("pdfium cannot open this PDF (%s); pypdf reads it", exc)
        return self

    def count(self) -> int | None:
        if self._document is None:
            return None
        with _pdfium_lock:
            return len(self._document)

    def text(self, index: int) -> str | None:
        if self._document is None:
            return None
        try:
            with _pdfium_lock, closing(self._document[index]) as page, closing(page.get_textpage()) as textpage:
                return textpage.get_text_range()
        except Exception as exc:
            log.warning("pdfium cannot read page %d (%s); reading it with pypdf", index + 1, exc)
            return None

    def __exit__(self, *_: object) -> None:
        if self._document is not None:
            with _pdfium_lock:
                self._document.close()
            self._document = None


def _parse_text(text: str, *, markdown: bool) -> ParsedDocument:
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not markdown:
        return ParsedDocument(kind="text", mime="text/plain", sections=[Section(text=text, first_line=1)], pages=1)

    sections: list[Section] = []
    path: list[tuple[int, str]] = []
    buffer: list[str] = []
    start = 1
    title = None

    def flush() -> None:
        if any(line.strip() for line in buffer):
            heading = " > ".join(name for _, name in path) or None
            sections.append(Section(text="\n".join(buffer), first_line=start, heading=heading))

    in_code = False
    for number, line in enumerate(text.split("\n"), start=1):
        if line.lstrip().startswith("```"):
            in_code = not in_code
        match = None if in_code else _MARKDOWN_HEADING.match(line)
        if match:
            flush()
            level, name = len(match.group(1)), match.group(2).strip()
            title = title or name
            path = [(lvl, n) for lvl, n in path if lvl < level] + [(level, name)]
            buffer, start = [name], number
        else:
            buffer.append(line)
    flush()
    return ParsedDocument(kind="markdown", mime="text/markdown", sections=sections, pages=1, title=title)


def _is_docx(data: bytes) -> bool:
    import zipfile

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return "word/document.xml" in archive.namelist()
    except zipfile.BadZipFile:
        return False


def _parse_docx(data: bytes) -> ParsedDocument:
    import zipfile

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
        import docx

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
            sections.append(Section(text="\n".join(_rows_with_header(rows)), first_line=number + 1,
                                    heading="table", unit="paragraphs"))
    return ParsedDocument(kind="docx", mime="application/vnd.openxmlformats-officedocument.wordprocessingml.document",
                          sections=sections, pages=1, title=title)


def _heading_level(style: str) -> int:
    if style == "Title":
        return 1
    match = re.match(r"Heading (\d)", style)
    return int(match.group(1)) if match else 0


def _parse_html(html: str) -> ParsedDocument:
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, "html.parser")
    for tag in soup(["script", "style", "noscript", "template", "iframe", "svg", "head"]):
        if tag.name == "head":
            continue
        tag.decompose()
    title = soup.title.get_text(" ", strip=True) if soup.title else None
    if soup.head:
        soup.head.decompose()
    for heading in soup.find_all(re.compile(r"^h[1-6]$")):
        heading.replace_with(f"\n{'#' * int(heading.name[1])} {heading.get_text(' ', strip=True)}\n")
    text = soup.get_text("\n")
    text = re.sub(r"\n\s*\n+", "\n\n", text)
    parsed = _parse_text(text, markdown=True)
    return ParsedDocument(kind="html", mime="text/html", sections=parsed.sections, pages=1,
                          title=title or parsed.title)


def _csv_delimiter(text: str) -> str | None:
    lines = [line for line in text.split("\n")[:30] if line.strip()]
    if len(lines) < 3:
        return None
    for delimiter in _CSV_DELIMITERS:
        counts = {line.count(delimiter) for line in lines[:-1] or lines}
        if len(counts) == 1 and counts.pop() >= 1:
            return delimiter
    return None


def _parse_csv(text: str, rows_per_section: int = 50) -> ParsedDocument:
    import csv

    delimiter = _csv_delimiter(text) or ","
    rows = [row for row in csv.reader(io.StringIO(text), delimiter=delimiter) if any(c.strip() for c in row)]
    if not rows:
        return ParsedDocument(kind="csv", mime="text/csv", sections=[], pages=1)
    header, body = rows[0], rows[1:]
    sections = []
    for start in range(0, len(body), rows_per_section):
        part = body[start : start + rows_per_section]
        lines = _rows_with_header([header, *part])
        sections.append(Section(text="\n".join(lines), first_line=start + 2, unit="rows"))
    return ParsedDocument(kind="csv", mime="text/csv", sections=sections, pages=1)


def _rows_with_header(rows: list[list[str]]) -> list[str]:
    """Each row as 'column: value; …' so a chunk of rows still says what every value means."""
    header, body = rows[0], rows[1:] or [rows[0]]
    if not rows[1:]:
        return ["; ".join(c for c in header if c)]
    out = []
    for row in body:
        pairs = [f"{h or f'column {i + 1}'}: {v}" for i, (h, v) in enumerate(zip(header, row, strict=False)) if v.strip()]
        out.append("; ".join(pairs) + ".")
    return out


def _clean(text: str) -> str:
    # PDF text comes with hyphenated line breaks, CR LF (pdfium) and runs of spaces from layout; keep paragraphs,
    # drop the noise. pdfium marks a hyphen it saw at a line end as U+0002 or a soft hyphen.
    text = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"(\w)[-\u00ad\x02]\n(\w)", r"\1\2", text)
    text = text.replace("\x02", "").replace("\u00ad", "")
    text = re.sub(r"[ \t]+", " ", text)
    return text.strip()
