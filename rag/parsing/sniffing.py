"""The kind of document from its first bytes (the file name only tells Markdown from plain text)."""

from __future__ import annotations

import re

from rag.parsing.delimited import csv_delimiter
from rag.parsing.document import ParseError
from rag.parsing.docx import is_docx
from rag.parsing.text import MARKDOWN_HINTS, decode

_PDF_MAGIC = b"%PDF-"
_HTML_HINT = re.compile(rb"<!doctype html|<html[\s>]|<body[\s>]|<head[\s>]", re.IGNORECASE)


def sniff(data: bytes, filename: str = "") -> str:
    """The document kind from its first bytes; the file name only tells Markdown from plain text."""
    if not data:
        raise ParseError("The file is empty (0 bytes).")
    head = data[:1024].lstrip()
    if head.startswith(_PDF_MAGIC) or data[:1024].find(_PDF_MAGIC) != -1:
        return "pdf"
    if data.startswith(b"PK\x03\x04"):
        if is_docx(data):
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
    text = decode(data[:65536])
    lower = filename.lower()
    if lower.endswith((".md", ".markdown")) or len(MARKDOWN_HINTS.findall(text)) >= 3:
        return "markdown"
    if lower.endswith((".csv", ".tsv")) or csv_delimiter(text) is not None:
        return "csv"
    return "text"


def _looks_binary(sample: bytes) -> bool:
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with a BOM is text
        return False
    if not sample:
        return False
    control = sum(1 for b in sample if b < 9 or 13 < b < 32)
    return control / len(sample) > 0.10
