"""The extractive answer (no language model): the one to three sentences of the retrieved passages that best
answer the question, each with its [n] and source, scored against the question with the embedder retrieval
already loaded. The passages themselves follow, folded (the page's citation cards, the CLI's source list).

A sentence scores its cosine similarity to the question plus a small bonus for the share of the question's words
it holds (``WORD_WEIGHT``); one below ``min_relevance`` (the passages' own threshold, the same cosine scale) is
never led with, and when no sentence reaches it the answer says plainly that no passage answers directly.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np

from infra.settings import get_settings
from rag import embedding
from rag.citations import citation_label

EmbedFn = Callable[[Sequence[str]], np.ndarray]

MAX_SENTENCES = 3  # led with at most
MAX_CANDIDATES = 60  # sentences scored per answer at most (bounds the embedding cost: short texts, one batch)
WITHIN_BEST = 0.12  # a second or third sentence leads only when it scores this close to the best one
WORD_WEIGHT = 0.15  # bonus for holding all of the question's words (a sentence with the question's rare terms)
MIN_WORDS, MAX_SENTENCE_CHARS = 4, 320  # shorter is not a sentence; longer is quoted up to this many characters
MAX_RUN_CHARS = 600  # longer without a full stop: a table or a form, not a sentence
LEAD_IN = "The passages that best answer this:"
NOTHING_DIRECT = (
    "No sentence in the passages answers this directly; the closest passages are below. "
    "Try other words, or upload the document that holds the answer."
)

_SENTENCE_END = re.compile(r"(?<=[.!?。！？])\s+|(?<=[。！？])")
_WORD = re.compile(r"\w{3,}")
_FIELD = re.compile(r"[^\W_]:\s")  # "Location: …", "Part 91: …" — a form's label and its value
_FILLER = frozenset(
    "the and for with was were what which who whom whose when where why how did does this that these those "
    "from into about are is has have had been any all can could would should please tell explain there their "
    "they them its it's not".split()
)


@dataclass(frozen=True)
class Lead:
    """A sentence the answer leads with: its text, the passage it is from (``n``), and its score."""

    text: str
    n: int
    score: float


def split_sentences(text: str) -> list[str]:
    """A passage's sentences, whitespace normalised (PDF lines break mid-sentence)."""
    text = " ".join(text.split())
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def _words(text: str) -> set[str]:
    return {w.lower() for w in _WORD.findall(text)} - _FILLER


def _shorten(sentence: str) -> str:
    if len(sentence) <= MAX_SENTENCE_CHARS:
        return sentence
    return sentence[:MAX_SENTENCE_CHARS].rsplit(" ", 1)[0] + " …"


def is_prose(sentence: str) -> bool:
    """Whether a "sentence" reads as one: enough words, not a form's or a table's run of "Label: value" fields
    (a report's header, whose text has no full stops, comes out as one long run), not longer than a sentence."""
    return (
        len(sentence.split()) >= MIN_WORDS
        and len(_WORD.findall(sentence)) >= 3
        and len(_FIELD.findall(sentence)) < 2
        and len(sentence) <= MAX_RUN_CHARS
    )


def candidates(citations: list[dict]) -> list[tuple[str, int]]:
    """(sentence, passage n) pairs worth scoring: prose (``is_prose``), each once, the best-ranked passages
    first so the cap keeps theirs."""
    seen: set[str] = set()
    out: list[tuple[str, int]] = []
    for citation in citations:
        for sentence in split_sentences(citation["text"]):
            key = sentence.lower()
            if key in seen or not is_prose(sentence):
                continue
            seen.add(key)
            out.append((_shorten(sentence), citation["n"]))
            if len(out) >= MAX_CANDIDATES:
                return out
    return out


def best_sentences(
    question: str, citations: list[dict], *, embed: EmbedFn | None = None, limit: int = MAX_SENTENCES
) -> list[Lead]:
    """The sentences to lead with, best first: the best one when it reaches ``min_relevance``, then up to
    ``limit - 1`` more within ``WITHIN_BEST`` of it that are not near-copies of one already chosen."""
    pairs = candidates(citations)
    if not pairs or not question.strip():
        return []
    vectors = (embed or embedding.embed)([question] + [s for s, _ in pairs])
    cosines = vectors[1:] @ vectors[0]
    asked = _words(question)
    scored = []
    for (sentence, n), cosine in zip(pairs, cosines, strict=True):
        share = len(asked & _words(sentence)) / len(asked) if asked else 0.0
        scored.append(Lead(sentence, n, round(float(cosine) + WORD_WEIGHT * share, 4)))
    scored.sort(key=lambda lead: lead.score, reverse=True)
    floor = get_settings().min_relevance
    if scored[0].score < floor:
        return []
    chosen = [scored[0]]
    for lead in scored[1:]:
        if len(chosen) >= limit or lead.score < max(floor, scored[0].score - WITHIN_BEST):
            break
        if not any(_similar(lead.text, c.text) for c in chosen):
            chosen.append(lead)
    return chosen


def _similar(a: str, b: str) -> bool:
    wa, wb = _words(a), _words(b)
    return bool(wa and wb) and len(wa & wb) / len(wa | wb) > 0.7


def answer_markdown(leads: list[Lead], citations: list[dict]) -> str:
    """The answer text: the lead sentences, each quoted with its [n] and source; or that none answers directly."""
    if not leads:
        return NOTHING_DIRECT
    by_n = {c["n"]: c for c in citations}
    lines = [LEAD_IN, ""]
    for lead in leads:
        lines.append(f"- “{lead.text}” [{lead.n}] — *{citation_label(by_n[lead.n])}*")
    return "\n".join(lines) + "\n"


def pieces(text: str) -> Iterator[str]:
    """``text`` in word-sized pieces, the way an answer streams."""
    yield from re.findall(r"\S+\s*|\s+", text)


def best_excerpt(question: str, text: str, max_chars: int = 600) -> str:
    """The passage itself, cut around the sentence that shares most words with the question when it is long."""
    text = " ".join(text.split())
    if len(text) <= max_chars:
        return text
    words = {w.lower() for w in re.findall(r"\w{3,}", question)}
    sentences = re.split(r"(?<=[.!?。！？])\s*", text)
    scores = [len(words & {w.lower() for w in re.findall(r"\w{3,}", s)}) for s in sentences]
    best = max(range(len(sentences)), key=lambda i: scores[i]) if sentences else 0
    start, end, out = best, best, ""
    while start > 0 and len(sentences[start - 1]) + len(out) < max_chars // 3:
        start -= 1
        out = sentences[start] + " " + out
    for sentence in sentences[best:]:
        if len(out) + len(sentence) > max_chars and out:
            break
        out += sentence + " "
        end += 1
    out = out.strip()
    cut = len(out) > max_chars  # one sentence longer than the excerpt: cut it between words
    if cut:
        out = out[:max_chars].rsplit(" ", 1)[0]
    prefix = "… " if start > 0 else ""
    suffix = " …" if cut or any(s.strip() for s in sentences[end:]) else ""
    return prefix + out + suffix
