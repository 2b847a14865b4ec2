"""The extractive answer (no language model): relevance threshold, quoting with [n] markers and sources,
citation labels, and the excerpt of a long passage."""

from __future__ import annotations

import re

import pytest

from db.repositories.chunks import Hit
from rag.answering import NO_ANSWER, _best_excerpt, extractive_answer
from rag.citations import citation_label


def hit(
    n: int,
    score: float,
    text: str,
    document: str = "report.pdf",
    page: int | None = 3,
    locator: str | None = "p. 3",
) -> Hit:
    return Hit(
        chunk_id=n, document_id=100 + n, document=document, page=page, locator=locator, score=score, text=text
    )


@pytest.fixture
def threshold(settings_env) -> float:
    settings_env(min_relevance=0.3)
    return 0.3


def test_nothing_relevant_gives_the_no_answer_text_and_no_citations(threshold):
    answer, pieces = extractive_answer(
        "Why did the engine fail?", [hit(1, 0.29, "Unrelated."), hit(2, 0.1, "No.")]
    )
    assert answer.mode == "extractive" and answer.citations == []
    assert "".join(pieces) == NO_ANSWER


def test_relevant_passages_are_quoted_with_markers_and_sources(threshold):
    hits = [
        hit(1, 0.81, "The engine failed because the fuel ran out."),
        hit(2, 0.30, "Weather was clear at the time.", document="notes.md", page=None, locator="lines 4-9"),
        hit(3, 0.12, "The crew had lunch."),  # below the threshold
    ]
    answer, pieces = extractive_answer("Why did the engine fail?", hits)
    text = "".join(pieces)
    assert [c["n"] for c in answer.citations] == [1, 2]
    assert [c["chunk_id"] for c in answer.citations] == [1, 2]
    assert "> The engine failed because the fuel ran out." in text
    assert "[1] *report.pdf, p. 3* (score 0.81)" in text
    assert "[2] *notes.md, lines 4-9* (score 0.30)" in text
    assert "crew had lunch" not in text
    assert text.index("fuel ran out") < text.index("[1]") < text.index("Weather") < text.index("[2]")
    assert set(re.findall(r"\[(\d+)\]", text)) == {"1", "2"}


def test_the_answer_streams_in_word_sized_pieces(threshold):
    _, pieces = extractive_answer("q", [hit(1, 0.9, "One two three four five six seven.")])
    pieces = list(pieces)
    assert len(pieces) > 7 and all(len(p) < 80 for p in pieces)


@pytest.mark.parametrize(
    "citation,label",
    [
        ({"document": "report.pdf", "page": 3, "locator": "p. 3"}, "report.pdf, p. 3"),
        ({"document": "report.pdf", "page": 7, "locator": None}, "report.pdf, p. 7"),
        ({"document": "notes.md", "page": None, "locator": "lines 4-9"}, "notes.md, lines 4-9"),
        ({"document": "notes.md", "page": None, "locator": "line 12"}, "notes.md, line 12"),
        ({"document": "table.csv", "page": None, "locator": None}, "table.csv"),
    ],
)
def test_citation_label(citation: dict, label: str):
    assert citation_label(citation) == label
    as_hit = hit(
        1, 0.5, "t", document=citation["document"], page=citation["page"], locator=citation["locator"]
    )
    assert citation_label(as_hit) == label


FILLER = [f"Filler sentence number {i} talks about unrelated weather patterns." for i in range(40)]
KEY = "The propeller blade fractured because of metal fatigue near the hub."


def test_a_long_passage_is_cut_around_the_sentence_that_answers():
    text = " ".join(FILLER + [KEY] + FILLER)
    excerpt = _best_excerpt("Why did the propeller blade fracture at the hub?", text)
    assert KEY in excerpt
    assert len(excerpt) <= 600 + len("… ") + len(" …")
    assert excerpt.startswith("… ") and excerpt.endswith(" …")
    assert excerpt[2:-2] in text


def test_an_excerpt_at_the_start_has_no_leading_ellipsis():
    text = " ".join([KEY] + FILLER)
    excerpt = _best_excerpt("propeller blade fatigue", text)
    assert excerpt.startswith(KEY) and excerpt.endswith(" …")


def test_an_excerpt_at_the_end_has_no_trailing_ellipsis():
    text = " ".join(FILLER + [KEY])
    excerpt = _best_excerpt("propeller blade fatigue", text)
    assert excerpt.startswith("… ") and excerpt.endswith(KEY)


def test_one_enormous_sentence_is_cut_between_words():
    words = [f"token{i}" for i in range(400)]
    excerpt = _best_excerpt("anything", " ".join(words))
    assert len(excerpt) <= 600 + 2
    assert excerpt.endswith(" …")
    assert all(w in words for w in excerpt[:-2].split())


def test_a_short_passage_is_quoted_whole_with_whitespace_normalised():
    assert _best_excerpt("q", "  The engine\n failed.\t Twice. ") == "The engine failed. Twice."
