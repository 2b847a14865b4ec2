"""File bytes → sections: PDFs built here with fpdf2, text in the encodings people actually upload, and the
permanent failures (encrypted, damaged, empty, binary, image-only) with messages a person can act on."""

from __future__ import annotations

import io

import pytest
from fpdf import FPDF
from pypdf import PdfReader, PdfWriter

from rag.parsing import ParseError, parse, sniff


def make_pdf(pages: list[str]) -> bytes:
    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 8, text)
    return bytes(pdf.output())


def encrypt(data: bytes, user_password: str) -> bytes:
    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(data)))
    writer.encrypt(user_password, "owner-secret")
    out = io.BytesIO()
    writer.write(out)
    return out.getvalue()


PAGES = ["Alpha page speaks of engines.", "Beta page covers the weather.", "Gamma page lists the crew."]


def test_pdf_text_survives_with_page_numbers():
    progress: list[tuple[int, int]] = []
    document = parse(
        make_pdf(PAGES), "report.pdf", progress=lambda done, total: progress.append((done, total))
    )
    assert document.kind == "pdf" and document.mime == "application/pdf"
    assert document.pages == 3
    assert [s.page for s in document.sections] == [1, 2, 3]
    assert [s.text for s in document.sections] == PAGES
    assert progress == [(1, 3), (2, 3), (3, 3)]


LONG_PAGE = (
    "The investigators examined the left engine's fuel control unit and found contamination in the filter. "
    "Maintenance records showed the unit had been overhauled eighteen months before the accident, and the "
    "operator's inspection programme called for the filter to be checked every one hundred hours of operation."
)


@pytest.mark.parametrize("engine", ["pdfium", "pypdf"])
def test_both_pdf_text_engines_read_the_same_words_per_page(settings_env, engine):
    settings_env(pdf_text_engine=engine)
    document = parse(make_pdf([LONG_PAGE, *PAGES]), "report.pdf")
    assert [s.page for s in document.sections] == [1, 2, 3, 4]
    first = document.sections[0].text
    assert "\r" not in first and "\x02" not in first and "\n" in first  # wrapped lines, LF only
    assert " ".join(first.split()) == LONG_PAGE
    assert [s.text for s in document.sections[1:]] == PAGES


def test_a_page_pdfium_cannot_read_is_read_by_pypdf(settings_env, monkeypatch, caplog):
    import pypdfium2

    settings_env(pdf_text_engine="pdfium")
    real_get = pypdfium2.PdfDocument.__getitem__

    def flaky(document, index):
        if index == 1:
            raise pypdfium2.PdfiumError("Failed to load page.")
        return real_get(document, index)

    monkeypatch.setattr(pypdfium2.PdfDocument, "__getitem__", flaky)
    document = parse(make_pdf(PAGES), "report.pdf")
    assert [s.text for s in document.sections] == PAGES
    assert "cannot read page 2" in caplog.text


def test_a_pdf_pdfium_cannot_open_is_read_by_pypdf(settings_env, monkeypatch, caplog):
    import pypdfium2

    settings_env(pdf_text_engine="pdfium")

    def refuse(*_args, **_kwargs):
        raise pypdfium2.PdfiumError("Failed to load document (PDFium: Data format error).")

    monkeypatch.setattr(pypdfium2, "PdfDocument", refuse)
    assert [s.text for s in parse(make_pdf(PAGES), "report.pdf").sections] == PAGES
    assert "pdfium cannot open" in caplog.text


def test_pdf_title_comes_from_metadata():
    pdf = FPDF()
    pdf.set_title("Annual Safety Review")
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.cell(0, 10, "Body text.")
    assert parse(bytes(pdf.output())).title == "Annual Safety Review"


def test_password_protected_pdf_is_refused_with_a_reason():
    with pytest.raises(ParseError, match="password"):
        parse(encrypt(make_pdf(PAGES), "pw"), "secret.pdf")


def test_pdf_encrypted_with_an_empty_user_password_opens():
    document = parse(encrypt(make_pdf(PAGES), ""), "restricted.pdf")
    assert [s.text for s in document.sections] == PAGES


@pytest.mark.parametrize(
    "data",
    [
        b"%PDF-1.7\n1 0 obj << /Type /Catalog garbage garbage",
        make_pdf(PAGES)[:300],  # truncated download
    ],
    ids=["garbage", "truncated"],
)
def test_damaged_pdf_is_refused(data: bytes):
    with pytest.raises(ParseError, match="damaged"):
        parse(data, "broken.pdf")


def test_pdf_without_text_layer_says_ocr_is_off(settings_env):
    settings_env(ocr_enabled="false")  # with OCR on: tests/unit/test_ocr.py
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")
    with pytest.raises(ParseError, match="no text layer.*OCR is turned off"):
        parse(bytes(pdf.output()), "scan.pdf")


def test_pdf_over_the_page_limit_is_refused(settings_env):
    settings_env(max_pdf_pages=2)
    with pytest.raises(ParseError, match="3 pages; the limit is 2"):
        parse(make_pdf(PAGES), "long.pdf")
    settings_env(max_pdf_pages=3)
    assert parse(make_pdf(PAGES)).pages == 3


def test_empty_file_is_refused():
    with pytest.raises(ParseError, match="empty"):
        parse(b"", "nothing.txt")


@pytest.mark.parametrize(
    "data",
    [bytes(range(256)) * 8, b"\x89PNG\r\n\x1a\n" + bytes(200), b"PK\x03\x04" + bytes(100)],
    ids=["junk", "png", "zip"],
)
def test_binary_files_are_unsupported(data: bytes):
    with pytest.raises(ParseError, match="Unsupported"):
        parse(data, "file.txt")


def test_type_comes_from_content_not_name():
    pdf = make_pdf(PAGES)
    assert sniff(pdf, "notes.txt") == "pdf"
    assert parse(pdf, "notes.txt").kind == "pdf"
    text = b"Just a plain note about the engine.\nNothing more to say.\n"
    assert sniff(text, "report.pdf") == "text"
    document = parse(text, "report.pdf")
    assert document.kind == "text" and "plain note" in document.sections[0].text


MARKDOWN = """# Guide

Intro paragraph.

## Install

Run the installer.

### Linux

Use the package.

## Usage

Ask questions.
"""


def test_markdown_headings_become_sections_with_paths_and_first_lines():
    document = parse(MARKDOWN.encode(), "guide.md")
    assert document.kind == "markdown" and document.title == "Guide"
    assert [(s.heading, s.first_line) for s in document.sections] == [
        ("Guide", 1),
        ("Guide > Install", 5),
        ("Guide > Install > Linux", 9),
        ("Guide > Usage", 13),
    ]
    assert "Use the package." in document.sections[2].text
    assert "Ask questions." in document.sections[3].text
    lines = MARKDOWN.split("\n")
    for section in document.sections:  # first_line points at the heading's own line
        assert lines[section.first_line - 1].lstrip("# ") == section.heading.split(" > ")[-1]


def test_hash_lines_inside_code_blocks_are_not_headings():
    text = "# Title\n\n```\n# not a heading\n```\n\n## Real\n\nText.\n"
    document = parse(text.encode(), "x.md")
    assert [s.heading for s in document.sections] == ["Title", "Title > Real"]


@pytest.mark.parametrize(
    "text,encoding",
    [
        ("café déjà vu\n", "latin-1"),
        ("Le café est très chaud. Où est la gare? Déjà vu, naïve façade.\n", "latin-1"),
        ("La città è più bella perché c'è il sole. Però non so.\n", "cp1252"),
        ("A informação é útil, não é? Ação e coração.\n", "latin-1"),
        ("Die Straße ist schön; Grüße aus München — “zitiert”, 20 €.\n", "cp1252"),
        ("Zażółć gęślą jaźń. Dzień dobry, proszę pana. Łódź jest ładna.\n", "cp1250"),
        ("Árvíztűrő tükörfúrógép. Jó napot kívánok, hogy van?\n", "cp1250"),
        ("Привет, как дела? Это тест кодировки для русского текста.\n", "cp1251"),
    ],
)
def test_legacy_encodings_are_decoded(text: str, encoding: str):
    document = parse(text.encode(encoding), "legacy.txt")
    assert document.sections[0].text == text


@pytest.mark.parametrize("encoding", ["utf-16", "utf-8-sig"])
def test_byte_order_marks_are_honoured(encoding: str):
    text = "Résumé of the naïve café — 東京, Привет.\n"
    document = parse(text.encode(encoding), "bom.txt")
    assert document.sections[0].text == text


def test_nul_bytes_are_dropped():
    text = b"The engine stopped\x00 at ten thousand feet.\nThe pilot landed\x00 safely on the highway.\n" * 3
    document = parse(text, "nul.txt")
    assert "\x00" not in document.sections[0].text
    assert "The engine stopped at ten thousand feet." in document.sections[0].text


def test_invalid_utf8_does_not_crash():
    data = (
        "The report is mostly UTF-8 ✓ text.\n".encode()
        + b"\xff\xfe\xfa\xc3\x28 broken bytes\n"
        + b"More text.\n"
    )
    document = parse(data, "mixed.txt")
    text = document.sections[0].text
    assert "broken bytes" in text and "More text." in text


def test_plain_text_is_one_section_from_line_one_with_unix_newlines():
    document = parse(b"one\r\ntwo\rthree\n", "a.txt")
    assert document.kind == "text" and document.mime == "text/plain"
    assert [(s.text, s.first_line, s.page) for s in document.sections] == [("one\ntwo\nthree\n", 1, None)]


def test_whitespace_only_text_has_no_readable_text():
    with pytest.raises(ParseError, match="no readable text"):
        parse(b"   \n\n\t  \n", "blank.txt")
