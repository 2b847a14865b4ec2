"""``python -m kbchat.cli`` as a person runs it, against the real services (and real workers where it needs them).

The CLI process finds the services through KBCHAT_DATABASE_URL / KBCHAT_REDIS_URL, which the ``services``
fixture exports; the ``backend`` fixture exports KBCHAT_TASK_BACKEND, so ingest and ask go through that backend.
"""

from __future__ import annotations

import io
import json
import re
import socket
import uuid

import pytest

from tests.conftest import DEMO, run_cli

pytestmark = pytest.mark.integration

CLOSED_DB = "postgresql+psycopg://postgres@127.0.0.1:1/none"
CLOSED_REDIS = "redis://127.0.0.1:1/0"
SYSTEM_PG = "postgresql://postgres@127.0.0.1:5432/postgres"
INGEST_ROW_KEYS = {"file", "document_id", "status", "pages", "chunks", "duplicate_of", "error"}


def _demo_pdf():
    return sorted(DEMO.glob("*.pdf"))[0]


def _pdf_pages(path) -> int:
    from pypdf import PdfReader

    return len(PdfReader(io.BytesIO(path.read_bytes())).pages)


def _json(proc) -> object:
    assert proc.stdout.strip(), f"no output; rc={proc.returncode}\nstderr:\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def _one_line_error(proc, *needles: str) -> str:
    """Exit code 2 and exactly one line on stderr (no traceback) that contains every needle."""
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert len(lines) == 1, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = lines[0]
    assert line.startswith("kbchat: ")
    for needle in needles:
        assert needle in line, (needle, line)
    return line


@pytest.fixture(scope="module")
def ingested(worker):
    """The demo PDF ingested through the CLI into a new knowledge base (once per backend)."""
    name = f"cli-{uuid.uuid4().hex[:8]}"
    pdf = _demo_pdf()
    proc = run_cli("ingest", str(pdf), "--kb", name, "--wait", "--json", "--timeout", "120")
    return name, pdf, proc


# --- ingest -------------------------------------------------------------------------------------------


def test_ingest_wait_json_reports_the_ready_document(ingested):
    from db.repositories import chunks as chunk_repo
    from db.repositories import documents as document_repo
    from infra.database import session_scope

    name, pdf, proc = ingested
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = _json(proc)
    assert isinstance(rows, list) and len(rows) == 1
    row = rows[0]
    assert INGEST_ROW_KEYS <= set(row), sorted(INGEST_ROW_KEYS - set(row))
    assert row["file"] == pdf.name
    assert row["status"] == "ready"
    assert row["pages"] == _pdf_pages(pdf)
    assert row["chunks"] > 0
    assert row["duplicate_of"] is None and row["error"] is None
    with session_scope() as session:
        document = document_repo.get(session=session, document_id=row["document_id"])
        assert document.status == "ready" and document.filename == pdf.name
        assert chunk_repo.count_for_document(session=session, document_id=document.id) == row["chunks"]


def test_ingest_the_same_file_again_is_a_duplicate(ingested):
    name, pdf, first = ingested
    first_id = _json(first)[0]["document_id"]
    proc = run_cli("ingest", str(pdf), "--kb", name, "--wait", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    [row] = _json(proc)
    assert row["status"] == "duplicate"
    assert row["duplicate_of"] == first_id and row["document_id"] == first_id
    assert pdf.name in row["error"]


def test_ingest_bad_files_exit_1_with_the_reason(worker, tmp_path):
    name = f"cli-bad-{uuid.uuid4().hex[:8]}"  # its own base: the search and ask tests expect only the demo PDF
    broken = tmp_path / "broken.pdf"
    broken.write_bytes(b"%PDF-1.4 garbage")
    empty = tmp_path / "empty.txt"
    empty.write_bytes(b"")
    good = tmp_path / "good.txt"
    good.write_text(f"Harbour log {uuid.uuid4().hex}: the north pier light was repaired.\n")

    proc = run_cli("ingest", str(broken), str(empty), str(good), "--kb", name, "--wait", "--json")
    assert proc.returncode == 1, proc.stderr[-3000:]
    rows = {row["file"]: row for row in _json(proc)}
    assert rows["broken.pdf"]["status"] == "failed" and "damaged" in rows["broken.pdf"]["error"]
    assert rows["empty.txt"]["status"] == "rejected" and "empty" in rows["empty.txt"]["error"]
    assert rows["empty.txt"]["document_id"] is None
    assert rows["good.txt"]["status"] == "ready" and rows["good.txt"]["error"] is None

    # The plain (non-JSON) summary names the file and the reason too.
    other = tmp_path / "other-empty.md"
    other.write_bytes(b"")
    proc = run_cli("ingest", str(other), "--kb", name)
    assert proc.returncode == 1
    assert "rejected" in proc.stdout and "other-empty.md" in proc.stdout and "empty" in proc.stdout


# --- search and ask -----------------------------------------------------------------------------------


def test_search_json_returns_ranked_hits_with_pages(ingested):
    from db.models import Chunk
    from infra.database import session_scope

    name, pdf, first = ingested
    row = _json(first)[0]
    proc = run_cli("search", "probable cause of the accident", "--kb", name, "-k", "3", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _json(proc)
    hits = data["hits"]
    assert 1 <= len(hits) <= 3
    for hit in hits:
        assert {"document", "page", "score", "text", "chunk_id", "document_id", "locator"} <= set(hit)
        assert hit["document"] == pdf.name and hit["document_id"] == row["document_id"]
        assert 1 <= hit["page"] <= row["pages"]
        assert hit["text"].strip()
        with session_scope() as session:
            chunk = session.get(Chunk, hit["chunk_id"])
            assert chunk is not None and chunk.document_id == row["document_id"] and chunk.page == hit["page"]
    assert len({h["chunk_id"] for h in hits}) == len(hits)
    assert all(0 < h["score"] <= 1 for h in hits)  # cosine similarity (hits are ordered by fused rank)
    assert "probable cause" in " ".join(h["text"].lower() for h in hits)


def test_ask_json_answers_with_citations(ingested):
    name, pdf, first = ingested
    row = _json(first)[0]
    proc = run_cli("ask", "What was the probable cause of the accident?", "--kb", name, "--json", "--timeout", "60")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = _json(proc)
    assert {"answer", "mode", "citations", "timings"} <= set(data)
    assert data["mode"] == "extractive"
    assert data["citations"], data
    for citation in data["citations"]:
        assert {"document", "page", "chunk_id", "score", "text"} <= set(citation)
        assert citation["document"] == pdf.name
        assert 1 <= citation["page"] <= row["pages"]
        assert isinstance(citation["chunk_id"], int) and citation["score"] > 0 and citation["text"].strip()
    cited = {int(n) for n in re.findall(r"\[(\d+)\]", data["answer"])}
    assert cited and cited <= {c["n"] for c in data["citations"]} and pdf.name in data["answer"]
    assert {"retrieval_ms", "first_token_ms", "total_ms", "end_to_end_ms"} <= set(data["timings"])
    assert data["timings"]["end_to_end_ms"] >= data["timings"]["total_ms"] >= 0


@pytest.mark.parametrize("command", [["search", "anything"], ["ask", "anything"]], ids=["search", "ask"])
def test_unknown_kb_exits_2_naming_it(services, command):
    missing = f"no-such-kb-{uuid.uuid4().hex[:6]}"
    proc = run_cli(*command, "--kb", missing, "--json")
    _one_line_error(proc, missing, "no knowledge base")
    assert proc.stdout == ""


# --- services that do not answer ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [["migrate"], ["healthcheck"], ["search", "x", "--kb", "any"], ["ask", "x", "--kb", "any"],
     ["ingest", "README.md", "--kb", "any"]],
    ids=lambda c: c[0],
)
def test_database_on_a_closed_port_is_one_plain_line(services, command):
    proc = run_cli(*command, env={"KBCHAT_DATABASE_URL": CLOSED_DB}, timeout=60)
    _one_line_error(proc, "127.0.0.1:1", "does not answer", "KBCHAT_DATABASE_URL")


def test_database_without_pgvector_says_so(services):
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=2):
            pass
    except OSError:
        pytest.skip("no PostgreSQL answers on 127.0.0.1:5432 (the system PostgreSQL without pgvector)")
    import psycopg

    try:
        with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", connect_timeout=3) as conn:
            has_vector = conn.execute("select 1 from pg_available_extensions where name = 'vector'").fetchone()
    except psycopg.Error as exc:
        pytest.skip(f"the PostgreSQL on 127.0.0.1:5432 does not let postgres in without a password ({exc})")
    if has_vector:
        pytest.skip("the PostgreSQL on 127.0.0.1:5432 has pgvector, so it cannot show the missing-extension message")

    proc = run_cli("migrate", env={"KBCHAT_DATABASE_URL": SYSTEM_PG}, timeout=60)
    _one_line_error(proc, "127.0.0.1:5432", "pgvector", "unset KBCHAT_DATABASE_URL")


@pytest.mark.parametrize(
    "command",
    [["healthcheck"], ["ingest", "README.md", "--kb", "{kb}"], ["ask", "x", "--kb", "{kb}"],
     ["worker", "--queues", "chat"], ["scheduler"]],
    ids=lambda c: c[0],
)
def test_redis_on_a_closed_port_is_one_plain_line(kb, command):
    _, kb_name = kb  # an existing base: the command gets past its knowledge-base lookup
    proc = run_cli(*(part.format(kb=kb_name) for part in command), env={"KBCHAT_REDIS_URL": CLOSED_REDIS},
                   timeout=60)
    _one_line_error(proc, "Redis at redis://127.0.0.1:1/0", "does not answer", "KBCHAT_REDIS_URL")
