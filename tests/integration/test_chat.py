"""Chat through real workers on Celery and on Dramatiq, against the TGI test server: streamed LLM answers with
page citations, retries before the first token, mid-stream failures, 422 trimming, stop, first-token timeout,
the answer cache and its invalidation, follow-up rewriting and conversation summaries.

The module runs its own worker per backend, with KBCHAT_TGI_URL pointing at the test server, on a separate
Redis database: workers other modules started (without a generation server) never take these chat tasks.
"""

from __future__ import annotations

import json
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from tests.conftest import (
    BACKENDS,
    _reset_caches,
    make_pdf,
    run_cli,
    start_worker,
    stop_worker,
    upload,
    wait_for_documents,
    wait_until,
)
from tests.tgi_server import TGIServer, count_tokens, split_tokens

pytestmark = pytest.mark.integration

FIRST_TOKEN_TIMEOUT = 3
WORKER_ENV = {
    "KBCHAT_LLM_RETRIES": "3",
    "KBCHAT_LLM_RETRY_BACKOFF_SECONDS": "0.05",
    "KBCHAT_LLM_FIRST_TOKEN_TIMEOUT_SECONDS": str(FIRST_TOKEN_TIMEOUT),
    "KBCHAT_LLM_TIMEOUT_SECONDS": "3",
    "KBCHAT_HISTORY_TOKEN_BUDGET": "120",
    "KBCHAT_LLM_CIRCUIT_FAILURES": "2",
    "KBCHAT_LLM_CIRCUIT_OPEN_SECONDS": "3",
}

CABLE = (
    "Divers from the harbour authority repaired the submarine telegraph cable near the harbour mouth in March, "
    "after a trawler snagged it during a storm. The repair took four days and restored the telegraph link to the "
    "island. The divers spliced a new section of armoured cable between two buoys."
)
LIGHTHOUSE = [
    "The lighthouse keeper logged a northerly gale on the first night of November. Waves reached the lantern "
    "gallery and the keeper lit the spare lamp at midnight. The log notes that the foghorn ran for nine hours.",
    "On the second night the lighthouse keeper logged that the gale had turned westerly. The keeper climbed to the "
    "lantern room every hour to clean salt from the glass, and recorded each ship that passed the point.",
    "In his log the lighthouse keeper wrote that the supply boat could not land for a week because of the gale. "
    "The lighthouse keeper rationed the lamp oil and logged the barometer readings four times a day.",
]
VOLCANO = (
    "A volcanic eruption buried the apricot orchard under grey ash. The farmers harvested nothing that year and "
    "the cooperative paid them from its reserve fund."
)
ANSWER = "Divers repaired the submarine telegraph cable [1], in four days [1]. An invented source [9]."


@dataclass
class Stack:
    backend: str
    tgi: TGIServer
    kb_id: int
    kb_name: str
    document: str
    log: Callable[[], str]


def _other_redis_db(url: str) -> str:
    base, _, db = url.rpartition("/")
    return f"{base}/{15 if db == '1' else 1}" if db.isdigit() else url.rstrip("/") + "/1"


@pytest.fixture(scope="module", params=BACKENDS)
def stack(request, services, tmp_path_factory) -> Iterator[Stack]:
    backend = request.param
    saved = {key: os.environ.get(key) for key in ("KBCHAT_TASK_BACKEND", "KBCHAT_REDIS_URL")}
    os.environ["KBCHAT_TASK_BACKEND"] = backend
    os.environ["KBCHAT_REDIS_URL"] = _other_redis_db(services["redis_url"])
    _reset_caches()
    tgi = TGIServer().start()
    log_path = tmp_path_factory.mktemp(f"chat-{backend}") / "worker.log"
    handle = start_worker(
        backend,
        log_path,
        queues="ingest,chat,maintenance",
        extra_env={"KBCHAT_TGI_URL": tgi.url, **WORKER_ENV},
    )
    try:
        from infra.database import session_scope
        from rag.library import get_or_create_kb

        name = f"chat-{backend}-{uuid.uuid4().hex[:6]}"
        with session_scope() as session:
            kb_id = get_or_create_kb(session=session, name=name).id
        pdf = make_pdf([CABLE, *LIGHTHOUSE, VOLCANO])
        outcome = upload(kb_id, "harbour-log.pdf", pdf)
        document = wait_for_documents([outcome.document_id])[outcome.document_id]
        assert document.status == "ready", document.error
        yield Stack(backend, tgi, kb_id, name, "harbour-log.pdf", handle.log)
    finally:
        stop_worker(handle)
        tgi.stop()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        _reset_caches()


@pytest.fixture(autouse=True)
def fresh_behaviour(stack):
    from infra.redis_client import get_redis
    from rag import llm_breaker

    get_redis().delete(llm_breaker.CIRCUIT_KEY, llm_breaker.FAILURES_KEY)  # each test starts with the breaker closed
    stack.tgi.behaviour.reset()
    stack.tgi.behaviour.answer = ANSWER
    yield stack.tgi.behaviour


@dataclass
class Run:
    task_id: str
    events: list[tuple[str, Any]]

    def of(self, kind: str) -> list[Any]:
        return [data for k, data in self.events if k == kind]

    @property
    def text(self) -> str:
        return "".join(self.of("token"))

    @property
    def meta(self) -> dict:
        return (self.of("meta") or [{}])[0]

    @property
    def done(self) -> dict:
        return (self.of("done") or [{}])[0]

    def result(self) -> dict:
        from telemetry.events import wait_for_result

        return wait_for_result(self.task_id, timeout=30)


def ask(
    kb_id: int,
    question: str,
    conversation_id: int | None = None,
    on_token: Callable[[str, int], None] | None = None,
    document_ids: list[int] | None = None,
) -> Run:
    """Enqueue chat.answer as the page does and read its stream to the end."""
    from telemetry.answer_streams import follow
    from tests.conftest import enqueue

    task_id = enqueue("chat.answer", kb_id, question, conversation_id, document_ids)
    events: list[tuple[str, Any]] = []
    tokens = 0
    for kind, data in follow(task_id, timeout=30):
        events.append((kind, data))
        if kind == "token":
            tokens += 1
            if on_token is not None:
                on_token(task_id, tokens)
    return Run(task_id, events)


def new_conversation(kb_id: int) -> int:
    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope

    with session_scope() as session:
        return conversation_repo.create(session=session, kb_id=kb_id, title="test").id


def say(kb_id: int, conversation_id: int, question: str) -> Run:
    """A turn the way the chat page takes it: the question is stored, then answered."""
    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope

    with session_scope() as session:
        conversation_repo.add_message(
            session=session, conversation_id=conversation_id, role="user", content=question
        )
    return ask(kb_id, question, conversation_id)


def saved_messages(conversation_id: int) -> list[tuple[str, str, str | None, list]]:
    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope

    with session_scope() as session:
        return [
            (m.role, m.content, m.mode, m.citations)
            for m in conversation_repo.messages(session=session, conversation_id=conversation_id)
        ]


def answer_requests(tgi: TGIServer) -> list[dict]:
    """The chat requests that asked for an answer (not a rewrite or a summary)."""
    return [b for b in tgi.chat_requests() if b["messages"][0]["content"].startswith("You answer questions")]


# --- answers ---------------------------------------------------------------------------------------------------


def test_an_answer_that_cites_nothing_still_shows_the_passages_it_was_given(stack, fresh_behaviour):
    fresh_behaviour.answer = "Divers repaired the cable in four days."  # no [n] marker: small models do this
    conversation_id = new_conversation(stack.kb_id)
    # A question no other test asks: the answer cache would otherwise hand this answer to the next test.
    run = say(stack.kb_id, conversation_id, "Which crew mended the submarine telegraph cable?")

    assert run.done["mode"] == "llm" and run.text == "Divers repaired the cable in four days."
    given = run.done["citations"]
    assert given and [c["n"] for c in given] == [c["n"] for c in run.meta["citations"]]
    assert all(c["cited"] is False for c in given)
    assert any("telegraph" in c["text"] for c in given)
    *_, citations = saved_messages(conversation_id)[-1]
    assert [c["n"] for c in citations] == [c["n"] for c in given] and all(c["cited"] is False for c in citations)


def test_llm_answer_streams_with_page_citations(stack, fresh_behaviour):
    fresh_behaviour.token_latency = 0.01  # tokens that arrive together are written together
    conversation_id = new_conversation(stack.kb_id)
    run = say(stack.kb_id, conversation_id, "Who repaired the submarine telegraph cable?")

    assert run.meta["mode"] == "llm" and run.meta["citations"]
    assert len(run.of("token")) > 5  # streamed, not one block
    assert (
        run.text
        == "Divers repaired the submarine telegraph cable [1], in four days [1]. An invented source ."
    )
    assert run.done["mode"] == "llm" and not run.of("error")
    cited = run.done["citations"]
    assert [c["n"] for c in cited] == [1]  # [9] points at no passage: dropped from text and citations
    assert (
        cited[0]["document"] == stack.document and cited[0]["page"] == 1 and "telegraph" in cited[0]["text"]
    )
    assert cited[0]["score"] >= 0.2 and isinstance(cited[0]["chunk_id"], int)

    prompt = answer_requests(stack.tgi)[-1]
    assert prompt["stream"] is True
    assert (
        "untrusted" in prompt["messages"][0]["content"]
        and '<passage n="1"' in prompt["messages"][-1]["content"]
    )
    assert "Who repaired the submarine telegraph cable?" in prompt["messages"][-1]["content"]

    role, content, mode, citations = saved_messages(conversation_id)[-1]
    assert (role, mode) == ("assistant", "llm") and content == run.text
    assert [c["n"] for c in citations] == [1] and citations[0]["page"] == 1


def test_busy_model_is_retried_and_the_reader_is_told(stack, fresh_behaviour):
    fresh_behaviour.fail_statuses = [429, 429, 503]
    run = ask(stack.kb_id, "Which vessel snagged the telegraph cable?")
    statuses = run.of("status")
    assert [s["code"] for s in statuses] == ["retrying"] * 3
    assert "busy, retrying" in statuses[0]["message"]
    assert [kind for kind, _ in run.events].index("token") > [kind for kind, _ in run.events].index("status")
    assert run.meta["mode"] == "llm" and run.text.startswith("Divers repaired")
    assert [r["status"] for r in stack.tgi.requests if r["path"] == "/v1/chat/completions"][-4:] == [
        429,
        429,
        503,
        200,
    ]


@pytest.mark.parametrize("failure", ["error_after_tokens", "drop_after_tokens"])
def test_failure_mid_stream_ends_with_a_notice_and_no_repeated_tokens(stack, fresh_behaviour, failure):
    setattr(fresh_behaviour, failure, 4)
    before = len(stack.tgi.chat_requests())
    conversation_id = new_conversation(stack.kb_id)
    run = say(stack.kb_id, conversation_id, "How long did the cable repair take?")
    assert run.text == "".join(split_tokens(ANSWER)[:4])  # exactly what the server sent, once
    notices = run.of("notice")
    assert (
        len(notices) == 1
        and "stopped in the middle of the answer" in notices[0]
        and "incomplete" in notices[0]
    )
    assert run.done["interrupted"] is True and not run.of("error")
    assert len(stack.tgi.chat_requests()) == before + 1  # never retried after the first token
    assert saved_messages(conversation_id)[-1][1].endswith(f"*{notices[0]}*")


def test_model_down_falls_back_to_a_labelled_extractive_answer(stack, fresh_behaviour):
    fresh_behaviour.fail_statuses = [503] * 20
    run = ask(stack.kb_id, "Where did the divers splice the new cable section?")
    assert len(run.of("status")) == 3
    assert run.meta["mode"] == "extractive" and "unavailable" in run.meta["note"]
    assert run.text.startswith("*The language model is unavailable") and "most relevant passages" in run.text
    assert re.search(r"\[\d+\]", run.text) and stack.document in run.text  # its lead sentences, cited
    assert run.done["mode"] == "extractive" and run.done["citations"]


def test_after_questions_in_a_row_fail_the_breaker_answers_at_once_then_tries_the_server_again(stack,
                                                                                                fresh_behaviour):
    """Two questions in a row find the server down (the worker's breaker threshold): the next one is answered from
    the passages at once, without asking the server or waiting through retries; once the breaker's time is up and
    the server is back, answers come from the model again."""
    from rag import llm_breaker

    fresh_behaviour.fail_statuses = [503] * 40
    for question in ("Where did the divers splice the new cable section?", "Who repaired the telegraph cable?"):
        run = ask(stack.kb_id, question)
        assert run.meta["mode"] == "extractive" and len(run.of("status")) == 3  # retried, then gave up
    assert llm_breaker.circuit_state()["open"]
    asked_before = len(stack.tgi.chat_requests())
    run = ask(stack.kb_id, "How long did the cable repair take?")
    assert run.meta["mode"] == "extractive" and "tried again in" in run.meta["note"], run.meta
    assert not run.of("status"), "no retries while the breaker is open"
    assert len(stack.tgi.chat_requests()) == asked_before, "the server was not asked"
    assert run.done["citations"] and re.search(r"\[\d+\]", run.text)

    fresh_behaviour.fail_statuses = []
    wait_until(lambda: not llm_breaker.circuit_state()["open"], 15, "the breaker to let the next question through")
    healed = ask(stack.kb_id, "How long did the cable repair take?")
    assert healed.meta["mode"] == "llm" and healed.text.startswith("Divers repaired")
    assert llm_breaker.circuit_state()["failures"] == 0


def test_prompt_over_the_limit_is_trimmed_to_info_and_retried_once(stack, fresh_behaviour):
    run = ask(stack.kb_id, "What did the lighthouse keeper log during the gale?")
    full = answer_requests(stack.tgi)[-1]
    assert run.meta["mode"] == "llm" and len(run.meta["citations"]) >= 2
    full_tokens = sum(count_tokens(m["content"]) for m in full["messages"])
    fresh_behaviour.max_input_tokens = int(full_tokens * 0.7)
    fresh_behaviour.max_total_tokens = 100_000
    statuses_before = [r["status"] for r in stack.tgi.requests]

    run = ask(stack.kb_id, "What did the keeper of the lighthouse write in his log during the gale?")
    after = stack.tgi.requests[len(statuses_before) :]
    assert [r["status"] for r in after if r["path"] == "/v1/chat/completions"] == [422, 200], (
        run.text,
        after,
    )
    assert any(r["path"] == "/info" for r in after)
    assert [s["code"] for s in run.of("status")] == ["trimmed"]
    assert run.meta["mode"] == "llm" and run.text.startswith("Divers")
    trimmed = answer_requests(stack.tgi)[-1]
    assert sum(count_tokens(m["content"]) for m in trimmed["messages"]) < fresh_behaviour.max_input_tokens
    assert trimmed["messages"][-1]["content"].count("<passage ") < len(run.meta["citations"]) + 1


def test_prompt_that_cannot_fit_tells_the_user_why(stack, fresh_behaviour):
    fresh_behaviour.max_input_tokens = 5
    run = ask(stack.kb_id, "What did the farmers harvest after the eruption?")
    assert run.meta["mode"] == "extractive"
    assert "could not take this question" in run.text and "less than 5 tokens" in run.text


# --- stop and timeouts -----------------------------------------------------------------------------------------


def test_stop_ends_the_answer_and_the_stream(stack, fresh_behaviour):
    from telemetry.answer_streams import request_stop

    fresh_behaviour.answer = " ".join(f"word{i}" for i in range(300))
    fresh_behaviour.token_latency = 0.02
    conversation_id = new_conversation(stack.kb_id)
    stopped_at: list[int] = []

    def stop_after_five(task_id: str, count: int) -> None:
        if count == 5:
            request_stop(task_id)
            stopped_at.append(count)

    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope

    with session_scope() as session:
        conversation_repo.add_message(
            session=session,
            conversation_id=conversation_id,
            role="user",
            content="Tell me everything about the cable.",
        )
    started = time.monotonic()
    run = ask(stack.kb_id, "Tell me everything about the cable.", conversation_id, on_token=stop_after_five)
    assert stopped_at == [5]
    assert run.of("notice") == ["Stopped."] and run.done["stopped"] is True
    assert 5 <= len(run.of("token")) < 100 and time.monotonic() - started < 5
    assert saved_messages(conversation_id)[-1][1].endswith("*Stopped.*")


def test_no_first_token_in_time_says_so_and_keeps_the_question(stack, fresh_behaviour):
    fresh_behaviour.first_token_delay = FIRST_TOKEN_TIMEOUT + 3
    conversation_id = new_conversation(stack.kb_id)
    started = time.monotonic()
    run = say(stack.kb_id, conversation_id, "When was the cable snagged?")
    waited = time.monotonic() - started
    (error,) = run.of("error")
    assert error["code"] == "first_token_timeout" and f"within {FIRST_TOKEN_TIMEOUT} s" in error["message"]
    assert FIRST_TOKEN_TIMEOUT - 0.5 <= waited < FIRST_TOKEN_TIMEOUT + 3
    assert not run.of("token")
    assert [role for role, *_ in saved_messages(conversation_id)] == ["user"]  # the question stays, no answer


# --- cache, retrieval records ----------------------------------------------------------------------------------


def test_cache_hit_on_a_repeat_and_miss_after_an_ingest(stack, kb):
    kb_id, _ = kb
    outcome = upload(kb_id, "cable.txt", CABLE.encode())
    assert wait_for_documents([outcome.document_id])[outcome.document_id].status == "ready"

    first = ask(kb_id, "How long did the repair of the telegraph cable take?")
    assert first.meta["mode"] == "llm"
    requests = len(stack.tgi.chat_requests())

    again = ask(kb_id, "  how long did the repair of the TELEGRAPH cable take ")
    assert (
        again.meta["mode"] == "cache" and again.done["mode"] == "cache" and again.meta["cached_mode"] == "llm"
    )
    assert again.text == first.text and again.done["citations"] == first.done["citations"]
    assert len(stack.tgi.chat_requests()) == requests  # the model was not asked

    outcome = upload(kb_id, "volcano.txt", VOLCANO.encode())  # any ingest bumps the base's version
    assert wait_for_documents([outcome.document_id])[outcome.document_id].status == "ready"
    after = ask(kb_id, "How long did the repair of the telegraph cable take?")
    assert after.meta["mode"] == "llm" and len(stack.tgi.chat_requests()) == requests + 1


def test_question_the_base_cannot_answer_is_recorded(stack):
    from telemetry import retrievals

    requests = len(stack.tgi.chat_requests())
    question = f"How do I reset my password for the payroll portal ({uuid.uuid4().hex[:6]})?"
    run = ask(stack.kb_id, question)
    assert run.meta["no_answer"] is True and run.done["no_answer"] is True
    assert "does not seem to contain an answer" in run.text and run.done["citations"] == []
    assert len(stack.tgi.chat_requests()) == requests  # no passage, no prompt
    recorded = [e for e in retrievals.recent_empty_retrievals(50) if e["question"] == question]
    assert recorded and recorded[0]["kb_id"] == str(stack.kb_id) and float(recorded[0]["top_score"]) < 0.2


def test_hybrid_search_finds_exact_terms_and_keeps_to_chosen_documents(stack, kb):
    from infra.database import session_scope
    from rag.retrieval import search

    kb_id, _ = kb
    order = upload(
        kb_id,
        "orders.txt",
        b"Maintenance order XK-4471 replaced the left magneto of the trainer. "
        b"The mechanic signed the logbook and returned the aircraft to service the same afternoon.",
    )
    harbour = upload(
        kb_id,
        "harbour.txt",
        b"The harbour master logged the ferry departures and the magneto "
        b"repair of the pilot boat engine. The pilot boat returned to service the next morning.",
    )
    documents = wait_for_documents([order.document_id, harbour.document_id])
    assert {d.status for d in documents.values()} == {"ready"}

    with session_scope() as session:
        hits = search(session=session, kb_id=kb_id, question="XK-4471")
        scoped = search(
            session=session, kb_id=kb_id, question="magneto repair", document_ids=[harbour.document_id]
        )
    assert hits[0].document == "orders.txt" and hits[0].text_rank == 1  # full-text found the code
    assert hits[0].vector_rank is not None and 0 < hits[0].score <= 1  # the cosine is kept for the threshold
    assert scoped and {h.document for h in scoped} == {"harbour.txt"}

    run = ask(kb_id, "Which part did the maintenance order replace?", document_ids=[order.document_id])
    assert run.done["citations"] and {c["document"] for c in run.done["citations"]} == {"orders.txt"}


# --- conversations ---------------------------------------------------------------------------------------------


def _responder(rewrite: str | None, summary: str = "SUMMARY: the user asked about the harbour cable repair."):
    """Answers rewrite requests with ``rewrite`` (None: the last question as it was) and summary requests with
    ``summary``; everything else gets the canned answer."""

    def respond(body: dict) -> str | None:
        system = body["messages"][0]["content"]
        if system.startswith("Rewrite the user's last question"):
            return rewrite or body["messages"][-1]["content"].rsplit("Last question: ", 1)[-1]
        if system.startswith("Summarise this conversation"):
            return summary
        return None

    return respond


def test_follow_up_is_rewritten_before_retrieval(stack, fresh_behaviour):
    fresh_behaviour.responder = _responder("When did the divers repair the submarine telegraph cable?")
    conversation_id = new_conversation(stack.kb_id)
    say(stack.kb_id, conversation_id, "Who repaired the submarine telegraph cable?")
    run = say(stack.kb_id, conversation_id, "When did they do it?")

    result = run.result()
    assert result["rewritten"] == "llm"
    assert result["standalone_question"] == "When did the divers repair the submarine telegraph cable?"
    rewrite = [b for b in stack.tgi.chat_requests() if b["messages"][0]["content"].startswith("Rewrite")][-1]
    assert "Who repaired the submarine telegraph cable?" in rewrite["messages"][1]["content"]
    assert "When did they do it?" in rewrite["messages"][1]["content"]
    assert run.done["citations"][0]["page"] == 1  # the cable page, found through the rewritten question

    prompt = answer_requests(stack.tgi)[-1]["messages"]
    assert [m["role"] for m in prompt] == ["system", "user", "assistant", "user"]  # the earlier turn is there
    assert prompt[-1]["content"].endswith("Question: When did they do it?")


def test_long_conversation_is_summarised_and_the_summary_used(stack, fresh_behaviour):
    from db.repositories import conversations as conversation_repo
    from infra.database import session_scope

    fresh_behaviour.responder = _responder(None)
    conversation_id = new_conversation(stack.kb_id)
    questions = [
        "Who repaired the submarine telegraph cable near the harbour mouth?",
        "What did the lighthouse keeper log on the first night of the gale?",
        "Why could the supply boat not land at the lighthouse for a week?",
        "What did the volcanic eruption bury under grey ash that year?",
    ]
    wanted_summary = None
    for question in questions:
        run = say(stack.kb_id, conversation_id, question)
        if run.result()["summarize"]:
            wanted_summary = question
            break
    assert wanted_summary is not None, "the history never exceeded its 120-token budget"

    def summary():
        with session_scope() as session:
            row = conversation_repo.latest_summary(session=session, conversation_id=conversation_id)
            return (row.content, row.mode, row.up_to_message_id) if row else None

    content, mode, up_to = wait_until(summary, 30, "chat.summarize wrote no summary")
    assert (content, mode) == ("SUMMARY: the user asked about the harbour cable repair.", "llm")
    summarised = [b for b in stack.tgi.chat_requests() if b["messages"][0]["content"].startswith("Summarise")]
    assert "Who repaired the submarine telegraph cable" in summarised[-1]["messages"][-1]["content"]

    say(stack.kb_id, conversation_id, "How many times a day did the keeper read the barometer?")
    system = answer_requests(stack.tgi)[-1]["messages"][0]["content"]
    assert (
        "Summary of the earlier conversation:\nSUMMARY: the user asked about the harbour cable repair."
        in system
    )
    later = answer_requests(stack.tgi)[-1]["messages"][1:-1]
    assert all("Who repaired the submarine telegraph cable" not in m["content"] for m in later)


# --- the command line ------------------------------------------------------------------------------------------


def test_cli_ask_json_with_the_model(stack):
    proc = run_cli(
        "ask",
        "Who spliced a new section of armoured cable?",
        "--kb",
        stack.kb_name,
        "--json",
        "--timeout",
        "30",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(proc.stdout)
    assert data["mode"] == "llm" and data["answer"].startswith("Divers repaired")
    assert [c["n"] for c in data["citations"]] == [1]
    assert {"document", "page", "chunk_id", "score", "text"} <= set(data["citations"][0])
    assert data["citations"][0]["document"] == stack.document
    assert {"first_token_ms", "total_ms", "end_to_end_ms", "end_to_end_first_token_ms"} <= set(
        data["timings"]
    )
