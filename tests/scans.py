"""Scanned PDFs for the OCR tests: real report pages rendered by pdfium to images and put in a PDF without a text
layer, the way a scanner or "print to image" makes them."""

from __future__ import annotations

from pathlib import Path

NTSB_REPORT = Path(__file__).resolve().parent / "data" / "ntsb-20071229X02007.pdf"


def image_only_pdf(source: bytes, pages: list[int] | None = None, dpi: int = 150, blank_after: bool = False) -> bytes:
    """The pages (1-based; default all) of ``source`` as images only; ``blank_after`` adds an empty white page."""
    import pypdfium2
    from fpdf import FPDF

    document = pypdfium2.PdfDocument(source)
    try:
        numbers = pages or list(range(1, len(document) + 1))
        pdf = FPDF(unit="pt")
        for number in numbers:
            page = document[number - 1]
            width, height = page.get_size()
            image = page.render(scale=dpi / 72).to_pil()
            pdf.add_page(format=(width, height))
            pdf.image(image, x=0, y=0, w=width, h=height)
            page.close()
        if blank_after:
            pdf.add_page(format=(612, 792))
        return bytes(pdf.output())
    finally:
        document.close()
