"""The only module that talks to the generation server: TGI's OpenAI-compatible Messages API (so vLLM,
llama.cpp's server and Ollama work too), streamed over HTTP by ``llm_client``.

Failure handling follows one rule: nothing is retried once a token has been shown. Before the first token,
429/503/timeouts/refused connections are retried with exponential backoff and jitter (the caller hears about
each retry); a 422 is reported as ``PromptRejected`` so the caller can trim the prompt; anything else, or
retries running out, is ``ModelUnavailable``. After the first token, a failure is ``GenerationInterrupted``.

The HTTP client and the server's ``/info`` and ``/health`` are in ``llm_client``, the request's reader thread in
``llm_stream``, the circuit breaker in ``llm_breaker``.
"""

from __future__ import annotations

import logging
import random
import re
import time
from collections.abc import Callable, Iterator

import httpx2

from infra.settings import get_settings
from rag import llm_breaker, llm_client, llm_stream

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
OnRetry = Callable[[int, float, str], None]  # (attempt number, delay in seconds, reason)
ShouldStop = Callable[[], bool]

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})


class LLMError(Exception):
    """Something about generation a person should be told; ``str(exc)`` is that message."""


class ModelUnavailable(LLMError):
    """No answer could start: the server is down, refuses, or stayed busy through every retry."""


class PromptRejected(LLMError):
    """The server refused the prompt as invalid (422), typically too long; ``given_tokens`` when it said."""

    def __init__(self, message: str, given_tokens: int | None = None) -> None:
        super().__init__(message)
        self.given_tokens = given_tokens


class FirstTokenTimeout(LLMError):
    """No token arrived within ``llm_first_token_timeout_seconds``, retries included."""


class GenerationInterrupted(LLMError):
    """The answer had started and then failed; what was streamed stays, nothing is repeated."""


class GenerationStopped(LLMError):
    """The person asked to stop."""


def stream_chat(
    messages: Messages,
    *,
    max_tokens: int | None = None,
    temperature: float | None = None,
    on_retry: OnRetry | None = None,
    should_stop: ShouldStop | None = None,
) -> Iterator[str]:
    """Stream the answer's text pieces; raises the ``LLMError`` subclasses above (see the module docstring)."""
    settings = get_settings()
    if not llm_client.configured():
        raise ModelUnavailable("No generation server is configured.")
    max_tokens = max_tokens or settings.llm_max_tokens
    temperature = settings.llm_temperature if temperature is None else temperature
    circuit = llm_breaker.open_state()
    if circuit is not None:
        raise ModelUnavailable(
            f"The language model was unavailable moments ago ({circuit['reason']}); it is tried again in "
            f"{max(1, round(circuit['seconds_left']))} s."
        )
    deadline = time.monotonic() + settings.llm_first_token_timeout_seconds
    attempt = 0
    while True:
        request = llm_stream.StreamRequest(messages, max_tokens=max_tokens, temperature=temperature)
        kind, value = request.next(deadline, should_stop)
        if kind == "token":  # the breaker is reset below, once this token is out: not on its path
            break
        if kind == "end":  # an empty answer
            llm_breaker.server_answered()
            return
        request.cancel()
        if kind == "stopped":
            raise GenerationStopped("Stopped.")
        if kind == "timeout":
            llm_breaker.server_failed(f"no first token within {settings.llm_first_token_timeout_seconds:g} s")
            raise FirstTokenTimeout(_first_token_message(settings.llm_first_token_timeout_seconds))
        retry, reason, retry_after, exc = _classify(value)
        if exc is not None:
            raise exc from value
        if attempt >= settings.llm_retries:
            llm_breaker.server_failed(reason)
            raise ModelUnavailable(
                f"The language model is unavailable ({reason}) after {attempt + 1} attempts."
            )
        delay = _backoff(attempt, settings.llm_retry_backoff_seconds, retry_after)
        attempt += 1
        if on_retry is not None:
            on_retry(attempt, delay, reason)
        _sleep(min(delay, max(0.0, deadline - time.monotonic())), should_stop)
        if time.monotonic() >= deadline:
            llm_breaker.server_failed(f"no first token within {settings.llm_first_token_timeout_seconds:g} s")
            raise FirstTokenTimeout(_first_token_message(settings.llm_first_token_timeout_seconds))

    reset_breaker = True
    try:
        yield value
        llm_breaker.server_answered()
        reset_breaker = False
        while True:
            kind, value = request.next(time.monotonic() + settings.llm_timeout_seconds, should_stop)
            if kind == "token":
                yield value
            elif kind == "end":
                return
            elif kind == "stopped":
                raise GenerationStopped("Stopped.")
            else:
                request.cancel()
                # The HTTP read timeout measures the same silence as our deadline; whichever fires first, say so.
                reason = (
                    f"no token for {settings.llm_timeout_seconds:g} s"
                    if kind == "timeout" or _timed_out(value)
                    else _describe(value)
                )
                raise GenerationInterrupted(
                    f"The language model stopped in the middle of the answer ({reason})."
                )
    finally:  # also when the caller stops reading (closes this generator): the request ends too
        request.cancel()
        if reset_breaker:  # the caller stopped at the first token: the server did answer
            llm_breaker.server_answered()


def complete(
    messages: Messages, *, max_tokens: int, temperature: float = 0.0, should_stop: ShouldStop | None = None
) -> str:
    """A whole (short) answer as one string, with the same retries and limits as ``stream_chat``."""
    return "".join(
        stream_chat(messages, max_tokens=max_tokens, temperature=temperature, should_stop=should_stop)
    )


def _first_token_message(seconds: float) -> str:
    return f"The language model did not start answering within {seconds:.0f} s."


def _classify(exc: BaseException) -> tuple[bool, str, float | None, LLMError | None]:
    """(retry?, reason, Retry-After seconds, or the error to raise now) for a failure before the first token."""
    if isinstance(exc, llm_client.ServerRefused):
        if exc.status == 422:
            return False, exc.message, None, PromptRejected(exc.message, _given_tokens(exc.message))
        if exc.status in RETRY_STATUSES:
            return True, str(exc), exc.retry_after, None
        return False, exc.message, None, ModelUnavailable(f"The language model refused the request ({exc}).")
    if isinstance(exc, llm_client.StreamFailed):
        if exc.error_type == "validation":  # a validation error sent as a stream event
            return False, str(exc), None, PromptRejected(str(exc), _given_tokens(str(exc)))
        if exc.error_type == "overloaded":
            return True, f"overloaded: {exc}", None, None
    if _timed_out(exc):
        return True, "timed out", None, None
    if isinstance(exc, httpx2.TransportError | ConnectionError):
        return True, f"cannot connect: {_describe(exc)}", None, None
    return False, _describe(exc), None, ModelUnavailable(f"The language model failed ({_describe(exc)}).")


def _timed_out(exc: BaseException) -> bool:
    """The HTTP client gave up waiting for the server (connect or read timeout)."""
    return isinstance(exc, httpx2.TimeoutException)


def _given_tokens(message: str) -> int | None:
    """How many input tokens TGI counted, from its 422 message ("... Given: 5000 `inputs` tokens ...")."""
    match = re.search(r"Given:\s*(\d+)", message)
    return int(match.group(1)) if match else None


def _backoff(attempt: int, base: float, retry_after: float | None) -> float:
    """Exponential backoff with jitter (half fixed, half random), at least what Retry-After asks."""
    delay = base * (2**attempt)
    delay = delay / 2 + random.uniform(0, delay / 2)
    return max(delay, retry_after or 0.0)


def _sleep(seconds: float, should_stop: ShouldStop | None) -> None:
    end = time.monotonic() + seconds
    while (remaining := end - time.monotonic()) > 0:
        if should_stop is not None and should_stop():
            raise GenerationStopped("Stopped.")
        time.sleep(min(remaining, llm_stream.POLL_SECONDS))


def _describe(exc: BaseException) -> str:
    text = (str(exc).splitlines() or [""])[0].strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
