"""File bytes → sections of text with page numbers (PDF) or line locators (text); the type comes from the content.

One module per format; ``sniffing`` tells them apart."""

from __future__ import annotations

from infra.settings import get_settings
from rag.parsing.delimited import parse_csv
from rag.parsing.document import ParsedDocument, ParseError, ProgressFn, Section
from rag.parsing.docx import parse_docx
from rag.parsing.html import parse_html
from rag.parsing.pdf import PDF_LIMITS, parse_pdf, parse_pdf_pages, pdf_page_count
from rag.parsing.sniffing import sniff
from rag.parsing.text import decode, parse_text

__all__ = ["PDF_LIMITS", "ParseError", "ParsedDocument", "Section", "parse", "parse_pdf_pages", "pdf_page_count",
           "sniff", "supported_formats"]


def supported_formats() -> str:
    """What an upload may be, in words (the upload box says it): every format ``parse`` reads."""
    pdf = "PDF (scans too: read by OCR)" if get_settings().ocr_enabled else "PDF"
    return f"{pdf}, Word (.docx), HTML, Markdown, CSV or plain text"


def parse(
    data: bytes, filename: str = "", progress: ProgressFn | None = None, ocr_progress: ProgressFn | None = None
) -> ParsedDocument:
    """Parse ``data`` into sections; raises ParseError with a message a person can act on.

    ``progress(done, total)`` follows the pages read; ``ocr_progress`` the scanned pages OCR reads after them."""
    kind = sniff(data, filename)
    if kind == "pdf":
        document = parse_pdf(data, progress, ocr_progress)
    elif kind == "docx":
        document = parse_docx(data)
    elif kind == "html":
        document = parse_html(decode(data))
    elif kind == "csv":
        document = parse_csv(decode(data))
    else:
        document = parse_text(decode(data), markdown=kind == "markdown")
    if not any(section.text.strip() for section in document.sections):
        if kind == "pdf" and not get_settings().ocr_enabled:
            raise ParseError("The PDF has no text layer (scanned images?) and OCR is turned off here "
                             "(KBCHAT_OCR_ENABLED=false).")
        if kind == "pdf":
            raise ParseError("The PDF has no text layer (scanned images?) and OCR found no readable text on its "
                             "pages. " + " ".join(document.notes))
        raise ParseError("The file contains no readable text.")
    return document
