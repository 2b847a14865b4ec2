"""OCR of PDF pages without a text layer: a real NTSB report rendered to images is read back, page numbers kept,
with progress per page; a page it cannot read is named; the time limit bounds it; the setting turns it off."""

from __future__ import annotations

import numpy as np
import pytest
from fpdf import FPDF

from rag.parsing import ParseError, parse
from rag.parsing.ocr import _ranges, needs_ocr, ocr_pages, render_scale
from tests.scans import NTSB_REPORT, image_only_pdf


@pytest.fixture(scope="module")
def scanned_report() -> bytes:
    return image_only_pdf(NTSB_REPORT.read_bytes(), pages=[1], blank_after=True)


def test_a_scanned_report_is_read_page_by_page_with_progress(settings_env, scanned_report):
    settings_env()
    calls: list[tuple[int, int]] = []
    parsed = parse(scanned_report, "scan.pdf", ocr_progress=lambda done, total: calls.append((done, total)))
    assert calls == [(0, 2), (1, 2), (2, 2)]
    assert [s.page for s in parsed.sections] == [1, 2] and parsed.pages == 2
    first = parsed.sections[0].text
    for words in ("Tallahassee", "NYC08CA055", "Piper PA-22-150", "utility wires"):
        assert words in first, first[:500]
    assert parsed.sections[1].text == ""
    assert parsed.notes == [
        "OCR found no readable text on page 2 (blank, a picture, or too faint): it is not searchable."
    ]


def test_pages_with_a_text_layer_are_not_ocrd(settings_env, monkeypatch):
    settings_env()
    monkeypatch.setattr("rag.parsing.ocr.recognise", lambda image: pytest.fail("OCR ran on a text page"))
    parsed = parse(NTSB_REPORT.read_bytes(), "report.pdf", ocr_progress=lambda *_: pytest.fail("OCR progress"))
    assert "Tallahassee" in parsed.sections[0].text and not parsed.notes


def test_ocr_turned_off_says_so(settings_env, scanned_report):
    settings_env(ocr_enabled="false")
    with pytest.raises(ParseError, match="no text layer.*OCR is turned off.*KBCHAT_OCR_ENABLED"):
        parse(scanned_report, "scan.pdf")


def test_a_pdf_whose_pages_ocr_cannot_read_fails_saying_so(settings_env):
    settings_env()
    pdf = FPDF()
    pdf.add_page()
    pdf.rect(20, 20, 100, 60, style="F")
    with pytest.raises(ParseError, match="no text layer.*OCR found no readable text.*page 1"):
        parse(bytes(pdf.output()), "scan.pdf")


def fake_page(index: int, scale: float) -> np.ndarray:
    return np.zeros((10, 10, 3), dtype=np.uint8)


def test_a_page_that_fails_is_named_and_the_others_are_read(settings_env, monkeypatch):
    settings_env()

    def recognise(image):
        recognise.calls += 1
        if recognise.calls == 2:
            raise RuntimeError("bad image")
        return "some words here"

    recognise.calls = 0
    monkeypatch.setattr("rag.parsing.ocr.recognise", recognise)
    report = ocr_pages([0, 1, 2], fake_page, lambda index: (612, 792))
    assert report.pages == {0: "some words here", 1: "", 2: "some words here"}
    assert report.notes == ["OCR found no readable text on page 2 (blank, a picture, or too faint): it is not "
                            "searchable."]


def test_ocr_stops_within_its_share_of_the_ingest_time_limit(settings_env, monkeypatch):
    settings_env(ingest_time_limit_seconds=100)  # OCR may use 60 s of it
    now = [0.0]
    monkeypatch.setattr("rag.parsing.ocr.recognise", lambda image: now.__setitem__(0, now[0] + 25) or "text")
    report = ocr_pages([0, 1, 2, 3, 4], fake_page, lambda index: (612, 792), clock=lambda: now[0])
    assert sorted(report.pages) == [0, 1, 2]
    assert report.notes == ["OCR stopped after 3 of 5 scanned pages: the ingest time limit (100 s) was near; "
                            "pages 4–5 are not searchable."]


def test_helpers():
    assert needs_ocr("") and needs_ocr("  3 \n") and not needs_ocr("Accident report")
    assert _ranges([1, 2, 3, 7, 9, 10]) == "1–3, 7, 9–10" and _ranges([4]) == "4"
    assert render_scale(612, 792, 150) == pytest.approx(150 / 72)
    assert 7200 * render_scale(7200, 3600, 150) == pytest.approx(3000)  # a poster: longest side bounded
