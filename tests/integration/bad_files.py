"""Hostile, broken and odd files for the bad-input suite, built here (no file is read from outside the repo)."""

from __future__ import annotations

import io
import zipfile

from tests.conftest import make_pdf


def corrupt_pdf() -> bytes:
    """A PDF header followed by bytes that are no PDF at all (a truncated download)."""
    return b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n" + bytes(range(256)) * 40 + b"\n1 0 obj\n<< /Type /Cat"


def encrypted_pdf(user_password: str, text: str) -> bytes:
    """A text PDF encrypted with RC4-128; an empty user password opens without asking (as viewers do)."""
    from pypdf import PdfReader, PdfWriter

    writer = PdfWriter(clone_from=PdfReader(io.BytesIO(make_pdf([text]))))
    writer.encrypt(user_password=user_password, owner_password="owner-secret", algorithm="RC4-128")
    buffer = io.BytesIO()
    writer.write(buffer)
    return buffer.getvalue()


def image_only_pdf() -> bytes:
    """A page with only a drawn picture: no text layer, and nothing OCR can read."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_fill_color(30, 30, 30)
    pdf.rect(20, 20, 150, 100, style="F")
    pdf.set_fill_color(200, 200, 200)
    pdf.ellipse(60, 150, 80, 60, style="F")
    return bytes(pdf.output())


def zip_bomb_docx(inflated_mb: int = 64) -> bytes:
    """A ZIP that names itself a Word document and inflates ~1000-fold (64 MB from ~64 kB)."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        archive.writestr("[Content_Types].xml", '<?xml version="1.0"?><Types/>')
        body = b'<?xml version="1.0"?><w:document><w:body>' + b" " * (inflated_mb * 1024 * 1024) + b"</w:body></w:document>"
        archive.writestr("word/document.xml", body)
    return buffer.getvalue()


def raw_pdf(content: bytes) -> bytes:
    """A one-page PDF whose page content stream is ``content`` (Helvetica as /F1), with a correct xref table."""
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> "
        b"/Contents 5 0 R >>",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>",
        b"<< /Length %d >>\nstream\n" % len(content) + content + b"\nendstream",
    ]
    out = io.BytesIO()
    out.write(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(out.tell())
        out.write(b"%d 0 obj\n" % number + body + b"\nendobj\n")
    xref = out.tell()
    out.write(b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1))
    for offset in offsets:
        out.write(b"%010d 00000 n \n" % offset)
    out.write(b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref))
    return out.getvalue()


def pdf_beyond_pypdf_defaults(elements: int = 150_000) -> bytes:
    """Legitimate text whose TJ array holds 150,000 elements: over pypdf's default 100,000 per array, well within
    ``rag.parsing.PDF_LIMITS`` (the kind of file pypdf's defaults reject outright)."""
    spacing = b" 0" * (elements - 2)
    content = (
        b"BT /F1 12 Tf 72 720 Td [(Harbour pilots log every tide and every ship they bring in.)"
        + spacing
        + b" (The log is kept for ten years.)] TJ ET"
    )
    return raw_pdf(content)


def many_pages_pdf(pages: int = 2000) -> bytes:
    """A long PDF, quickly: one short text line per page, each page different."""
    from fpdf import FPDF

    pdf = FPDF(unit="pt", format=(300, 200))
    pdf.set_font("helvetica", size=9)
    for number in range(1, pages + 1):
        pdf.add_page()
        pdf.text(20, 40, f"Ledger page {number}: entry {number * 37 % 1009} recorded by clerk {number % 23}.")
    return bytes(pdf.output())
