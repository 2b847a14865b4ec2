"""The full-text query builder, the fusion of the two halves and the document context header (pure logic)."""

from __future__ import annotations

import threading
import time

import pytest

from db.repositories.chunks import Candidate, Hit
from rag import query
from rag.context import clean_title, document_date, file_label, header
from rag.query import Term, build, content_words
from rag.retrieval import _alongside, _helper_pool, fuse, with_page_evidence

# --- the query builder -------------------------------------------------------------------------------------


def test_filler_words_of_a_question_are_dropped_and_content_words_kept():
    kept = content_words("Please explain, based on the report: what drove Acme's 2023 margin? Answer briefly.")
    words = kept.lower().split()
    for filler in ("please", "explain", "based", "what", "answer"):
        assert filler not in words
    for content in ("drove", "acme's", "2023", "margin", "report"):
        assert content in " ".join(words)


def test_instructions_on_the_answers_form_are_dropped():
    kept = content_words("What was the gross margin of Acme in FY2022? Round to two decimal places, in units of "
                         "millions, from the perspective of an analyst.").lower().split()
    for filler in ("round", "decimal", "places", "units", "perspective"):
        assert filler not in kept
    for content in ("gross", "margin", "acme", "fy2022", "2022", "two", "millions", "analyst."):
        assert content in kept


def test_any_word_matches_rarest_first_and_every_word_weighs_by_rarity():
    terms = [Term("compani", (1,), 900), Term("acm", (2,), 12), Term("margin", (3,), 150), Term("absent", (4,), 0)]
    built = build(terms, total_chunks=1000, rank_limit=2000)
    assert built is not None
    # An OR query: any of the words present finds a candidate; a word in no chunk is left out.
    assert built.match.split(" | ")[0] == "'acm'"
    assert "'absent'" not in built.match and "&" not in built.match
    weights = dict(built.weighted)
    assert weights["'acm'"] > weights["'margin'"] > weights["'compani'"] > 0


def test_common_words_do_not_flood_the_candidates_but_still_score():
    terms = [Term("rare", (1,), 5), Term("common", (2,), 5000), Term("medium", (3,), 300)]
    built = build(terms, total_chunks=20000, rank_limit=1000)
    assert built.match == "'rare' | 'medium'"  # 5 + 300 chunks fit in the limit; 5000 more would not
    assert "'common'" in dict(built.weighted)


def test_the_rarest_word_is_always_a_candidate_source_even_past_the_limit():
    built = build([Term("everywhere", (1,), 50_000)], total_chunks=60_000, rank_limit=100)
    assert built.match == "'everywhere'"


def test_adjacent_question_words_also_count_as_a_phrase():
    terms = [Term("cash", (4,), 200), Term("flow", (5,), 150), Term("capit", (1,), 80)]
    built = build(terms, total_chunks=10_000, rank_limit=2000)
    phrases = [q for q, _ in built.weighted if "<->" in q]
    assert phrases == ["'cash' <-> 'flow'"]  # capit (1) is not next to cash (4)
    assert built.total == pytest.approx(sum(w for _, w in built.weighted))


def test_no_query_when_no_word_occurs_in_the_base():
    assert build([Term("nowhere", (1,), 0)], total_chunks=100, rank_limit=10) is None
    assert build([], total_chunks=100, rank_limit=10) is None


def test_lexemes_are_quoted_so_they_cannot_inject_operators():
    built = build([Term("o'neil|x", (1,), 3)], total_chunks=10, rank_limit=10)
    assert built.match == "'o''neil|x'"


def test_idf_falls_with_frequency():
    assert query.idf(1, 1000) > query.idf(100, 1000) > query.idf(999, 1000) > 0


# --- fusion ------------------------------------------------------------------------------------------------


def _candidate(chunk_id: int, cosine: float, vector_rank: int | None, text_score: float | None) -> Candidate:
    hit = Hit(chunk_id=chunk_id, document_id=1, document="d.pdf", page=chunk_id, locator=None, score=cosine,
              text=f"chunk {chunk_id}", ordinal=chunk_id, vector_rank=vector_rank)
    return Candidate(hit=hit, vector_rank=vector_rank, text_score=text_score or 0.0, text_listed=text_score is not None)


def test_a_weak_full_text_list_cannot_displace_the_vector_top_hits():
    vector = [_candidate(i, 0.80 - 0.02 * i, i, None) for i in range(1, 6)]
    # Full-text found five other chunks, each holding only a common word: a small share of the question's weight.
    weak = [_candidate(100 + i, 0.45, None, 0.4) for i in range(5)]
    fused = fuse(vector + weak, text_total=20.0, text_weight=0.8)
    assert [h.chunk_id for h in fused[:5]] == [1, 2, 3, 4, 5]


def test_a_passage_holding_the_questions_rare_words_rises():
    vector = [_candidate(i, 0.70 - 0.01 * i, i, None) for i in range(1, 6)]
    exact = _candidate(42, 0.62, None, 18.0)  # holds 90 % of the question's word weight
    fused = fuse([*vector, exact], text_total=20.0, text_weight=0.8)
    assert fused[0].chunk_id == 42
    assert fused[0].text_rank == 1 and fused[0].vector_rank is None


def test_every_candidate_is_scored_by_both_halves():
    # The vector half's best passage holds the question's words too, though full-text listed others first.
    best = Candidate(hit=_candidate(1, 0.70, 1, None).hit, vector_rank=1, text_score=8.0, text_listed=False)
    listed = _candidate(2, 0.60, None, 9.0)
    fused = fuse([best, listed], text_total=10.0, text_weight=0.8)
    assert [h.chunk_id for h in fused] == [1, 2]  # 0.70 + 0.24 beats 0.60 + 0.27


def test_fusion_modes_use_one_half_alone():
    both = [_candidate(1, 0.9, 1, None), _candidate(2, 0.5, None, 5.0), _candidate(3, 0.6, 2, 9.0)]
    assert [h.chunk_id for h in fuse(both, text_total=10.0, text_weight=0.0)] == [1, 3]
    assert [h.chunk_id for h in fuse(both, text_total=10.0, text_weight=None)] == [3, 2]


def test_the_question_vector_is_the_mean_of_the_asked_and_the_content_word_forms(monkeypatch):
    import numpy as np

    from rag import retrieval

    calls: list[list[str]] = []
    axis = {"What is the lamp oil? Please explain.": [1.0, 0.0], "is the lamp oil": [0.0, 1.0]}

    def fake_embed(texts, threads=None):
        calls.append(list(texts))
        return np.array([axis.get(t, [0.6, 0.8]) for t in texts], dtype=np.float32)

    monkeypatch.setattr(retrieval.embedding, "embed", fake_embed)
    assert content_words("What is the lamp oil? Please explain.") == "is the lamp oil"
    vector = retrieval.embed_question("What is the lamp oil? Please explain.")
    assert calls == [["What is the lamp oil? Please explain.", "is the lamp oil"]]  # one model call
    assert np.allclose(vector, [0.7071068, 0.7071068])  # the normalised mean of both forms
    assert np.linalg.norm(vector) == pytest.approx(1.0)
    calls.clear()
    assert np.allclose(retrieval.embed_question("lamp oil"), [0.6, 0.8]) and calls == [["lamp oil"]]


def _page_hit(chunk_id: int, page: int, fused: float) -> Hit:
    return Hit(chunk_id=chunk_id, document_id=1, document="d.pdf", page=page, locator=None, score=fused,
               text=f"chunk {chunk_id}", ordinal=chunk_id, fused=fused)


def test_a_page_whose_chunks_hold_the_questions_words_together_rises():
    question = query.FullTextQuery(match="'a' | 'b'", weighted=(("'a'", 6.0), ("'b'", 4.0)), total=10.0)
    hits = [_page_hit(1, page=7, fused=0.60), _page_hit(2, page=3, fused=0.55)]
    # No chunk of page 3 holds both words, but its chunks together do; page 7's hold only the weaker one.
    matched = {(1, 3): frozenset({0, 1}), (1, 7): frozenset({1})}
    ranked = with_page_evidence(hits, matched, question, weight=0.2)
    assert [h.chunk_id for h in ranked] == [2, 1]
    assert ranked[0].fused == pytest.approx(0.55 + 0.2 * 1.0) and ranked[1].fused == pytest.approx(0.60 + 0.2 * 0.4)


def test_page_evidence_off_or_without_pages_keeps_the_order():
    question = query.FullTextQuery(match="'a'", weighted=(("'a'", 1.0),), total=1.0)
    hits = [_page_hit(1, page=1, fused=0.6), _page_hit(2, page=2, fused=0.5)]
    assert with_page_evidence(hits, {(1, 2): frozenset({0})}, question, weight=0.0) == hits
    assert [h.chunk_id for h in with_page_evidence(hits, {}, question, weight=0.5)] == [1, 2]


# --- the context header ------------------------------------------------------------------------------------


def test_header_names_title_file_and_the_date_the_first_pages_give():
    pages = ["Annual report of Acme Corp. Printed 3 March 2024.", "For the fiscal year ended December 31, 2023 …"]
    assert header(title="Acme Annual Report", filename="acme_2023-annual.pdf", first_pages=pages) == (
        "Acme Annual Report · acme 2023 annual · December 31, 2023"
    )


def test_header_leaves_out_what_repeats_and_what_names_nothing():
    assert header(title="0001018724-18-000005", filename="Protocol_v3.pdf", first_pages=[]) == "Protocol v3"
    assert header(title="protocol v3", filename="Protocol_v3.pdf", first_pages=[]) == "protocol v3"
    assert header(title=None, filename="", first_pages=[]) is None


def test_title_cleaning_and_file_labels():
    assert clean_title("Microsoft Word - Services Agreement FINAL") == "Services Agreement FINAL"
    assert clean_title("  ") is None
    assert file_label("ACME_2023Q2_10Q.pdf") == "ACME 2023 Q2 10Q"
    assert file_label("contract-v2.final.docx") == "contract v2 final"


def test_date_prefers_a_cued_date_and_falls_back_to_the_first():
    assert document_date(["Printed 2024-01-05. Version date: 12 May 2023"]) == "12 May 2023"
    assert document_date(["Signed on 07/01/2022 in Oslo"]) == "07/01/2022"
    assert document_date(["no date at all"]) is None


def test_pdf_pages_get_the_heading_they_sit_under_without_running_headers():
    running = "Acme Corp Annual Report"
    pages = [
        f"{running}\nConsolidated Statement of Cash Flows\n(Millions) 2023 2022\nNet income 5,363 4,869",
        f"{running}\nNotes to the Financial Statements\nNOTE 1. Significant Accounting Policies\nAll subsidiaries are consolidated.",
        f"{running}\nmarketable securities are recorded at fair value, as the policy says.\nMore text here.",
        f"{running}\nRisk Factors\nThe company faces competition.",
        f"{running}\nthe end of the report.",
    ]
    from rag.context import page_headings

    assert page_headings(pages) == [
        "Consolidated Statement of Cash Flows",
        "Notes to the Financial Statements > NOTE 1. Significant Accounting Policies",
        "Notes to the Financial Statements > NOTE 1. Significant Accounting Policies",  # continues
        "Risk Factors",
        "Risk Factors",
    ]


def test_a_sentence_is_not_a_heading():
    from rag.context import page_headings

    assert page_headings(["The pilot reported engine trouble.\nit was raining"]) == [None]


# --- the full-text half alongside the question's embedding ------------------------------------------------


def test_the_database_side_runs_on_a_helper_while_the_model_runs_here():
    here = threading.get_ident()
    seen: dict[str, int] = {}
    both = threading.Barrier(2, timeout=5)  # each side waits for the other: they overlap or this fails

    def database() -> str:
        seen["database"] = threading.get_ident()
        both.wait()
        return "rows"

    def model() -> str:
        seen["model"] = threading.get_ident()
        both.wait()
        return "vector"

    assert _alongside(database, model) == ("rows", "vector")
    assert seen["model"] == here and seen["database"] != here


def test_a_model_error_waits_for_the_database_side_to_finish():
    started, finished = threading.Event(), threading.Event()

    def database() -> None:
        started.set()
        time.sleep(0.2)
        finished.set()

    def model() -> None:
        assert started.wait(5)
        raise RuntimeError("the model failed")

    with pytest.raises(RuntimeError, match="the model failed"):
        _alongside(database, model)
    assert finished.is_set()  # the session was not handed back while the helper still used it


def test_with_every_helper_busy_the_database_side_runs_here_after_the_model():
    release = threading.Event()
    pool = _helper_pool()
    blockers = [pool.submit(release.wait, 10) for _ in range(pool._max_workers)]
    try:
        order: list[tuple[str, int]] = []
        result = _alongside(lambda: order.append(("database", threading.get_ident())) or "rows",
                            lambda: order.append(("model", threading.get_ident())) or "vector")
        assert result == ("rows", "vector")
        assert order == [("model", threading.get_ident()), ("database", threading.get_ident())]
    finally:
        release.set()
        for blocker in blockers:
            blocker.result(timeout=10)
