"""A natural question → the full-text half's query: any of its words, weighted by how rare each is in the base.

A question like "For the 2023 Q1 report, what is the connection between R&D expenses and …" shares only some of
its words with the passage that answers it, so the full-text half matches *any* word (an OR query) and ranks a
passage by the weight of the words it holds, BM25-style: a word found in few chunks (a name, a product, a
number, a date) weighs much more than one found everywhere. The words that only make a sentence a question or an
instruction ("what", "please", "answer", "explain") are dropped first, and two question words that stand
together also count as a phrase, so a passage that holds them side by side ranks above one that merely holds
both.

The document frequencies come from the database (``db.repositories.chunks.question_terms``); this module only
decides, so it is pure and tested without one.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

# Words that make a sentence a question, a request or an instruction about the answer, in any domain. The text
# search configuration drops grammatical stop words ("the", "is", "of") already; these are the ones it keeps.
# Instructions on the answer's form ("round to two decimal places", "in units of", "from the perspective of")
# are rare in documents, so their words would otherwise weigh as much as a name (all 126 FinanceBench questions
# on 71 filings: MRR 0.743 -> 0.754, page hit@5 0.452 -> 0.460; NTSB hit@1 0.547 -> 0.573).
FILLER_WORDS = frozenset(
    """
    what whats which who whom whose when where why how whether
    please kindly tell give describe explain summarise summarize identify provide
    answer answers answered answering question questions respond response responses reply
    assume assuming suppose imagine pretend
    based according rely relying shown show shows stated mentioned outlined described detail details clearly
    you your yourself we us our i me my
    round rounded rounding decimal decimals place places nearest unit units format formatted
    standpoint perspective approach drawing draw conclusion conclusions info information
    can could would should might may must shall will
    does did do doing has have had having
    """.split()
)

PHRASE_WEIGHT = 0.5  # a phrase match adds half the mean weight of its two words
MAX_TERMS = 16  # the rarest words of a long question: the rest add almost nothing and cost time


@dataclass(frozen=True)
class Term:
    """A lexeme of the question as the text search configuration normalises it, where it stands in the question
    and in how many chunks of the base it occurs."""

    lexeme: str
    positions: tuple[int, ...]
    chunks: int


@dataclass(frozen=True)
class FullTextQuery:
    """``match``: the tsquery that finds candidates (any of the rarer words); ``weighted``: (tsquery, weight)
    pairs a candidate's score sums over; ``total``: the weight of a passage holding every word and phrase."""

    match: str
    weighted: tuple[tuple[str, float], ...]
    total: float


_WORD = re.compile(r"[\w'’&.\-]+")


_LETTERS_DIGITS = re.compile(r"(?<=[^\W\d_])(?=\d)|(?<=\d)(?=[^\W\d_])")


def content_words(question: str) -> str:
    """The question without the words that only make it a question or an instruction; a word that runs letters
    and digits together ("FY2023", "Q2", "v3") also gives its parts, which is how documents often write them."""
    kept: list[str] = []
    for word in _WORD.findall(question):
        if word.lower().strip("'’.-") in FILLER_WORDS:
            continue
        kept.append(word)
        parts = _LETTERS_DIGITS.split(word)
        if len(parts) > 1:
            kept.extend(part for part in parts if len(part) > 1)  # "FY2023" → FY, 2023; "Q2" adds nothing
    return " ".join(kept)


def idf(chunks: int, total: int) -> float:
    """BM25's inverse document frequency: near 0 for a word in every chunk, large for a rare one."""
    return math.log(1.0 + (total - chunks + 0.5) / (chunks + 0.5))


def build(terms: Sequence[Term], total_chunks: int, rank_limit: int, max_terms: int = MAX_TERMS) -> FullTextQuery | None:
    """The full-text query for the question's ``terms`` in a base of ``total_chunks`` chunks, or None when no word
    of the question occurs in it.

    Candidates are the chunks holding any of the rarest words, taking words while the chunks they may match stay
    within ``rank_limit`` (at least the rarest word is taken): every chunk that holds a rare word is ranked, and
    a common word never floods the ranking with arbitrary matches. Every kept word still adds its weight to the
    candidates that hold it."""
    present = [t for t in terms if t.chunks > 0]
    if not present or total_chunks <= 0:
        return None
    present.sort(key=lambda t: (t.chunks, t.lexeme))
    kept = present[:max_terms]
    weights = {t.lexeme: idf(t.chunks, max(total_chunks, t.chunks)) for t in kept}

    matching: list[str] = []
    reach = 0
    for term in kept:
        if matching and reach + term.chunks > rank_limit:
            break
        matching.append(term.lexeme)
        reach += term.chunks

    weighted = [(_quote(t.lexeme), weights[t.lexeme]) for t in kept]
    for left, right in _adjacent_pairs(kept):
        weight = PHRASE_WEIGHT * (weights[left] + weights[right]) / 2
        weighted.append((f"{_quote(left)} <-> {_quote(right)}", weight))
    return FullTextQuery(
        match=" | ".join(_quote(lexeme) for lexeme in matching),
        weighted=tuple(weighted),
        total=sum(weight for _, weight in weighted),
    )


def _adjacent_pairs(terms: Sequence[Term]) -> list[tuple[str, str]]:
    """Pairs of lexemes that stand next to each other in the question (by position), in question order."""
    at = sorted((position, t.lexeme) for t in terms for position in t.positions)
    pairs: list[tuple[str, str]] = []
    for (p1, a), (p2, b) in zip(at, at[1:], strict=False):
        if p2 == p1 + 1 and a != b and (a, b) not in pairs:
            pairs.append((a, b))
    return pairs


def _quote(lexeme: str) -> str:
    """A lexeme as a tsquery operand: quoted, so no character in it is read as an operator."""
    return "'" + lexeme.replace("\\", "\\\\").replace("'", "''") + "'"
