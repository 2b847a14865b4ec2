"""A scanned NTSB report (its pages as images, no text layer) is read by OCR in a real ingest worker: ready,
its words found by search on the page they are on, and the same question finds the same page as the text PDF."""

from __future__ import annotations

import pytest

from tests.conftest import upload, wait_for_documents
from tests.scans import NTSB_REPORT, image_only_pdf

pytestmark = pytest.mark.integration

QUESTION = "Why did the Piper contact trees and utility wires on final approach to the private turf strip?"


def _ready(kb_id: int, filename: str, data: bytes):
    outcome = upload(kb_id, filename, data)
    assert outcome.status == "queued", outcome
    document = wait_for_documents([outcome.document_id], timeout=300)[outcome.document_id]
    assert document.status == "ready", document.error
    return document


def _search(kb_id: int, question: str):
    from infra.database import session_scope
    from rag import retrieval

    with session_scope() as session:
        return retrieval.search(session=session, kb_id=kb_id, question=question)


# OCR happens in the parse step, the same on both backends: one is enough.
@pytest.mark.parametrize("backend", ["celery"], indirect=True)
def test_a_scanned_report_is_searchable_after_ingest(worker, kb, backend):
    from rag.library import get_or_create_kb

    kb_id, name = kb
    scan = _ready(kb_id, "scanned-report.pdf", image_only_pdf(NTSB_REPORT.read_bytes()))
    assert scan.pages == 4 and scan.chunk_count > 0
    assert scan.error is None  # every page was read

    hits = _search(kb_id, "NYC08CA055 Tallahassee")
    assert hits and hits[0].document_id == scan.id and hits[0].page == 1, hits[:1]
    assert "Tallahassee" in hits[0].text

    from infra.database import session_scope

    with session_scope() as session:
        text_kb = get_or_create_kb(session=session, name=f"{name}-text").id
    text = _ready(text_kb, "report.pdf", NTSB_REPORT.read_bytes())
    scanned_top, text_top = _search(kb_id, QUESTION)[0], _search(text_kb, QUESTION)[0]
    assert scanned_top.page == text_top.page, (scanned_top, text_top)
    assert text.pages == scan.pages
