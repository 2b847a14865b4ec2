"""The Streamlit pages in AppTest, through the entrypoint, over data made by real tasks on real services.

AppTest runs the page scripts in this process: what a page enqueues goes through the use cases and this process's
``tasks.backend`` to the ``worker`` fixture's real worker, so the data the pages show (documents, answers, task
records) is made by real tasks on both backends.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from tests.conftest import DEMO, ROOT, _reset_caches, app_test, make_pdf, upload, wait_for_documents

pytestmark = pytest.mark.ui

ENTRYPOINT = ROOT / "streamlit_app" / "app.py"
# switch_page paths are relative to the entrypoint's folder (streamlit_app/); the pages live beside it.
UPLOAD, CHAT, STATUS = "../pages/upload.py", "../pages/chat.py", "../pages/status.py"
NEW_KB = "➕ New knowledge base…"

# Page 2 is about the cable, in several chunks of the library's small (32-token) chunk size. The question is
# answered in the middle of the page, so the passage quoted (the best chunk merged with its neighbours) is p. 2.
CABLE_PAGE = (
    "Divers from the harbour authority repaired the submarine telegraph cable near the harbour mouth in March. "
    "A trawler had snagged the submarine telegraph cable during a storm and cut the link to the island. "
    "The repair of the submarine telegraph cable took the divers four days in cold and murky water. "
    "The divers spliced a new section of armoured telegraph cable between two marker buoys. "
    "After the repair the submarine telegraph cable carried messages to the island again. "
    "The harbour authority paid the divers a bonus for repairing the submarine cable so quickly."
)
PAGES = [
    "The lighthouse keeper logged a northerly gale on the first night of November and lit the spare lamp. "
    "He cleaned the salt from the lantern glass every hour and noted each ship that passed the point.",
    CABLE_PAGE,
    "A volcanic eruption buried the apricot orchard under grey ash. The cooperative paid the farmers from its "
    "reserve fund, and the orchard was replanted with young trees two years later.",
]


@dataclass
class Library:
    """A knowledge base with one ready and one failed document, both ingested by real tasks."""

    kb_id: int
    kb_name: str
    ready_name: str
    failed_name: str
    ready_task: str
    failed_error: str


@pytest.fixture(scope="module")
def library(worker) -> Library:
    from db.repositories import knowledge_bases as kb_repo
    from infra.database import session_scope
    from rag.library import get_or_create_kb

    with session_scope() as session:
        kb = get_or_create_kb(session=session, name=f"ui-{worker.backend}-{uuid.uuid4().hex[:8]}")
        kb_id, kb_name = kb.id, kb.name
        kb_repo.set_chunking(session=session, kb_id=kb_id, chunk_tokens=32, chunk_overlap_tokens=8)
    good = upload(kb_id, "harbour-log.pdf", make_pdf(PAGES))
    bad = upload(kb_id, "broken.pdf", b"%PDF-1.4 this is not really a PDF")
    assert good.status == bad.status == "queued"
    documents = wait_for_documents([good.document_id, bad.document_id], timeout=180)
    ready, failed = documents[good.document_id], documents[bad.document_id]
    assert ready.status == "ready", ready.error
    assert failed.status == "failed" and failed.error
    return Library(kb_id, kb_name, ready.filename, failed.filename, ready.task_id, failed.error)


def open_app() -> AppTest:
    """The entrypoint, run once so that its navigation is registered (switch_page needs it)."""
    at = app_test(ENTRYPOINT)
    at.run()
    assert not at.exception, at.exception
    return at


def open_page(page: str, **query: str) -> AppTest:
    at = open_app()
    for key, value in query.items():
        at.query_params[key] = value
    at.switch_page(page).run()
    assert not at.exception, at.exception
    return at


def choose_kb(at: AppTest, key: str, name: str) -> AppTest:
    at.selectbox(key=key).select(name).run()
    assert not at.exception, at.exception
    return at


def texts(elements) -> list[str]:
    return [str(e.value) for e in elements]


# --- the entrypoint ---------------------------------------------------------------------------------------------


def test_entrypoint_renders_the_navigation_and_opens_on_ask(services):
    at = open_app()
    # AppTest keeps what st.navigation registered (the browser draws the menu from it).
    pages = list(at._registered_pages.values())
    # Every page has its own URL, Ask included: "/" is a hidden page that opens Ask at /chat (a default page is
    # served at "/" only, so /chat used to say "Page not found").
    home = [p for p in pages if p["url_pathname"] == ""]
    assert [p["page_name"] for p in home] == ["kbchat"], home
    pages = [p for p in pages if p["url_pathname"]]
    paths = {p["page_name"]: p["url_pathname"] for p in pages}
    assert paths["Ask"] == "chat" and len(set(paths.values())) == len(paths), paths
    registered = {info["page_name"]: Path(info["script_path"]) for info in pages}
    assert list(registered)[:3] == ["Ask", "Upload", "Knowledge bases"]
    assert registered["Task status"] == ROOT / "pages" / "status.py"
    assert texts(at.title) == ["Ask your documents"]
    assert any("Task backend" in c for c in texts(at.sidebar.caption))
    for name, script in registered.items():  # every page in the menu opens cleanly
        at.switch_page(os.path.relpath(script, ENTRYPOINT.parent)).run()
        assert not at.exception, (name, at.exception)
        assert at.title and not any(e.startswith("No services") for e in texts(at.error)), (name, texts(at.error))


# --- upload -------------------------------------------------------------------------------------------------------


def test_upload_page_lists_documents_with_status_and_failure_reason(library):
    at = choose_kb(open_page(UPLOAD), "upload_kb", library.kb_name)
    assert texts(at.title) == ["Upload documents"]
    assert f"Documents in “{library.kb_name}”" in texts(at.subheader)
    # One row per document: its name, then its status badge.
    rows = dict(zip(texts(at.markdown)[0::2], texts(at.markdown)[1::2], strict=True))
    assert rows[f"**{library.ready_name}**"] == ":green-badge[:material/check_circle: ready]", rows
    assert rows[f"**{library.failed_name}**"] == ":red-badge[:material/error: failed]", rows
    assert any("3 pages" in c for c in texts(at.caption)), texts(at.caption)
    errors = texts(at.error)
    assert library.failed_error in errors, errors
    assert "damaged" in library.failed_error  # a reason a person can act on, not a traceback


def test_upload_page_says_worker_lost_instead_of_a_frozen_bar(kb):
    """A document whose worker's heartbeat is gone shows "worker lost — retrying (attempt N)", not its last bar."""
    from sqlalchemy import text

    from db.repositories import documents as document_repo
    from infra.database import session_scope
    from rag.library import store_upload

    kb_id, kb_name = kb
    with session_scope() as session:
        outcome = store_upload(session=session, kb_id=kb_id, filename="orphaned.txt",
                               data=b"The ferry to the island leaves at seven from pier four.\n")
        session.execute(text(
            "UPDATE documents SET status = 'embedding', progress = 0.5, progress_done = 5, progress_total = 10, "
            "attempts = 1, worker = 'kbchat-ingest-1@gone', claimed_at = now() WHERE id = :id"),
            {"id": outcome.document_id})
    try:
        at = choose_kb(open_page(UPLOAD), "upload_kb", kb_name)
        assert "worker lost — retrying (attempt 2)" in texts(at.warning), texts(at.warning)
        assert not at.get("progress"), "no frozen progress bar"
    finally:  # nothing for the session worker's reconciler to pick up
        with session_scope() as session:
            document_repo.mark_failed(session=session, document_id=outcome.document_id, error="test over")


def test_upload_page_creates_a_knowledge_base_in_place(services):
    from db.repositories import knowledge_bases as kb_repo
    from infra.database import session_scope

    name = f"Created in place {uuid.uuid4().hex[:6]}"
    at = open_page(UPLOAD)
    choose_kb(at, "upload_kb", NEW_KB)
    at.button(key="upload_kb_create").click().run()  # no name yet
    assert texts(at.error) == ["A knowledge base needs a name."]
    at.text_input(key="upload_kb_new").input(name)
    at.button(key="upload_kb_create").click().run()
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)
    with session_scope() as session:
        assert kb_repo.get_by_name(session=session, name=name) is not None
    # The page moves on to the new base, ready for files.
    assert at.selectbox(key="upload_kb").value == name
    assert f"Documents in “{name}”" in texts(at.subheader)
    assert not at.text_input  # the name field is gone


def test_knowledge_bases_page_creates_a_base_and_selects_it(services):
    from db.repositories import knowledge_bases as kb_repo
    from infra.database import session_scope

    name = f"From the KB page {uuid.uuid4().hex[:6]}"
    at = open_page("../pages/knowledge_bases.py")
    at.text_input(key="kbs_new_name").input(name)
    at.button(key="kbs_create").click().run()
    assert not at.exception, at.exception
    with session_scope() as session:
        assert kb_repo.get_by_name(session=session, name=name) is not None
    assert at.selectbox(key="kbs_kb").value == name


def test_upload_page_adds_files_and_reports_duplicates(worker, kb):
    """AppTest of streamlit 1.67 can set st.file_uploader's files: the page's own upload path, end to end."""
    from db.repositories import documents as document_repo
    from infra.database import session_scope

    kb_id, kb_name = kb
    pdf = sorted(DEMO.glob("*.pdf"))[0]
    at = choose_kb(open_page(UPLOAD), "upload_kb", kb_name)
    assert at.button(key="upload_add").disabled  # nothing chosen yet
    label = at.file_uploader[0].label  # every format the parser reads, not only PDF, Markdown and text
    assert all(kind in label for kind in ("PDF", "OCR", "Word", "HTML", "Markdown", "CSV", "plain text")), label
    at.file_uploader[0].set_value([(pdf.name, pdf.read_bytes(), "application/pdf"),
                                   ("empty.txt", b"", "text/plain")]).run()
    at.button(key="upload_add").click().run()
    assert not at.exception, at.exception
    assert any("empty.txt" in e and "not added" in e for e in texts(at.error)), texts(at.error)
    with session_scope() as session:
        documents = document_repo.list_for_kb(session=session, kb_id=kb_id)
    assert [d.filename for d in documents] == [pdf.name]
    assert wait_for_documents([documents[0].id], timeout=180)[documents[0].id].status == "ready"
    at.run()
    assert f"**{pdf.name}**" in " ".join(texts(at.markdown))

    # The same file again: reported as a duplicate, nothing queued.
    at.file_uploader[0].set_value((f"copy of {pdf.name}", pdf.read_bytes(), "application/pdf")).run()
    at.button(key="upload_add").click().run()
    assert any("duplicate" in w and pdf.name in w for w in texts(at.warning)), texts(at.warning)
    with session_scope() as session:
        assert len(document_repo.list_for_kb(session=session, kb_id=kb_id)) == 1


# --- chat ---------------------------------------------------------------------------------------------------------


def test_chat_answers_with_the_passage_and_a_page_citation_and_keeps_the_conversation(library):
    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope

    at = choose_kb(open_page(CHAT), "chat_kb", library.kb_name)
    question = "How long did the repair of the submarine telegraph cable take?"
    at.chat_input[0].set_value(question).run()
    assert not at.exception, at.exception
    assert not at.error, texts(at.error)

    def assistant_text(at: AppTest) -> str:
        messages = [m for m in at.chat_message if m.name == "assistant"]
        assert messages, "no assistant message"
        return " ".join(texts(messages[-1].markdown))

    assert "took the divers four days" in assistant_text(at)
    labels = [e.label for e in at.expander]
    # The answer's page (2) among the first two passages (the first may be the merged pp. 1–2 around it).
    assert any(label.startswith(("[1]", "[2]")) and f"{library.ready_name}, p. 2" in label for label in labels), labels

    # Saved by the worker: a fresh session (a reload) reopens it from the database with its citations.
    conversation_id = at.session_state[f"chat_conversation_{library.kb_id}"]
    with session_scope() as session:
        saved = [(m.role, m.content, m.citations)
                 for m in conversation_repo.messages(session=session, conversation_id=conversation_id)]
    assert [role for role, _, _ in saved] == ["user", "assistant"]
    assert saved[0][1] == question and "took the divers four days" in saved[1][1]
    assert any(c["document"] == library.ready_name and c["page"] == 2 for c in saved[1][2][:2]), saved[1][2]

    at.run()  # the rerun shows the conversation from the database
    assert [m.name for m in at.chat_message] == ["user", "assistant"]
    assert "took the divers four days" in assistant_text(at)
    assert any(f"{library.ready_name}, p. 2" in e.label for e in at.expander)
    # The conversation is listed in the sidebar, titled by its question (shortened, whole in the tooltip).
    listed = [b for b in at.sidebar.button if b.key == f"chat_open_{conversation_id}"]
    assert listed and question.startswith(listed[0].label.rstrip("…")) and question in listed[0].help

    # Export (the sidebar's download button) and copy (the answer's popover with its text in a code block).
    from streamlit_app import export

    downloads = at.sidebar.get("download_button")
    assert len(downloads) == 1 and downloads[0].proto.label == "Export conversation", downloads
    assert any(str(c.value).strip() == saved[1][1].strip() for c in at.code), ([c.value for c in at.code], saved[1][1])
    title, conversation = export.load(at.session_state["_kbchat_actor"], library.kb_id, conversation_id)
    markdown = export.conversation_markdown(title, library.kb_name, conversation, datetime.now(UTC))
    assert f"## 1. {question}" in markdown and "took the divers four days" in markdown
    assert f"- [2] {library.ready_name}, p. 2" in markdown or f"- [1] {library.ready_name}, p. 2" in markdown, markdown


# --- task status ------------------------------------------------------------------------------------------------


def test_status_page_shows_a_real_ingest_task(library):
    at = open_page(STATUS, task=library.ready_task)
    assert at.text_input[0].value == library.ready_task
    assert texts(at.subheader) == ["ingest.document"]
    metrics = {m.label: m.value for m in at.metric}
    assert metrics["State"] == "succeeded", metrics
    assert not at.warning


def test_status_page_explains_an_unknown_task(services):
    at = open_page(STATUS, task=str(uuid.uuid4()))
    warnings = texts(at.warning)
    assert len(warnings) == 1 and warnings[0].startswith("No record of this task"), warnings
    assert not at.metric


# --- no services ------------------------------------------------------------------------------------------------


@pytest.fixture
def no_services(monkeypatch, tmp_path) -> Iterator[None]:
    """No KBCHAT_*_URL and a data dir with no running ``kbchat run`` in it; the session's services come back after."""
    monkeypatch.delenv("KBCHAT_DATABASE_URL", raising=False)
    monkeypatch.delenv("KBCHAT_REDIS_URL", raising=False)
    monkeypatch.setenv("KBCHAT_DATA_DIR", str(tmp_path))
    _reset_caches()
    yield
    monkeypatch.undo()
    _reset_caches()


@pytest.mark.parametrize("page", [None, UPLOAD, STATUS, "../pages/knowledge_bases.py"])
def test_pages_without_services_say_so_plainly(no_services, page):
    at = AppTest.from_file(str(ENTRYPOINT), default_timeout=60).run()
    if page is not None:
        at.switch_page(page).run()
    assert not at.exception, at.exception
    errors = texts(at.error)
    assert len(errors) == 1 and errors[0].startswith("No services:"), errors
    assert "make run" in errors[0]


def test_status_page_lists_the_viewers_own_recent_tasks(library):
    """Without an id: an analyst sees the tasks they started; an admin sees everyone's."""
    from tasks.backend import get_backend
    from tests.conftest import OPERATOR, app_test, session_token
    from usecases import accounts
    from usecases.asking import ask

    name = f"ui-analyst-{uuid.uuid4().hex[:6]}"
    session_token(name, "analyst")
    accounts.grant(OPERATOR, kb_id=library.kb_id, grantee=name, level="viewer")
    analyst = next(a for a in [accounts.actor_for_session(session_token(name, "analyst"))] if a)
    asked = ask(get_backend(), analyst, kb_id=library.kb_id, question="What did the harbour log say?")

    def listed(username: str, role: str) -> str:
        at = app_test(ENTRYPOINT, username=username, role=role)
        at.run()
        at.switch_page(STATUS).run()
        assert not at.exception, at.exception
        return " ".join(texts(at.markdown))

    mine = listed(name, "analyst")
    assert asked.task_id in mine and library.ready_task not in mine  # not the admin's ingest
    everyone = listed("ui-admin", "admin")
    assert asked.task_id in everyone and library.ready_task in everyone
