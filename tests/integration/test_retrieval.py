"""Retrieval through the real pipeline: the document context header tells near-identical documents apart, a base
built by an older chunk recipe is re-indexed once, and the golden-question evaluation reports what it should."""

from __future__ import annotations

import json

import pytest
from sqlalchemy import text

from tests.conftest import OPERATOR, make_pdf, run_cli, upload, wait_for_documents

pytestmark = pytest.mark.integration

BODY = (
    "The dredging programme deepened the outer channel to fourteen metres. Pilots reported fewer groundings, "
    "and the tug fleet was renewed with two hybrid vessels. Cargo volumes rose at the container terminal."
)


def _report(year: int) -> bytes:
    # Three reports whose text is the same word for word: only the title says which year each is.
    return f"# Harbour Authority Annual Report {year}\n\n{BODY}\n".encode()


@pytest.fixture
def reports(kb, worker) -> dict[str, int]:
    kb_id, _ = kb
    ids = {}
    for name, year in (("report-a.md", 2021), ("report-b.md", 2022), ("report-c.md", 2023)):
        ids[name] = upload(kb_id, name, _report(year)).document_id
    documents = wait_for_documents(list(ids.values()))
    assert all(d.status == "ready" for d in documents.values()), [d.error for d in documents.values()]
    return ids


def test_a_question_naming_a_documents_title_finds_it_among_identical_ones(kb, reports):
    from infra.database import session_scope
    from rag.retrieval import search

    kb_id, _ = kb
    for year, expected in ((2022, "report-b.md"), (2023, "report-c.md"), (2021, "report-a.md")):
        with session_scope() as session:
            hits = search(session=session, kb_id=kb_id, k=3,
                          question=f"What did the Harbour Authority annual report {year} say about dredging?")
        assert hits and hits[0].document == expected, [(h.document, h.fused) for h in hits]
        assert "dredging" in hits[0].text and " · " not in hits[0].text  # the reader sees the passage, no header


def test_an_outdated_chunk_recipe_is_reindexed_once(kb, reports):
    from infra.database import session_scope
    from rag.context import CHUNK_RECIPE
    from tasks.backend import get_backend
    from usecases.upkeep import check_consistency

    kb_id, _ = kb
    ids = sorted(reports.values())
    with session_scope() as session:  # as a base built before document context existed looks
        session.execute(text("UPDATE knowledge_bases SET chunk_recipe = 1 WHERE id = :kb"), {"kb": kb_id})
        session.execute(text("UPDATE documents SET context = NULL WHERE kb_id = :kb"), {"kb": kb_id})
        before = dict(session.execute(text("SELECT id, task_id FROM documents WHERE kb_id = :kb"), {"kb": kb_id}).all())

    report = check_consistency(get_backend(), OPERATOR, kb_id=kb_id, fix=True)
    assert report["counts"].get("recipe_outdated") == 1, report
    documents = wait_for_documents(ids)
    assert all(d.status == "ready" for d in documents.values())
    with session_scope() as session:
        recipe = session.scalar(text("SELECT chunk_recipe FROM knowledge_bases WHERE id = :kb"), {"kb": kb_id})
        rows = session.execute(text("SELECT id, task_id, context FROM documents WHERE kb_id = :kb"), {"kb": kb_id}).all()
        lexemes = session.scalar(text("SELECT count(DISTINCT document_id) FROM document_lexemes WHERE kb_id = :kb"),
                                 {"kb": kb_id})
    assert recipe == CHUNK_RECIPE
    assert all(row.task_id != before[row.id] for row in rows), "every document was re-queued"
    assert all("Harbour Authority Annual Report" in (row.context or "") for row in rows)
    assert lexemes == len(ids)

    again = check_consistency(get_backend(), OPERATOR, kb_id=kb_id, fix=True)
    assert "recipe_outdated" not in again["counts"], again
    with session_scope() as session:
        after = dict(session.execute(text("SELECT id, task_id FROM documents WHERE kb_id = :kb"), {"kb": kb_id}).all())
    assert after == {row.id: row.task_id for row in rows}, "re-indexed once, not again"


LIGHTHOUSE = [
    "The lighthouse lens was ground from crown glass in Paris and floats in a bath of mercury.",
    "Two keepers lived in the tower and took turns trimming the wicks of the lamp every four hours at night.",
    "In fog the keepers sounded the diaphone foghorn every thirty seconds until the fog lifted.",
]
GLACIER = [
    "Survey teams mapped the retreat of the glacier tongue with stakes and a theodolite each summer.",
    "The ice cores were drilled with a thermal drill to a depth of eighty metres and kept frozen for the lab.",
]


@pytest.fixture
def two_pdfs(kb, worker) -> str:
    kb_id, name = kb
    ids = [upload(kb_id, "lighthouse.pdf", make_pdf(LIGHTHOUSE)).document_id,
           upload(kb_id, "glacier.pdf", make_pdf(GLACIER)).document_id]
    assert all(d.status == "ready" for d in wait_for_documents(ids).values())
    return name


def test_golden_questions_report_document_and_page_hits_and_what_came_instead(two_pdfs, tmp_path):
    questions = tmp_path / "golden.csv"
    questions.write_text(
        "question,document,page\n"
        "Who trimmed the wicks of the lamp at night?,lighthouse.pdf,2\n"
        "How deep were the ice cores drilled?,GLACIER,2\n"
        "How often was the foghorn sounded in fog?,lighthouse,3\n"
        "How deep were the ice cores drilled with the thermal drill?,lighthouse.pdf,\n"  # deliberately wrong
    )
    result = run_cli("eval", "--kb", two_pdfs, "--questions", str(questions), "--json")
    assert result.returncode == 0, result.stderr
    run = json.loads(result.stdout)
    assert run["questions"] == 4 and run["question_mode"] == "golden"
    assert run["hit_at_1"] == pytest.approx(0.75) and run["hit_at_10"] == pytest.approx(1.0)
    assert run["page_hit_at_1"] == pytest.approx(1.0)  # over the three questions that give a page
    by_line = {d["line"]: d for d in run["details"]}
    assert [by_line[n]["page_rank"] for n in (2, 3, 4)] == [1, 1, 1]
    wrong = by_line[5]
    assert wrong["rank"] > 1 and wrong["page_rank"] is None and wrong["top"][0]["document"] == "glacier.pdf"

    again = run_cli("eval", "--kb", two_pdfs, "--questions", str(questions))  # the table a person reads
    assert again.returncode == 0, again.stderr
    assert "document hit@1 0.75" in again.stdout and "page     hit@1 1.00" in again.stdout
    assert "glacier.pdf" in again.stdout.split("retrieved instead", 1)[1]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "The file is empty"),
        ("question,doc\nWhere?,lighthouse.pdf\n", "Line 1: the header row must name the columns question and document"),
        ("question,document\nWhere is the lens?,lighthouse.pdf\nWhere?,atlas.pdf\n",
         "Line 3: the knowledge base has no document called 'atlas.pdf'"),
        ("question,document,page\nWhere?,lighthouse.pdf,two\n", "Line 2: the page must be a number"),
        ('{"question": "Where?", "document": "glacier.pdf"}\n{"question": "", "document": "glacier.pdf"}\n',
         "Line 2: the question is missing"),
    ],
)
def test_a_bad_question_file_is_refused_with_the_line_to_fix(kb, tmp_path, content, message):
    from infra.database import session_scope
    from rag.library import store_upload

    kb_id, name = kb
    with session_scope() as session:  # names to resolve against; nothing needs to be ingested
        for filename, pages in (("lighthouse.pdf", LIGHTHOUSE), ("glacier.pdf", GLACIER)):
            store_upload(session=session, kb_id=kb_id, filename=filename, data=make_pdf(pages))

    path = tmp_path / ("golden.jsonl" if content.startswith("{") else "golden.csv")
    path.write_text(content)
    with session_scope() as session:
        runs_before = session.scalar(text("SELECT count(*) FROM eval_runs"))
    result = run_cli("eval", "--kb", name, "--questions", str(path))
    assert result.returncode == 2 and message in result.stderr, result.stderr
    with session_scope() as session:
        assert session.scalar(text("SELECT count(*) FROM eval_runs")) == runs_before  # nothing recorded


def test_page_evidence_names_the_question_words_each_page_holds(kb, two_pdfs):
    from db.repositories import chunks as chunk_repo
    from infra.database import session_scope
    from rag.retrieval import embed_question, full_text_query, fuse, with_page_evidence

    kb_id, _ = kb
    words = "foghorn wicks glacier"
    with session_scope() as session:
        question = full_text_query(session=session, kb_id=kb_id, question=words)
        assert question is not None
        lexemes = [q for q, _ in question.weighted]

        def candidates(keep: int | None) -> list:
            evidence = chunk_repo.PageEvidence(keep=keep, text_weight=0.8, text_total=question.total,
                                               weight=0.1) if keep else None
            return chunk_repo.hybrid_candidates(
                session=session, kb_id=kb_id, embedding=embed_question(words), text_hits=[],
                weighted=question.weighted, candidates=40, page_evidence=evidence,
            )

        every, first, without = candidates(100), candidates(1), candidates(None)
    named = {c.hit.page: {lexemes[i].strip("'") for i in c.page_matched}
             for c in every if c.hit.document == "lighthouse.pdf"}
    assert {1, 2, 3} <= set(named)  # every page of the small document is a vector candidate
    assert {page: words for page, words in named.items() if page in (1, 2, 3)} == \
        {1: set(), 2: {"wick"}, 3: {"foghorn"}}  # page 1 holds none of them
    assert all(not c.page_matched for c in without)

    # Only the candidates the evidence could lift into the first `keep` get it, and the ranking of those is the
    # same as with evidence for all.
    def ranked(found: list) -> list[int]:
        matched = {(c.hit.document_id, c.hit.page): c.page_matched for c in found if c.page_matched}
        return [h.chunk_id for h in with_page_evidence(fuse(found, text_total=question.total, text_weight=0.8),
                                                       matched, question, 0.1)]

    assert sum(1 for c in first if c.page_matched) < sum(1 for c in every if c.page_matched)
    assert ranked(first)[:1] == ranked(every)[:1]


def test_the_vector_half_scans_the_index_for_a_large_base_and_the_chunks_exactly_for_a_small_one(
    kb, two_pdfs, monkeypatch
):
    from db.repositories import chunks as chunk_repo
    from infra.database import session_scope
    from rag.retrieval import search

    kb_id, _ = kb
    question = "What does the lighthouse keeper trim before the foghorn sounds?"
    plans: list[str] = []
    execute = chunk_repo.Session.execute

    def explained(self, statement, params=None, *args, **kwargs):  # the plan of the statement hybrid search runs
        if getattr(statement, "text", "").lstrip().startswith("WITH vector_hits"):
            plan = execute(self, text("EXPLAIN " + statement.text).bindparams(chunk_repo.EMBEDDING), params)
            plans.append("\n".join(plan.scalars()))
        return execute(self, statement, params, *args, **kwargs)

    def ranked(**limits) -> tuple[chunk_repo.Scope, list[int]]:
        for name, value in limits.items():
            monkeypatch.setattr(chunk_repo, name, value)
        with session_scope() as session:
            scope = chunk_repo.set_search_options(session, 300, kb_id=kb_id)
            seqscan = session.scalar(text("SELECT current_setting('enable_seqscan')"))
        assert seqscan == ("off" if scope.approximate else "on")
        monkeypatch.setattr(chunk_repo.Session, "execute", explained)
        try:
            with session_scope() as session:
                hits = search(session=session, kb_id=kb_id, question=question, k=5)
        finally:
            monkeypatch.setattr(chunk_repo.Session, "execute", execute)
        return scope, [h.chunk_id for h in hits]

    small, exact = ranked()  # a few chunks: an exact scan
    assert small.searched > 0 and not small.approximate
    assert "hnsw" not in plans[-1]
    large, approximate = ranked(EXACT_MAX_CHUNKS=1, HNSW_MIN_SHARE=0.0)  # as if the base were large
    assert large.approximate and large.searched == small.searched
    assert "ix_chunks_embedding_hnsw" in plans[-1]
    assert approximate == exact  # every chunk of a small base is within the index scan's reach
    with session_scope() as session:  # too small a share of the table for the index (no share is above 1): exact
        monkeypatch.setattr(chunk_repo, "HNSW_MIN_SHARE", 1.5)
        assert not chunk_repo.set_search_options(session, 300, kb_id=kb_id).approximate


def test_the_full_text_index_takes_new_chunks_without_a_pending_list(kb, two_pdfs):
    # A pending list is read in full by every full-text search until it is merged: after a batch of uploads each
    # search paid for it (migration 0011). New chunks go straight into the index.
    from infra.database import session_scope

    with session_scope() as session:
        options = session.scalar(text("SELECT reloptions FROM pg_class WHERE relname = 'ix_chunks_tsv'"))
        session.execute(text("CREATE EXTENSION IF NOT EXISTS pgstattuple"))  # shipped with the embedded server
        pending = session.execute(text("SELECT pending_pages, pending_tuples FROM pgstatginindex('ix_chunks_tsv')")).one()
        chunks = session.scalar(text("SELECT count(*) FROM chunks WHERE kb_id = :kb"), {"kb": kb[0]})
    assert "fastupdate=off" in (options or [])
    assert chunks > 0 and tuple(pending) == (0, 0)  # the two documents' words were not left waiting
