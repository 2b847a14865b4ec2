"""The vertical slice through real workers on both backends: upload → ingest → search."""

from __future__ import annotations

from tests.conftest import DEMO, upload, wait_for_documents


def test_pdf_is_ingested_with_pages_and_found(worker, kb):
    from db.repositories import chunks as chunk_repo
    from db.session import session_scope
    from rag.retrieval import search

    kb_id, _ = kb
    pdf = sorted(DEMO.glob("*.pdf"))[0]
    outcome = upload(kb_id, pdf.name, pdf.read_bytes())
    assert outcome.status == "queued"
    document = wait_for_documents([outcome.document_id])[outcome.document_id]
    assert document.status == "ready", document.error
    assert document.pages and document.pages >= 2
    with session_scope() as session:
        assert chunk_repo.count_for_document(session=session, document_id=document.id) == document.chunk_count > 0
        hits = search(session=session, kb_id=kb_id, question="probable cause of the accident", k=3)
    assert hits and hits[0].document == pdf.name and hits[0].page >= 1
