"""rag/llm.py against the TGI test server: streaming, retries before the first token only, 422, timeouts,
stop, dropped connections, and the offline-mode and credential details of the HTTP client."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Iterator

import pytest

from rag import llm, llm_client, llm_stream
from tests.tgi_server import TGIServer

FAST = {
    "KBCHAT_LLM_RETRY_BACKOFF_SECONDS": "0.01",
    "KBCHAT_LLM_RETRIES": "3",
    "KBCHAT_LLM_FIRST_TOKEN_TIMEOUT_SECONDS": "10",
    "KBCHAT_LLM_TIMEOUT_SECONDS": "5",
}


def configure(**env: str | None) -> None:
    """Set KBCHAT_* variables (None removes one) and make the settings see them."""
    from infra.settings import get_settings

    for key, value in env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    get_settings.cache_clear()


@pytest.fixture
def tgi() -> Iterator[TGIServer]:
    saved = {key: os.environ.get(key) for key in [*FAST, "KBCHAT_TGI_URL", "KBCHAT_TGI_API_KEY"]}
    with TGIServer() as server:
        configure(KBCHAT_TGI_URL=server.url, KBCHAT_TGI_API_KEY=None, **FAST)
        try:
            yield server
        finally:
            configure(**saved)


QUESTION = [{"role": "user", "content": "Why did the engine stop?"}]


def test_streams_the_answer(tgi):
    tgi.behaviour.answer = "Fuel exhaustion [1], the report says [2]."
    tgi.behaviour.token_latency = 0.01  # tokens that have already arrived are handed out together
    pieces = list(llm.stream_chat(QUESTION, max_tokens=50))
    assert len(pieces) > 1 and "".join(pieces) == tgi.behaviour.answer
    body = tgi.chat_requests()[-1]
    assert body["stream"] is True and body["max_tokens"] == 50 and body["messages"] == QUESTION


def test_tokens_that_already_arrived_come_as_one_piece():
    """A worker that falls behind the model writes one stream entry for what is waiting, not one per token;
    what follows the tokens (the end, an error) is still handed out after them."""
    import queue
    import threading

    request = object.__new__(llm_stream.StreamRequest)  # no thread, no server: only the hand-out
    request.items, request.cancelled, request._pending = queue.Queue(), threading.Event(), None
    for item in [("token", "Fuel "), ("token", "exhaustion"), ("token", " [1]."), ("end", None)]:
        request.items.put(item)
    deadline = time.monotonic() + 1
    assert request.next(deadline, None) == ("token", "Fuel exhaustion [1].")
    assert request.next(deadline, None) == ("end", None)
    assert request.next(time.monotonic() + 0.05, None) == ("timeout", None)


def test_busy_server_is_retried_before_the_first_token(tgi):
    tgi.behaviour.fail_statuses = [429, 503, 429]
    retries: list[tuple[int, float, str]] = []
    answer = "".join(llm.stream_chat(QUESTION, on_retry=lambda *a: retries.append(a)))
    assert answer == tgi.behaviour.answer
    assert [attempt for attempt, _, _ in retries] == [1, 2, 3]
    assert "429" in retries[0][2] and "503" in retries[1][2]
    assert [r["status"] for r in tgi.requests] == [429, 503, 429, 200]


def test_backoff_grows_with_jitter():
    delays = [llm._backoff(attempt, 1.0, None) for attempt in range(5)]
    for attempt, delay in enumerate(delays):
        assert 2**attempt / 2 <= delay <= 2**attempt
    assert llm._backoff(0, 1.0, retry_after=3.0) == 3.0


def test_retries_run_out(tgi):
    tgi.behaviour.fail_statuses = [503] * 10
    with pytest.raises(llm.ModelUnavailable, match="after 4 attempts"):
        list(llm.stream_chat(QUESTION))
    assert len(tgi.requests) == 4


def test_refused_connection_is_retried_then_unavailable(tgi):
    with socket.socket() as sock:  # a port nobody listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    configure(KBCHAT_TGI_URL=f"http://127.0.0.1:{port}")
    retries = []
    with pytest.raises(llm.ModelUnavailable, match="cannot connect"):
        list(llm.stream_chat(QUESTION, on_retry=lambda *a: retries.append(a)))
    assert len(retries) == 3


def test_other_client_errors_are_not_retried(tgi):
    tgi.behaviour.fail_statuses = [424]
    with pytest.raises(llm.ModelUnavailable, match="424"):
        list(llm.stream_chat(QUESTION))
    assert len(tgi.requests) == 1


def test_422_is_reported_with_the_token_count_and_not_retried(tgi):
    tgi.behaviour.max_input_tokens = 10
    with pytest.raises(llm.PromptRejected) as caught:
        list(llm.stream_chat([{"role": "user", "content": "word " * 40}]))
    assert caught.value.given_tokens == 40 and "less than 10 tokens" in str(caught.value)
    assert len(tgi.requests) == 1


def test_error_after_the_first_token_ends_the_answer_without_retry(tgi):
    tgi.behaviour.answer = "one two three four five six"
    tgi.behaviour.error_after_tokens = 3
    pieces: list[str] = []
    with pytest.raises(llm.GenerationInterrupted, match="CUDA out of memory"):
        for piece in llm.stream_chat(QUESTION):
            pieces.append(piece)
    assert "".join(pieces) == "one two three"
    assert len(tgi.requests) == 1


def test_dropped_connection_after_the_first_token(tgi):
    tgi.behaviour.answer = "one two three four five six"
    tgi.behaviour.drop_after_tokens = 2
    pieces: list[str] = []
    with pytest.raises(llm.GenerationInterrupted):
        for piece in llm.stream_chat(QUESTION):
            pieces.append(piece)
    assert "".join(pieces) == "one two"
    assert len(tgi.requests) == 1


def test_first_token_timeout(tgi):
    configure(KBCHAT_LLM_FIRST_TOKEN_TIMEOUT_SECONDS="0.5")
    tgi.behaviour.first_token_delay = 3
    started = time.monotonic()
    with pytest.raises(llm.FirstTokenTimeout, match="within 0 s|within 1 s"):
        list(llm.stream_chat(QUESTION))
    assert time.monotonic() - started < 2


def test_silence_after_the_first_token_interrupts(tgi):
    configure(KBCHAT_LLM_TIMEOUT_SECONDS="0.5")
    tgi.behaviour.answer = "one two three"
    tgi.behaviour.token_latency = 2
    with pytest.raises(llm.GenerationInterrupted, match="no token"):
        list(llm.stream_chat(QUESTION))


def test_stop_ends_the_stream_and_the_request(tgi):
    tgi.behaviour.answer = " ".join(f"w{i}" for i in range(100))
    tgi.behaviour.token_latency = 0.02
    pieces: list[str] = []
    with pytest.raises(llm.GenerationStopped):
        for piece in llm.stream_chat(QUESTION, should_stop=lambda: len(pieces) >= 3):
            pieces.append(piece)
    assert len(pieces) == 3


def test_limits_come_from_info(tgi):
    tgi.behaviour.max_input_tokens, tgi.behaviour.max_total_tokens = 1000, 1500
    assert llm_client.server_limits() == llm_client.Limits(1000, 1500)
    assert llm_client.health() == {"configured": True, "ok": True, "detail": "HTTP 200"}
    tgi.behaviour.healthy = False
    assert llm_client.health()["ok"] is False


def test_works_in_hub_offline_mode_without_leaking_a_token(tgi, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_hub_token")
    assert "".join(llm.stream_chat(QUESTION)) == tgi.behaviour.answer
    assert "authorization" not in tgi.requests[-1]["headers"]


def test_api_key_is_sent_when_configured(tgi):
    configure(KBCHAT_TGI_API_KEY="s3cret")
    list(llm.stream_chat(QUESTION))
    assert tgi.requests[-1]["headers"]["authorization"] == "Bearer s3cret"


def test_not_configured_is_unavailable():
    from infra.settings import get_settings

    saved = os.environ.pop("KBCHAT_TGI_URL", None)
    get_settings.cache_clear()
    try:
        assert not llm_client.configured()
        with pytest.raises(llm.ModelUnavailable):
            list(llm.stream_chat(QUESTION))
    finally:
        configure(KBCHAT_TGI_URL=saved)
