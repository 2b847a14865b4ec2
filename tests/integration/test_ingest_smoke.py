"""The vertical slice through real workers on both backends: upload → ingest → search."""

from __future__ import annotations

from tests.conftest import DEMO, upload, wait_for_documents


def test_pdf_is_ingested_with_pages_and_found(worker, kb):
    from db.repositories import chunks as chunk_repo
    from infra.database import session_scope
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


def test_a_task_that_gives_up_fails_its_document_only_while_it_owns_it(kb):
    """Retries used up (or the time limit) on an old task must not fail a document a newer task is ingesting."""
    from db.repositories import documents as document_repo
    from infra.database import session_scope
    from rag.library import store_upload
    from tasks.bodies import give_up_ingest

    kb_id, _ = kb
    with session_scope() as session:
        outcome = store_upload(session=session, kb_id=kb_id, filename="notes.txt", data=b"Notes on the harbour pilots.\n")
        document_repo.set_task(session=session, document_id=outcome.document_id, task_id="newer-task")

    def status() -> tuple[str, str | None]:
        with session_scope() as session:
            document = document_repo.get(session=session, document_id=outcome.document_id)
            return document.status, document.error

    give_up_ingest([outcome.document_id], "The time limit of 600 s was reached.", "older-task")
    assert status() == ("queued", None)
    give_up_ingest([outcome.document_id], "The time limit of 600 s was reached.", "newer-task")
    assert status() == ("failed", "The time limit of 600 s was reached.")
