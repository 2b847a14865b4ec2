"""Question → ranked chunks of one knowledge base: vector (HNSW) and full-text (any-word, rare words weigh most)
search fused by score, near-duplicates collapsed, each hit with its cosine score for the relevance threshold."""

from __future__ import annotations

import contextvars
import os
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import asdict, replace
from typing import TypeVar

import numpy as np
from sqlalchemy.orm import Session

from db.repositories import chunks as chunk_repo
from db.repositories.chunks import Candidate, Hit
from infra.settings import get_settings
from rag import embedding, query

D = TypeVar("D")
M = TypeVar("M")

# Two passages whose word 3-gram sets overlap this much say the same thing (a re-uploaded file, boilerplate).
DUPLICATE_JACCARD = 0.8
# Up to QUESTION_BATCH_ON_ONE_THREAD texts (questions) embed faster on one CPU thread than on two (a question's
# two forms: 2.2 against 3.1 ms with warm caches; 8 questions 7.0 against 7.5 ms), and the other core stays free
# for the database and the other chat process; larger batches (a burst) use the process's threads.
QUESTION_BATCH_ON_ONE_THREAD = 16


def search(
    *,
    session: Session,
    kb_id: int,
    question: str,
    k: int | None = None,
    document_ids: Sequence[int] | None = None,
    mode: str | None = None,
) -> list[Hit]:
    """The ``k`` best passages for ``question``, near-duplicates collapsed. ``mode`` (default: the setting):
    ``hybrid`` fuses the vector and full-text halves, ``vector`` and ``fulltext`` use one half alone.

    The question is embedded while a helper thread runs the full-text half on the session (the question's terms,
    then its matches): the model and the database work at the same time. Then one statement takes the vector half,
    merges the two and reads each candidate's page evidence."""
    settings = get_settings()
    question = " ".join(question.split())
    if not question:
        return []
    k = k or settings.top_k
    mode = mode or settings.retrieval_mode
    candidates = max(settings.retrieval_candidates, k * 3)  # more than k: collapsing removes some

    def text_side() -> tuple[chunk_repo.Scope, query.FullTextQuery | None, list[tuple[int, float]]]:
        scope = chunk_repo.set_search_options(session, settings.hnsw_ef_search, kb_id=kb_id,
                                              document_ids=document_ids)
        if mode == "vector":
            return scope, None, []
        text_query = full_text_query(session=session, kb_id=kb_id, question=question)
        if text_query is None:
            return scope, None, []
        return scope, text_query, chunk_repo.text_candidates(
            session=session, kb_id=kb_id, match=text_query.match, weighted=text_query.weighted,
            candidates=candidates, rank_limit=settings.fulltext_rank_limit, document_ids=document_ids,
        )

    (scope, text_query, text_hits), vector = _alongside(text_side, lambda: embed_question(question))
    evidence = mode == "hybrid" and text_query is not None and settings.page_evidence_weight > 0
    text_total = text_query.total if text_query else 0.0
    found = chunk_repo.hybrid_candidates(
        session=session,
        kb_id=kb_id,
        embedding=vector,
        text_hits=text_hits,
        weighted=text_query.weighted if text_query else (),
        candidates=candidates,
        document_ids=document_ids,
        page_evidence=chunk_repo.PageEvidence(keep=k * 3, text_weight=settings.fulltext_weight, text_total=text_total,
                                              weight=settings.page_evidence_weight) if evidence else None,
        approximate=scope.approximate,
    )
    hits = fuse(
        found,
        text_total=text_total,
        text_weight={"vector": 0.0, "fulltext": None}.get(mode, settings.fulltext_weight),
    )
    if evidence:
        matched = {(c.hit.document_id, c.hit.page): c.page_matched for c in found if c.page_matched}
        hits = with_page_evidence(hits, matched, text_query, settings.page_evidence_weight)
    hits = collapse_duplicates(hits[: k * 3])[:k]
    if settings.context_neighbours > 0:
        hits = [with_neighbours(session=session, hit=hit, radius=settings.context_neighbours) for hit in hits]
    return hits


HELPERS = 8  # helper threads per process
_helpers: tuple[int, ThreadPoolExecutor] | None = None
_helpers_lock = threading.Lock()
_in_flight = 0  # helper calls submitted and not finished, this process


def _helper_pool() -> ThreadPoolExecutor:
    """This process's helper threads (made after a fork, never inherited from the parent)."""
    global _helpers, _in_flight
    with _helpers_lock:
        if _helpers is None or _helpers[0] != os.getpid():
            _helpers = (os.getpid(), ThreadPoolExecutor(max_workers=HELPERS, thread_name_prefix="kbchat-search"))
            _in_flight = 0
        return _helpers[1]


def _alongside(database: Callable[[], D], model: Callable[[], M]) -> tuple[D, M]:
    """``database()`` on a helper thread while ``model()`` runs here; both results. The session is the helper's
    until it is done; when every helper is busy, ``database()`` runs here after the model, as it would have
    without helpers.

    When a helper is free, this thread waits (at most 2 ms) until the helper has begun: otherwise the helper may
    wait for the interpreter lock until this thread next lets it go, which delayed its first statement by 2-4 ms
    in every other question (the model's call holds the lock while it tokenises)."""
    global _in_flight
    began = threading.Event()
    context = contextvars.copy_context()

    def helper() -> D:
        global _in_flight
        began.set()
        try:
            return context.run(database)
        finally:
            with _helpers_lock:
                _in_flight -= 1

    pool = _helper_pool()
    with _helpers_lock:
        _in_flight += 1
        free = _in_flight <= HELPERS
    future = pool.submit(helper)
    if free:
        began.wait(0.002)
    try:
        modelled = model()
    finally:
        started = not future.cancel()
        if started:
            futures_wait([future])
        else:
            with _helpers_lock:
                _in_flight -= 1
    return (future.result() if started else database()), modelled


def full_text_query(*, session: Session, kb_id: int, question: str) -> query.FullTextQuery | None:
    """The full-text half's query for ``question`` in this base (None when none of its words occurs there)."""
    settings = get_settings()
    rows, total = chunk_repo.question_terms(
        session=session, kb_id=kb_id, question=query.content_words(question),
        text_search_config=settings.text_search_config,
    )
    terms = [query.Term(lexeme, positions, chunks) for lexeme, positions, chunks in rows]
    return query.build(terms, total, rank_limit=settings.fulltext_rank_limit)


def fuse(candidates: Sequence[Candidate], *, text_total: float, text_weight: float | None) -> list[Hit]:
    """Both halves' candidates in one ranking, best first.

    A candidate scores its cosine similarity plus ``text_weight`` times the share of the question's word weight
    it holds (``text_score / text_total``, 0..1), both computed for every candidate, whichever half found it. The
    share is absolute, not relative to the best match found: a full-text list whose matches hold only common words
    adds almost nothing, so it cannot push the vector half's best passages out, while a passage holding the
    question's rare words (a name, a number, an exact phrase) rises. ``text_weight`` 0 is the vector half alone;
    None ranks the full-text half's own candidates by their share alone."""
    text_ranks = {
        c.hit.chunk_id: rank
        for rank, c in enumerate(
            sorted((c for c in candidates if c.text_listed), key=lambda c: (-c.text_score, c.hit.chunk_id)), start=1
        )
    }

    def share(c: Candidate) -> float:
        return min(1.0, c.text_score / text_total) if text_total > 0 else 0.0

    scored: list[Hit] = []
    for c in candidates:
        if text_weight is None:
            if not c.text_listed:
                continue
            fused = share(c)
        elif text_weight == 0:
            if c.vector_rank is None:
                continue
            fused = c.hit.score
        else:
            fused = c.hit.score + text_weight * share(c)
        scored.append(replace(c.hit, fused=round(fused, 6), text_rank=text_ranks.get(c.hit.chunk_id)))
    scored.sort(key=lambda h: (-h.fused, -h.score, h.chunk_id))
    return scored


def with_page_evidence(
    hits: Sequence[Hit], matched: dict[tuple[int, int], frozenset[int]], text_query: query.FullTextQuery,
    weight: float,
) -> list[Hit]:
    """The hits re-ranked with the evidence of their whole page: each gains ``weight`` times the share of the
    question's word weight that the chunks of its page hold together (``matched``: per (document, page), the
    indexes of ``text_query.weighted`` some chunk of it matches). A table, a form or a list often answers across
    several chunks of one page, none of which holds every word of the question alone."""
    if weight <= 0 or text_query.total <= 0:
        return list(hits)
    weights = [w for _, w in text_query.weighted]

    def share(hit: Hit) -> float:
        found = matched.get((hit.document_id, hit.page), frozenset()) if hit.page is not None else frozenset()
        return min(1.0, sum(weights[i] for i in found if i < len(weights)) / text_query.total)

    ranked = [replace(h, fused=round(h.fused + weight * share(h), 6)) for h in hits]
    ranked.sort(key=lambda h: (-h.fused, -h.score, h.chunk_id))
    return ranked


class _QuestionBatcher:
    """Concurrent questions share model calls: the first caller embeds what is waiting (its own question at
    once), then keeps embedding whatever arrived meanwhile in one batch, while the others wait for their vector.
    Twenty chats at once then cost a few batched calls instead of twenty calls queueing for the CPU."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._waiting: list[tuple[str, Future]] = []
        self._running = False

    def embed(self, texts: Sequence[str]) -> list:
        """The vectors of ``texts``, in one model call with whatever other threads are waiting to embed."""
        future: Future = Future()
        with self._lock:
            self._waiting.append((list(texts), future))
            lead = not self._running
            self._running = True
        if lead:
            self._drain()
        return future.result()

    def _drain(self) -> None:
        while True:
            with self._lock:
                batch, self._waiting = self._waiting, []
                if not batch:
                    self._running = False
                    return
            texts = [text for waiting, _ in batch for text in waiting]
            try:
                vectors = list(embedding.embed(texts, threads=1 if len(texts) <= QUESTION_BATCH_ON_ONE_THREAD else None))
            except BaseException as exc:  # every waiter hears about it, then the next round may succeed
                for _, future in batch:
                    future.set_exception(exc)
                continue
            start = 0
            for waiting, future in batch:
                future.set_result(vectors[start : start + len(waiting)])
                start += len(waiting)


_batcher = _QuestionBatcher()


def embed_question(question: str):
    """The question's vector: the mean of the vectors of the question as asked and of its content words alone
    (``query.content_words``), so the instructions a question carries ("answer in millions", "round to two
    decimals", "explain why") pull it less far from the passages that answer it, while the asked form keeps its
    sense. Batched with the questions other threads are asking at the same moment."""
    content = query.content_words(question)
    if not content or content == question:
        return _batcher.embed([question])[0]
    asked, plain = _batcher.embed([question, content])
    mean = np.asarray(asked, dtype=np.float32) + np.asarray(plain, dtype=np.float32)
    return mean / max(float(np.linalg.norm(mean)), 1e-12)


def collapse_duplicates(hits: list[Hit], max_span: int = 3) -> list[Hit]:
    """Near-duplicates out, best rank first: hits that are neighbours in one document (overlapping windows) merge
    into one passage of up to ``max_span`` chunks; a hit whose text nearly repeats a kept one is dropped."""
    kept: list[Hit] = []
    spans: list[dict[int, Hit]] = []  # per kept passage: its chunks by ordinal
    seen: list[set[tuple[str, ...]]] = []  # the word 3-grams of every chunk kept so far
    for hit in hits:
        grams = _shingles(hit.text)
        span = next(
            (
                span
                for span in spans
                if next(iter(span.values())).document_id == hit.document_id
                and hit.ordinal in (min(span) - 1, max(span) + 1)
                and len(span) < max_span
            ),
            None,
        )
        if span is not None:
            span[hit.ordinal] = hit
            i = spans.index(span)
            kept[i] = _merge(max(span.values(), key=lambda h: h.fused), span)
        elif any(_near_duplicate(grams, other) for other in seen):
            continue
        else:
            kept.append(hit)
            spans.append({hit.ordinal: hit})
        seen.append(grams)
    return kept


def _merge(best: Hit, span: dict[int, Hit]) -> Hit:
    """One passage for adjacent chunks: the best hit's identity and scores, the chunks' text in reading order."""
    chunks = [span[o] for o in sorted(span)]
    text = chunks[0].text
    for chunk in chunks[1:]:
        text = _join_overlapping(text, chunk.text)
    pages = sorted({c.page for c in chunks if c.page is not None})
    locator = best.locator
    if len(pages) > 1 and (locator is None or locator.startswith("p. ")):
        locator = f"pp. {pages[0]}–{pages[-1]}"
    return replace(
        best,
        text=text,
        page=best.page if best.page is not None else (pages[0] if pages else None),  # where the match is
        locator=locator,
        score=max(c.score for c in chunks),
        fused=max(c.fused for c in chunks),
    )


def with_neighbours(*, session: Session, hit: Hit, radius: int) -> Hit:
    """The hit with the text of the chunks around it, overlaps removed, for a fuller passage."""
    chunks = chunk_repo.neighbours(
        session=session, document_id=hit.document_id, ordinal=hit.ordinal, radius=radius
    )
    if len(chunks) <= 1:
        return hit
    text = chunks[0].text
    for chunk in chunks[1:]:
        text = _join_overlapping(text, chunk.text)
    return replace(hit, text=text)


def _join_overlapping(left: str, right: str, longest: int = 2000) -> str:
    """``left`` + ``right`` without the text they share (sliding-window chunks overlap)."""
    for size in range(min(len(left), len(right), longest), 20, -1):
        if left.endswith(right[:size]):
            return left + right[size:]
    return left + " " + right


_WORDS = re.compile(r"\w+")


def _shingles(text: str) -> set[tuple[str, ...]]:
    words = _WORDS.findall(text.lower())
    if len(words) < 3:
        return {tuple(words)}
    return set(zip(words, words[1:], words[2:], strict=False))


def _near_duplicate(a: set, b: set) -> bool:
    """Whether two shingle sets overlap at least ``DUPLICATE_JACCARD`` (Jaccard)."""
    if not a or not b:
        return False
    small, large = (len(a), len(b)) if len(a) <= len(b) else (len(b), len(a))
    if small < DUPLICATE_JACCARD * large:  # the overlap is at most the smaller set: most pairs end here, cheaply
        return False
    common = len(a & b)
    return common >= DUPLICATE_JACCARD * (small + large - common)


def hit_to_dict(hit: Hit) -> dict:
    """The JSON shape of a hit (CLI ``--json``, task results, message citations)."""
    data = asdict(hit)
    data["text"] = hit.text
    return data
