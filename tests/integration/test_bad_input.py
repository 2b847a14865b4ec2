"""Bad input, one case each, through real workers on both backends.

All the odd files go up in one upload next to a good one; each must end ``ready`` or with a clear error of its own,
the good file must be unaffected, and what the knowledge base held before must be unchanged.
"""

from __future__ import annotations

import hashlib
import threading
import time
from dataclasses import dataclass

import pytest

from tests.conftest import make_pdf, upload, wait_for_documents
from tests.integration import bad_files

pytestmark = pytest.mark.integration

UNIQUE_SCRIPT_TEXT = "exfiltrate_cookies_7f3a"


@dataclass
class Case:
    filename: str
    data: bytes


def _cases() -> dict[str, Case]:
    html = (
        "<!DOCTYPE html><html><head><title>Tide tables</title><style>body { color: red }</style>"
        f"<script>var token = '{UNIQUE_SCRIPT_TEXT}'; document.cookie;</script></head>"
        "<body><h1>Tide tables</h1><p>High water at the north pier is at 06:40 on Monday.</p>"
        f"<script>alert('{UNIQUE_SCRIPT_TEXT}')</script><noscript>{UNIQUE_SCRIPT_TEXT}</noscript></body></html>"
    )
    return {
        "corrupt_pdf": Case("broken.pdf", bad_files.corrupt_pdf()),
        "encrypted_pdf": Case("locked.pdf", bad_files.encrypted_pdf("s3cret", "The vault code is not in here.")),
        "encrypted_pdf_empty_password": Case(
            "open-but-encrypted.pdf", bad_files.encrypted_pdf("", "Lock keepers open the canal gates at dawn.")
        ),
        "zero_byte": Case("empty.txt", b""),
        "image_only_pdf": Case("scan.pdf", bad_files.image_only_pdf()),
        "pdf_named_txt": Case("actually-a-pdf.txt", make_pdf(["The ferry to the island leaves from pier four."])),
        "text_named_pdf": Case("actually-text.pdf", b"Plain text about orchard irrigation, named like a PDF.\n"),
        "name_dot_dot": Case("../../etc/passwd.txt", b"Path traversal attempt: the name must lose its folders.\n"),
        "name_control_chars": Case("re\x00port\x1b[31m\r\n\t.txt", b"A name full of control characters.\n"),
        "name_300_chars": Case("r" * 296 + ".txt", b"A three hundred character file name is shortened.\n"),
        "name_non_latin": Case("报告_Отчёт_تقرير_보고서.txt", b"Names in Chinese, Russian, Arabic and Korean.\n"),
        "html_with_script": Case("tides.html", html.encode()),
        "nul_bytes": Case("nuls.txt", b"Signal boxes were\x00 rewired in May.\x00 Trains ran slowly.\n"),
        "invalid_utf8": Case("latin.txt", b"Caf\xe9 cr\xe8me at the station: \xff\xfe broken bytes \xc3\x28 here.\n"),
        "zip_bomb_docx": Case("bomb.docx", bad_files.zip_bomb_docx()),
        "pdf_beyond_pypdf_defaults": Case("huge-array.pdf", bad_files.pdf_beyond_pypdf_defaults()),
        "good_neighbour": Case("good.md", b"# Harbour\n\nThe harbour master records every arrival.\n"),
    }


def _chunk_snapshot(document_id: int) -> list[tuple]:
    from sqlalchemy import select

    from db.models import Chunk
    from infra.database import session_scope

    with session_scope() as session:
        rows = session.execute(
            select(Chunk.id, Chunk.ordinal, Chunk.text, Chunk.embedding).where(Chunk.document_id == document_id)
            .order_by(Chunk.ordinal)
        ).all()
    return [(r.id, r.ordinal, r.text, hashlib.sha256(repr(list(r.embedding)).encode()).hexdigest())
            for r in rows]


def _chunk_texts(document_id: int) -> list[str]:
    return [text for _, _, text, _ in _chunk_snapshot(document_id)]


@dataclass
class Batch:
    kb_id: int
    outcomes: dict[str, object]
    documents: dict[str, object]
    earlier_id: int
    earlier_before: list[tuple]


@pytest.fixture(scope="module")
def batch(worker) -> Batch:
    """An earlier good document, then every case in one upload; waits until all of them are final."""
    import uuid

    from infra.database import session_scope
    from rag.library import get_or_create_kb

    with session_scope() as session:
        kb_id = get_or_create_kb(session=session, name=f"bad-input-{uuid.uuid4().hex[:8]}").id
    earlier = upload(kb_id, "earlier.pdf", make_pdf(["Lighthouse keepers logged a gale on the first night."] * 2))
    wait_for_documents([earlier.document_id])
    earlier_before = _chunk_snapshot(earlier.document_id)
    assert earlier_before

    outcomes = {name: upload(kb_id, case.filename, case.data) for name, case in _cases().items()}
    queued = {name: o.document_id for name, o in outcomes.items() if o.status == "queued"}
    final = wait_for_documents(list(queued.values()), timeout=240)
    return Batch(kb_id, outcomes, {name: final[i] for name, i in queued.items()}, earlier.document_id, earlier_before)


def _ready(batch: Batch, name: str):
    assert batch.outcomes[name].status == "queued", batch.outcomes[name]
    document = batch.documents[name]
    assert document.status == "ready", document.error
    assert document.chunk_count > 0
    return document


def _failed(batch: Batch, name: str, *fragments: str):
    assert batch.outcomes[name].status == "queued", batch.outcomes[name]
    document = batch.documents[name]
    assert document.status == "failed"
    for fragment in fragments:
        assert fragment in document.error, document.error
    assert document.chunk_count == 0 and not _chunk_texts(document.id)
    return document


def test_corrupt_pdf_fails_saying_it_is_damaged(batch):
    _failed(batch, "corrupt_pdf", "damaged or not a PDF")


def test_encrypted_pdf_with_a_password_fails_saying_so(batch):
    _failed(batch, "encrypted_pdf", "password-protected", "Remove the password")


def test_encrypted_pdf_with_an_empty_password_is_read(batch):
    document = _ready(batch, "encrypted_pdf_empty_password")
    assert any("canal gates" in t for t in _chunk_texts(document.id))


def test_zero_byte_file_is_refused_at_upload_and_not_stored(batch):
    outcome = batch.outcomes["zero_byte"]
    assert outcome.status == "rejected" and outcome.document_id is None
    assert "empty (0 bytes)" in outcome.error


def test_image_only_pdf_without_words_fails_saying_ocr_found_none(batch):
    _failed(batch, "image_only_pdf", "no text layer", "OCR found no readable text")


def test_pdf_named_txt_is_read_as_a_pdf(batch):
    document = _ready(batch, "pdf_named_txt")
    assert document.mime == "application/pdf" and document.pages == 1


def test_text_named_pdf_is_read_as_text(batch):
    document = _ready(batch, "text_named_pdf")
    assert document.mime == "text/plain"
    assert any("orchard irrigation" in t for t in _chunk_texts(document.id))


def test_file_name_with_dot_dot_keeps_only_its_last_part(batch):
    document = _ready(batch, "name_dot_dot")
    assert document.filename == "passwd.txt"


def test_file_name_with_control_characters_is_cleaned(batch):
    document = _ready(batch, "name_control_chars")
    assert document.filename == "report[31m.txt"
    assert all(ch.isprintable() for ch in document.filename)


def test_300_character_file_name_is_shortened_keeping_its_extension(batch):
    document = _ready(batch, "name_300_chars")
    assert len(document.filename.encode()) <= 255 and document.filename.endswith(".txt")
    assert document.filename.startswith("rrrr")


def test_non_latin_file_name_is_kept(batch):
    document = _ready(batch, "name_non_latin")
    assert document.filename == "报告_Отчёт_تقرير_보고서.txt"


def test_html_script_text_never_reaches_the_chunks(batch):
    document = _ready(batch, "html_with_script")
    texts = _chunk_texts(document.id)
    assert any("06:40" in t for t in texts)
    assert not any(UNIQUE_SCRIPT_TEXT in t or "document.cookie" in t or "color: red" in t for t in texts), texts


def test_nul_bytes_are_dropped(batch):
    document = _ready(batch, "nul_bytes")
    texts = _chunk_texts(document.id)
    assert not any("\x00" in t for t in texts)
    assert any("rewired in May" in t for t in texts)


def test_invalid_utf8_is_decoded_without_failing(batch):
    document = _ready(batch, "invalid_utf8")
    assert any("station" in t for t in _chunk_texts(document.id))


def test_zip_bomb_docx_is_refused_without_inflating_it(batch):
    _failed(batch, "zip_bomb_docx", "zip bomb")


def test_pdf_beyond_pypdf_default_limits_is_read_with_ours():
    """pypdf's defaults reject this PDF (an array of 150,000 elements); the limits in rag.parsing read it."""
    import io

    from pypdf import PdfReader
    from pypdf.errors import LimitReachedError

    from rag.parsing import parse

    data = bad_files.pdf_beyond_pypdf_defaults()
    with pytest.raises(LimitReachedError):
        PdfReader(io.BytesIO(data)).pages[0].extract_text()
    assert "Harbour pilots" in parse(data, "huge-array.pdf").sections[0].text


def test_pdf_beyond_pypdf_default_limits_is_ready_through_the_worker(batch):
    document = _ready(batch, "pdf_beyond_pypdf_defaults")
    assert any("Harbour pilots" in t for t in _chunk_texts(document.id))


def test_other_files_in_the_same_upload_are_unaffected(batch):
    _ready(batch, "good_neighbour")
    for name, outcome in batch.outcomes.items():  # every file got its own final answer
        assert outcome.status in ("queued", "rejected"), (name, outcome)
        if outcome.status == "queued":
            assert batch.documents[name].status in ("ready", "failed"), name


def test_nothing_stored_before_is_lost(batch):
    assert _chunk_snapshot(batch.earlier_id) == batch.earlier_before


@pytest.fixture
def small_upload_limit(monkeypatch):
    from infra.settings import get_settings

    monkeypatch.setenv("KBCHAT_MAX_UPLOAD_MB", "1")
    get_settings.cache_clear()
    yield 1
    monkeypatch.undo()
    get_settings.cache_clear()


def test_file_over_the_size_limit_is_refused_before_it_is_stored(kb, small_upload_limit):
    from sqlalchemy import func, select

    from db.models import Document, DocumentBlob
    from infra.database import session_scope

    kb_id, _ = kb
    data = b"Too big to keep. " * (80 * 1024)  # 1.3 MB
    outcome = upload(kb_id, "big.txt", data)
    assert outcome.status == "rejected" and outcome.document_id is None
    assert "the limit is 1 MB" in outcome.error
    with session_scope() as session:
        assert session.scalar(select(func.count()).select_from(Document).where(Document.kb_id == kb_id)) == 0
        assert session.scalar(select(func.count()).select_from(DocumentBlob).join(Document)
                              .where(Document.kb_id == kb_id)) == 0


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


@pytest.mark.timeout(420)
def test_2000_page_pdf_is_ready_with_bounded_memory(worker, kb):
    """A 2,000-page PDF ends ready with a chunk per page while the worker (all its processes) stays under 2.5 GB."""
    kb_id, _ = kb
    peak = [_tree_rss(worker.process.pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _tree_rss(worker.process.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.monotonic()
    try:
        outcome = upload(kb_id, "ledger-2000.pdf", bad_files.many_pages_pdf(2000))
        assert outcome.status == "queued", outcome
        document = wait_for_documents([outcome.document_id], timeout=360)[outcome.document_id]
    finally:
        done.set()
        sampler.join(timeout=5)
    assert document.status == "ready", document.error
    assert document.pages == 2000 and document.chunk_count >= 2000
    print(f"{worker.backend}: 2,000 pages in {time.monotonic() - started:.0f} s, worker peak RSS "
          f"{peak[0] / 2**20:.0f} MB")
    assert peak[0] < 2.5 * 2**30, f"worker peak RSS {peak[0] / 2**20:.0f} MB"
