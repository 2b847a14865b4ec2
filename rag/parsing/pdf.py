"""PDF: pypdf opens and checks every file (encryption, safety limits, page limit); pdfium reads page text where
it can, pypdf where it cannot; pages without a text layer (scans) are rendered by pdfium and read by OCR
(``rag.parsing.ocr``) unless ``KBCHAT_OCR_ENABLED`` is off."""

from __future__ import annotations

import io
import logging
import re
import threading
from collections.abc import Callable
from contextlib import closing
from typing import TypeVar

import pypdfium2
from pypdf import PdfReader, apply_configuration
from pypdf.errors import DependencyError, FileNotDecryptedError, LimitReachedError, PdfReadError

from infra.settings import get_settings
from rag.parsing.document import ParsedDocument, ParseError, ProgressFn, Section
from rag.parsing.ocr import OcrUnavailable, needs_ocr, ocr_pages
from rag.parsing.sniffing import sniff

log = logging.getLogger(__name__)

T = TypeVar("T")

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


def parse_pdf(data: bytes, progress: ProgressFn | None, ocr_progress: ProgressFn | None = None) -> ParsedDocument:
    return _with_pdf_limits(lambda: _read_pdf(data, progress, ocr_progress=ocr_progress))


def _with_pdf_limits(read: Callable[[], T]) -> T:
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
    data: bytes,
    progress: ProgressFn | None,
    first: int = 1,
    last: int | None = None,
    ocr_progress: ProgressFn | None = None,
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
    notes = _ocr_scanned_pages(data, sections, ocr_progress) if get_settings().ocr_enabled else []
    return ParsedDocument(
        kind="pdf", mime="application/pdf", sections=sections, pages=total, title=title, notes=notes
    )


def _ocr_scanned_pages(data: bytes, sections: list[Section], progress: ProgressFn | None) -> list[str]:
    """Replace the text of the sections whose page has no text layer by what OCR reads on it, in place; page
    numbers stay. Returns what a person should know (pages OCR could not read, or did not get to)."""
    scanned = [position for position, section in enumerate(sections) if needs_ocr(section.text)]
    if not scanned:
        return []
    try:
        with _pdfium_lock:
            document = pypdfium2.PdfDocument(data)
    except Exception as exc:
        return [f"Pages without a text layer could not be rendered for OCR ({exc})."]
    by_page = {sections[position].page - 1: position for position in scanned}

    def page_size(index: int) -> tuple[float, float]:
        with _pdfium_lock, closing(document[index]) as page:
            return page.get_size()

    def render(index: int, scale: float):
        with _pdfium_lock, closing(document[index]) as page:
            bitmap = page.render(scale=scale)
            try:
                return bitmap.to_numpy().copy()
            finally:
                bitmap.close()

    try:
        report = ocr_pages(list(by_page), render, page_size, progress)
    except OcrUnavailable as exc:
        raise ParseError(f"The PDF has pages without a text layer, and OCR is not available here: {exc}.") from exc
    finally:
        with _pdfium_lock:
            document.close()
    for index, text in report.pages.items():
        position = by_page[index]
        sections[position] = Section(text=_clean(text), page=sections[position].page)
    return report.notes


def _pypdf_page_text(reader, index: int) -> str:
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


def _clean(text: str) -> str:
    # PDF text comes with hyphenated line breaks, CR LF (pdfium) and runs of spaces from layout; keep paragraphs,
    # drop the noise. pdfium marks a hyphen it saw at a line end as U+0002 or a soft hyphen.
    text = text.replace("\x00", "").replace("\r\n", "\n").replace("\r", "\n")
    text = re.sub(r"(\w)[-\u00ad\x02]\n(\w)", r"\1\2", text)
    text = text.replace("\x02", "").replace("\u00ad", "")
    text = re.sub(r"[ \t]+", " ", text)
    return text.strip()
