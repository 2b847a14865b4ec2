"""The pure parts of the quality jobs: stratified sampling, questions without a model, ranks and metrics, and
keeping a webhook URL's secrets out of logs."""

from __future__ import annotations

import random

import pytest

from db.repositories.chunks import Hit
from infra.urls import scrub, shown_url
from rag.evaluation import Sampled, allocate, extractive_question, metrics, rank_of


def test_allocation_is_even_over_documents_capped_by_what_each_has_and_exact_in_total():
    quota = allocate([(1, 10), (2, 2), (3, 50)], 20, random.Random(1))
    assert quota == {1: 9, 2: 2, 3: 9}
    assert sum(allocate([(1, 3), (2, 3)], 50, random.Random(1)).values()) == 6  # fewer chunks than asked: all
    assert allocate([], 5, random.Random(1)) == {} and allocate([(1, 0)], 5, random.Random(1)) == {}


def test_more_documents_than_questions_draws_documents_reproducibly_from_the_seed():
    counts = [(d, 4) for d in range(1, 41)]
    first = allocate(counts, 6, random.Random(9))
    assert len(first) == 6 and set(first.values()) == {1}
    assert allocate(counts, 6, random.Random(9)) == first
    assert allocate(counts, 6, random.Random(10)) != first


def test_an_extractive_question_asks_about_the_salient_sentences_key_phrases():
    text = ("The report was filed on Monday. The engine lost power after takeoff because a connecting rod in the "
            "engine fractured. Weather was clear.")
    question = extractive_question(text)
    assert question.startswith("What about ") and question.endswith("?")
    assert "engine" in question and "connecting" in question and "Weather" not in question
    assert " the " not in question.lower() and "because" not in question  # no stop words


def test_an_extractive_question_of_cjk_text_is_its_salient_sentence():
    question = extractive_question("飞机起飞后不久发动机失去动力。调查人员发现连杆断裂。")
    assert question == "飞机起飞后不久发动机失去动力？"


def _hit(chunk_id: int, text: str) -> Hit:
    return Hit(chunk_id=chunk_id, document_id=1, document="a.pdf", page=1, locator=None, score=0.5, text=text)


def test_rank_counts_the_chunk_itself_or_a_merged_hit_that_contains_its_text():
    target = Sampled(chunk_id=7, document_id=1, document="a.pdf", page=2, locator=None, text="Gear  collapsed.")
    assert rank_of(target, [_hit(1, "other"), _hit(7, "Gear collapsed.")]) == 2
    assert rank_of(target, [_hit(3, "Before. Gear collapsed. After.")]) == 1  # neighbours merged around it
    assert rank_of(target, [_hit(1, "other"), _hit(2, "unrelated")]) is None


def test_rank_counts_a_near_duplicate_as_found_as_retrieval_collapses_them():
    boilerplate = ("The National Transportation Safety Board is an independent federal agency dedicated to "
                   "promoting aviation safety and investigating accidents in the United States")
    target = Sampled(chunk_id=7, document_id=1, document="a.pdf", page=4, locator=None, text=boilerplate + ".")
    copy = _hit(40, boilerplate + " and abroad.")  # the same page of another report
    assert rank_of(target, [_hit(1, "weather observations at the airport"), copy]) == 2


def test_metrics_over_ranks():
    result = metrics([1, 3, None, 7])
    assert result == pytest.approx({"hit_at_1": 0.25, "hit_at_5": 0.5, "hit_at_10": 0.75,
                                    "mrr": (1 + 1 / 3 + 1 / 7) / 4})
    assert metrics([]) == {"hit_at_1": 0.0, "hit_at_5": 0.0, "hit_at_10": 0.0, "mrr": 0.0}


@pytest.mark.parametrize("url", [
    "https://hooks.example.org/services/T000/B000/XXXXSECRET",
    "http://user:pa55word@alerts.internal:8080/hook?token=XXXXSECRET",
])
def test_only_scheme_host_and_port_of_a_webhook_url_are_ever_shown(url):
    shown = shown_url(url)
    assert "SECRET" not in shown and "pa55word" not in shown and "user" not in shown
    assert shown in ("https://hooks.example.org", "http://alerts.internal:8080")
    error = f"HTTPSConnectionPool(host='x', port=443): Max retries exceeded with url: {url.split('/', 3)[3]}"
    redacted = scrub(error + f" ({url})", url)
    assert "SECRET" not in redacted and "pa55word" not in redacted and "Max retries exceeded" in redacted
