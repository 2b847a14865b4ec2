"""Retrieve → prompt → generate, streamed through ``emit``, with page citations.

The stream a reader sees (``telemetry/answer_streams.py`` carries it): ``status`` events while nothing is shown yet
(retrying, trimming), one ``meta`` (mode, candidate citations) just before the first token, ``token``s, a
``notice`` when the answer ends early (stopped, interrupted), then ``done`` (mode, final citations, timings);
or ``error`` with ``{"code", "message"}`` when no answer could start in time.

Modes: ``llm`` (the generation server), ``extractive`` (the passages' sentences that best answer, quoted with
their citations: no server configured, or it is down),
``cache`` (a repeated standalone question on an unchanged knowledge base).
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from db.repositories import conversations as conversation_repo
from db.repositories import knowledge_bases as kb_repo
from db.repositories.chunks import Hit
from infra.database import session_scope
from infra.settings import get_settings
from rag import answer_cache, conversation, extractive, llm, llm_client, prompts, retrieval
from rag.citations import MarkerFilter, cited_numbers
from rag.retrieval import hit_to_dict
from telemetry import retrievals

log = logging.getLogger(__name__)

Emit = Callable[[str, Any], None]
ShouldStop = Callable[[], bool]

NO_ANSWER = (
    "The knowledge base does not seem to contain an answer to this question: no passage was relevant enough. "
    "Try other words, or upload the document that holds the answer."
)


@dataclass
class Answer:
    mode: str  # llm | extractive | cache
    citations: list[dict] = field(default_factory=list)


def relevant_passages(hits: list[Hit]) -> list[dict]:
    """The hits relevant enough to answer from (``min_relevance``), numbered from 1 as the answer cites them."""
    threshold = get_settings().min_relevance
    return [{"n": i + 1, **hit_to_dict(h)} for i, h in enumerate(h for h in hits if h.score >= threshold)]


# --- extractive answers -----------------------------------------------------------------------------------


def extractive_answer(question: str, hits: list[Hit]) -> tuple[Answer, Iterator[str]]:
    """The sentences of the relevant passages that best answer, each with its citation, as a stream of pieces;
    the passages themselves are the citations (folded under the answer)."""
    citations = relevant_passages(hits)
    return Answer(mode="extractive", citations=citations), extractive_pieces(question, citations)


def extractive_pieces(question: str, citations: list[dict], note: str | None = None) -> Iterator[str]:
    """The lead sentences with their [n] and source, word by word (``rag.extractive``); ``note`` first says why
    there is no model. No relevant passage: the plain no-answer text."""
    if not citations:
        yield NO_ANSWER
        return
    if note:
        yield f"*{note}*\n\n"
    leads = extractive.best_sentences(question, citations)
    yield from extractive.pieces(extractive.answer_markdown(leads, citations))


# --- the answer stream --------------------------------------------------------------------------------------


@dataclass
class Outcome:
    mode: str
    citations: list[dict] = field(default_factory=list)
    notice: str | None = None  # shown under the answer: why it ended early
    cacheable: bool = False
    stopped: bool = False
    interrupted: bool = False
    no_answer: bool = False
    error: dict | None = None  # no answer could start: {"code", "message"}


class _Output:
    """Everything the reader sees goes through here: one meta before the first token, the text so far."""

    def __init__(self, emit: Emit, should_stop: ShouldStop) -> None:
        self.emit = emit
        self.should_stop = should_stop
        self.parts: list[str] = []
        self.meta_sent = False
        self.first_token_at: float | None = None

    def meta(self, **data: Any) -> None:
        if not self.meta_sent:
            self.meta_sent = True
            self.emit("meta", data)

    def token(self, piece: str) -> None:
        if piece:
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()
            self.parts.append(piece)
            self.emit("token", piece)

    def status(self, message: str, **data: Any) -> None:
        self.emit("status", {"message": message, **data})

    def retrying(self, attempt: int, delay: float, reason: str) -> None:
        total = get_settings().llm_retries + 1
        self.status(
            f"The model is busy, retrying (attempt {attempt + 1} of {total})…",
            code="retrying",
            attempt=attempt,
            delay=round(delay, 2),
            reason=reason,
        )

    @property
    def text(self) -> str:
        return "".join(self.parts)


def answer_question(
    *,
    kb_id: int,
    question: str,
    conversation_id: int | None,
    task_id: str,
    emit: Emit,
    should_stop: ShouldStop | None = None,
    document_ids: list[int] | None = None,
    authorize: Callable[[Session], object] | None = None,
) -> dict:
    """Answer ``question`` from one knowledge base and stream it; saves the answer to the conversation.

    ``authorize`` (the asker's access check) runs in the first transaction. A question that needs no rewrite is
    looked up, checked and retrieved in that one transaction; a rewrite by the model happens with none open, and
    nothing is held open while the answer is generated."""
    started = time.perf_counter()
    out = _Output(emit, should_stop or (lambda: False))
    timings: dict[str, float] = {}

    with ExitStack() as transaction:
        session = transaction.enter_context(session_scope())
        if authorize is not None:
            authorize(session)
        kb = kb_repo.get(session=session, kb_id=kb_id)
        if kb is None:
            raise ValueError(f"knowledge base {kb_id} does not exist (deleted?)")
        version = kb.version
        history = (
            conversation.load_history(session=session, conversation_id=conversation_id, question=question)
            if conversation_id is not None
            else conversation.History()
        )
        if conversation.needs_rewrite(history.turns):
            transaction.close()  # the model may take seconds: no transaction waits on it
            session = None

        try:
            rewrite = conversation.standalone_question(
                question, history.turns, on_retry=out.retrying, should_stop=out.should_stop
            )
        except llm.GenerationStopped:
            rewrite = conversation.Rewrite(question, "stopped")
        standalone = rewrite.question
        timings["rewrite_ms"] = _ms(started)

        use_cache = not document_ids and rewrite.how != "stopped"
        cached = answer_cache.get(kb_id, version, standalone) if use_cache else None
        hits: list[Hit] | None = None
        if rewrite.how != "stopped" and not isinstance(rewrite.error, llm.FirstTokenTimeout) and cached is None:
            if session is None:
                session = transaction.enter_context(session_scope())
            hits = retrieval.search(session=session, kb_id=kb_id, question=standalone, document_ids=document_ids)
            timings["retrieval_ms"] = round(_ms(started) - timings["rewrite_ms"], 1)

    if rewrite.how == "stopped":
        outcome = Outcome(mode="llm", stopped=True, notice="Stopped.")
    elif isinstance(rewrite.error, llm.FirstTokenTimeout):  # asking again now would only wait as long again
        outcome = Outcome(mode="llm", error={"code": "first_token_timeout", "message": str(rewrite.error)})
    elif cached is not None:
        outcome = _from_cache(out, cached)
    else:
        passages = relevant_passages(hits)
        if not passages:
            _record_empty_retrieval(kb_id, standalone, max((h.score for h in hits), default=None))
            outcome = _no_answer(out)
        elif isinstance(rewrite.error, llm.ModelUnavailable):  # just failed through all its retries
            outcome = _extractive(
                out,
                standalone,
                passages,
                note=f"{rewrite.error} Here are the most relevant passages instead.",
            )
        elif llm_client.configured():
            outcome = _generate(out, question, passages, history)
        else:
            outcome = _extractive(out, standalone, passages, note=None)

    timings["first_token_ms"] = round(((out.first_token_at or time.perf_counter()) - started) * 1000, 1)
    timings["total_ms"] = _ms(started)
    result: dict[str, Any] = {
        "answer": out.text,
        "mode": outcome.mode,
        "citations": outcome.citations,
        "timings": timings,
        "standalone_question": standalone,
        "rewritten": rewrite.how,
        # The task layer enqueues chat.summarize when the history outgrew its budget.
        "summarize": bool(conversation_id is not None and history.over_budget),
    }
    if outcome.error is not None:  # nothing was said: the page keeps the question for another try
        emit("error", outcome.error)
        return {**result, "error": outcome.error}
    if outcome.notice:
        emit("notice", outcome.notice)
    text = out.text + (f"\n\n*{outcome.notice}*" if outcome.notice else "")
    if conversation_id is not None and text:
        with session_scope() as session:
            if conversation_repo.get(session=session, conversation_id=conversation_id) is None:
                log.info("conversation %s was deleted while it was being answered", conversation_id)
            else:
                conversation_repo.add_message(
                    session=session,
                    conversation_id=conversation_id,
                    role="assistant",
                    content=text,
                    citations=outcome.citations,
                    mode=outcome.mode,
                    task_id=task_id,
                    token_count=prompts.estimate_tokens(text),
                )
    if outcome.cacheable and use_cache:
        answer_cache.put(
            kb_id,
            version,
            standalone,
            {"answer": out.text, "citations": outcome.citations, "mode": outcome.mode},
        )
    flags = {k: True for k in ("stopped", "interrupted", "no_answer") if getattr(outcome, k)}
    emit("done", {"mode": outcome.mode, "citations": outcome.citations, "timings": timings, **flags})
    return {**result, **flags}


def _ms(since: float) -> float:
    return round((time.perf_counter() - since) * 1000, 1)


def _generate(out: _Output, question: str, passages: list[dict], history: conversation.History) -> Outcome:
    """The LLM answer; a 422 trims the prompt to the server's limits once; no server → extractive."""
    parts = prompts.PromptParts(question, passages, history.turns, history.summary)
    max_tokens = get_settings().llm_max_tokens
    for attempt in (1, 2):
        try:
            return _stream_llm(out, prompts.answer_messages(parts), parts.passages, max_tokens)
        except llm.PromptRejected as exc:
            fitted = _fit_to_limits(parts, exc, max_tokens) if attempt == 1 else None
            if fitted is None:
                return _extractive(
                    out,
                    question,
                    passages,
                    note=f"The language model could not take this question: {exc} "
                    "Here are the most relevant passages instead.",
                )
            parts, max_tokens = fitted
            out.status(
                "The question and its passages are too long for the model; retrying with less context.",
                code="trimmed",
                passages=len(parts.passages),
            )
        except llm.ModelUnavailable as exc:
            return _extractive(
                out, question, passages, note=f"{exc} Here are the most relevant passages instead."
            )
        except llm.FirstTokenTimeout as exc:
            return Outcome(mode="llm", error={"code": "first_token_timeout", "message": str(exc)})
    raise AssertionError("unreachable")


def _stream_llm(out: _Output, messages: prompts.Messages, passages: list[dict], max_tokens: int) -> Outcome:
    markers = MarkerFilter({p["n"] for p in passages})
    try:
        for piece in llm.stream_chat(
            messages, max_tokens=max_tokens, on_retry=out.retrying, should_stop=out.should_stop
        ):
            out.meta(mode="llm", citations=passages)
            out.token(markers.feed(piece))
        out.token(markers.flush())
    except llm.GenerationInterrupted as exc:
        out.token(markers.flush())
        return Outcome(
            mode="llm",
            citations=_cited(out.text, passages),
            interrupted=True,
            notice=f"{exc} The answer above is incomplete.",
        )
    except llm.GenerationStopped:
        out.token(markers.flush())
        return Outcome(mode="llm", citations=_cited(out.text, passages), stopped=True, notice="Stopped.")
    if not out.text.strip():
        out.meta(mode="llm", citations=passages)
        return Outcome(mode="llm", notice="The language model returned an empty answer.")
    return Outcome(mode="llm", citations=_cited(out.text, passages), cacheable=True)


def _cited(text: str, passages: list[dict]) -> list[dict]:
    """The passages the text cites, in passage order; markers to other numbers were removed as they streamed.

    An answer that cites none (small models often don't) still comes with every passage it was given, each marked
    ``cited: False``, so the reader has something to check it against."""
    numbers = set(cited_numbers(text))
    cited = [p for p in passages if p["n"] in numbers]
    if cited or not text.strip():
        return cited
    return [{**p, "cited": False} for p in passages]


def _fit_to_limits(
    parts: prompts.PromptParts, exc: llm.PromptRejected, max_tokens: int
) -> tuple[prompts.PromptParts, int] | None:
    """The prompt trimmed to the limits ``GET /info`` reports (calibrated by the count in the 422 message)."""
    limits = llm_client.server_limits()
    if limits is None:
        return None
    max_tokens = min(max_tokens, max(64, limits.max_total_tokens // 4))
    budget = min(limits.max_input_tokens - 1, limits.max_total_tokens - max_tokens)
    estimate = prompts.messages_tokens(prompts.answer_messages(parts))
    # The server counted what we sent: scale our estimate to its tokenizer (either way).
    ratio = exc.given_tokens / estimate if exc.given_tokens else 1.0
    fitted = prompts.fit(parts, int(budget * 0.9), ratio)
    return (fitted, max_tokens) if fitted is not None else None


def _extractive(out: _Output, question: str, passages: list[dict], *, note: str | None) -> Outcome:
    out.meta(mode="extractive", citations=passages, **({"note": note} if note else {}))
    for piece in extractive_pieces(question, passages, note):
        if out.should_stop():
            return Outcome(mode="extractive", citations=passages, stopped=True, notice="Stopped.")
        out.token(piece)
    return Outcome(mode="extractive", citations=passages)


def _no_answer(out: _Output) -> Outcome:
    mode = "llm" if llm_client.configured() else "extractive"
    out.meta(mode=mode, citations=[], no_answer=True)
    out.token(NO_ANSWER)
    return Outcome(mode=mode, no_answer=True)


def _from_cache(out: _Output, cached: dict) -> Outcome:
    out.meta(mode="cache", citations=cached.get("citations", []), cached_mode=cached.get("mode"))
    words = re.findall(r"\S+\s*", cached.get("answer", ""))
    for start in range(0, len(words), 8):
        out.token("".join(words[start : start + 8]))
    return Outcome(mode="cache", citations=cached.get("citations", []))


def _record_empty_retrieval(kb_id: int, question: str, top_score: float | None) -> None:
    try:
        retrievals.record_empty_retrieval(kb_id, question, top_score)
    except Exception as exc:  # monitoring must never cost an answer
        log.warning("could not record an empty retrieval: %s", exc)
