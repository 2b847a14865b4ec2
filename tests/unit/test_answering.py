"""The extractive answer (no language model): relevance threshold, the sentences it leads with (scored by the
embedder) with [n] markers and sources, citation labels, and the excerpt of a long passage."""

from __future__ import annotations

import re

import numpy as np
import pytest

from db.repositories.chunks import Hit
from rag.answering import NO_ANSWER, extractive_answer
from rag.citations import citation_label
from rag.extractive import LEAD_IN, NOTHING_DIRECT, best_sentences, is_prose, split_sentences
from rag.extractive import best_excerpt as _best_excerpt


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


ENGINE = (
    "The flight departed at noon. The engine failed because the fuel ran out over the lake. "
    "The pilot landed in a field."
)


def test_the_answer_leads_with_the_sentence_that_answers_and_folds_the_passages(threshold, settings_env):
    settings_env(min_relevance=0.3, embedding_backend="torch")  # the packaged model as is: no ONNX export here
    hits = [
        hit(1, 0.81, ENGINE),
        hit(2, 0.30, "Weather was clear at the time of the flight.", document="notes.md", page=None,
            locator="lines 4-9"),
        hit(3, 0.12, "The crew had lunch."),  # below the threshold
    ]
    answer, pieces = extractive_answer("Why did the engine fail?", hits)
    text = "".join(pieces)
    assert [c["n"] for c in answer.citations] == [1, 2]
    assert [c["chunk_id"] for c in answer.citations] == [1, 2]
    lines = [line for line in text.splitlines() if line.startswith("- ")]
    assert 1 <= len(lines) <= 3
    assert lines[0] == "- “The engine failed because the fuel ran out over the lake.” [1] — *report.pdf, p. 3*"
    assert "crew had lunch" not in text and "departed at noon" not in text  # the passages are not all quoted
    assert set(re.findall(r"\[(\d+)\]", text)) <= {"1", "2"}


def test_a_report_page_leads_with_its_narrative_not_its_form_header(threshold, settings_env):
    """An NTSB report's first page: its header of "Label: value" fields has no full stop, so it comes out of the
    sentence split as one long run that shares many words with any question about the accident."""
    from rag.parsing import parse
    from tests.scans import NTSB_REPORT

    settings_env(min_relevance=0.3, embedding_backend="torch")
    page = " ".join(parse(NTSB_REPORT.read_bytes(), "report.pdf").sections[0].text.split())
    assert page.startswith("Page 1 of 4 National Transportation Safety Board") and "Location: Tallahassee" in page
    leads = best_sentences("What did the Piper hit on final approach to the private airstrip?",
                           [{"n": 1, "text": page}])
    assert any("contacted trees, then utility wires" in lead.text for lead in leads), leads
    assert not any("Accident Number:" in lead.text for lead in leads), leads


def test_forms_tables_and_fragments_are_not_sentences():
    assert is_prose("The airplane contacted trees, then utility wires, and came to rest upright.")
    assert is_prose("The cause: the fuel ran out over the lake.")  # one colon is prose
    assert not is_prose("Location: Tallahassee, FL Accident Number: NYC08CA055 Registration: N5921D")
    assert not is_prose("Page 1 of 4")
    assert not is_prose(" ".join(["word"] * 200))  # a run far longer than a sentence


def fake_embed(scores: dict[str, float]):
    """An embedder whose cosine to the question is ``scores[sentence]`` (0 for any other sentence)."""

    def embed(texts):
        vectors = []
        for i, text in enumerate(texts):
            cosine = 1.0 if i == 0 else scores.get(text, 0.0)
            vectors.append([cosine, (1 - cosine**2) ** 0.5])
        return np.array(vectors, dtype=np.float32)

    return embed


def test_at_most_three_sentences_close_to_the_best_lead_best_first(threshold):
    text = "Alpha one two three. Bravo one two three. Charlie one two three. Delta one two three. Echo one two."
    scores = {"Alpha one two three.": 0.5, "Bravo one two three.": 0.8, "Charlie one two three.": 0.75,
              "Delta one two three.": 0.72, "Echo one two.": 0.9}  # Echo has too few words to lead
    leads = best_sentences("zzz", [{"n": 1, "text": text}], embed=fake_embed(scores))
    assert [lead.text for lead in leads] == ["Bravo one two three.", "Charlie one two three.",
                                             "Delta one two three."]
    scores["Charlie one two three."] = scores["Delta one two three."] = 0.6  # too far below the best
    leads = best_sentences("zzz", [{"n": 1, "text": text}], embed=fake_embed(scores))
    assert [lead.text for lead in leads] == ["Bravo one two three."]


def test_near_copies_lead_once(threshold):
    citations = [{"n": 1, "text": "The engine lost power over the lake today."},
                 {"n": 2, "text": "The engine lost power over the lake, today!"}]
    scores = {"The engine lost power over the lake today.": 0.8, "The engine lost power over the lake, today!": 0.79}
    leads = best_sentences("zzz", citations, embed=fake_embed(scores))
    assert [(lead.n, lead.text) for lead in leads] == [(1, "The engine lost power over the lake today.")]


def test_passages_without_an_answering_sentence_say_so_plainly(threshold, monkeypatch):
    monkeypatch.setattr("rag.extractive.embedding.embed", fake_embed({}))  # every sentence scores 0
    answer, pieces = extractive_answer("Why did the engine fail?", [hit(1, 0.5, "Nothing to see in this passage.")])
    assert "".join(pieces) == NOTHING_DIRECT
    assert [c["n"] for c in answer.citations] == [1]  # the passages are still there to read


def test_the_answer_streams_in_word_sized_pieces(threshold, monkeypatch):
    monkeypatch.setattr("rag.extractive.embedding.embed", fake_embed({"One two three four five six seven.": 0.9}))
    _, pieces = extractive_answer("q", [hit(1, 0.9, "One two three four five six seven.")])
    pieces = list(pieces)
    assert "".join(pieces).startswith(LEAD_IN) and "“One two three four five six seven.” [1]" in "".join(pieces)
    assert len(pieces) > 7 and all(len(p) < 80 for p in pieces)


def test_sentences_split_across_pdf_lines_and_cjk():
    assert split_sentences("The engine\nfailed. Then it\n restarted! 天气晴朗。能见度良好。") == [
        "The engine failed.", "Then it restarted!", "天气晴朗。", "能见度良好。"]


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
