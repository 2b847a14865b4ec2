"""The only module that talks to the generation server: TGI's OpenAI-compatible Messages API (so vLLM,
llama.cpp's server and Ollama work too), through ``huggingface_hub.InferenceClient``.

Failure handling follows one rule: nothing is retried once a token has been shown. Before the first token,
429/503/timeouts/refused connections are retried with exponential backoff and jitter (the caller hears about
each retry); a 422 is reported as ``PromptRejected`` so the caller can trim the prompt; anything else, or
retries running out, is ``ModelUnavailable``. After the first token, a failure is ``GenerationInterrupted``.
"""

from __future__ import annotations

import logging
import queue
import random
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from infra.settings import get_settings

log = logging.getLogger(__name__)

Messages = list[dict[str, str]]
OnRetry = Callable[[int, float, str], None]  # (attempt number, delay in seconds, reason)
ShouldStop = Callable[[], bool]

RETRY_STATUSES = frozenset({408, 429, 502, 503, 504})
_POLL_SECONDS = 0.1  # how often a wait looks at the stop flag


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


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int
    max_total_tokens: int


def configured() -> bool:
    """Whether a generation server is set (otherwise answers are extractive)."""
    return bool(get_settings().tgi_url.strip())


def _base_url() -> str:
    return get_settings().tgi_url.strip().rstrip("/")


# --- the HTTP client ----------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _install_http_client() -> None:
    """Let requests to the generation server through huggingface_hub's shared HTTP client.

    That client refuses every request when ``HF_HUB_OFFLINE`` is set (kbchat sets it so the embedding model never
    downloads, and air-gapped sites set it too). Requests to the configured server pass; Hub requests stay
    blocked. Without an API key no Authorization header goes out (not even a cached Hub token).
    """
    import httpx2
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http as hf_http

    settings = get_settings()
    target = urlsplit(_base_url())
    send_key = settings.tgi_api_key is not None

    def on_request(request: httpx2.Request) -> None:
        if (request.url.scheme, request.url.host, request.url.port) == (
            target.scheme,
            target.hostname,
            target.port,
        ):
            if not send_key:
                request.headers.pop("authorization", None)
            return
        hf_http.hf_request_event_hook(request)

    set_client_factory(
        lambda: httpx2.Client(event_hooks={"request": [on_request]}, follow_redirects=True, timeout=None)
    )


def _client(timeout: float):
    from huggingface_hub import InferenceClient

    _install_http_client()
    key = get_settings().tgi_api_key
    return InferenceClient(
        base_url=_base_url(), api_key=key.get_secret_value() if key is not None else None, timeout=timeout
    )


def reset() -> None:
    """Put huggingface_hub's own HTTP client back (tests that change the server URL)."""
    _install_http_client.cache_clear()
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http as hf_http

    set_client_factory(hf_http.default_client_factory)  # also closes the current session


# --- server information -------------------------------------------------------------------------------------


def server_limits() -> Limits | None:
    """The server's input and total token limits from ``GET /info``, or None when it does not say."""
    info = server_info()
    try:
        max_input = info.get("max_input_tokens") or info.get("max_input_length")
        return Limits(int(max_input), int(info["max_total_tokens"]))
    except (KeyError, TypeError, ValueError):
        return None


def server_info() -> dict[str, Any]:
    """``GET /info`` (TGI's model and limits); {} when the server has none or does not answer."""
    from huggingface_hub import get_session

    if not configured():
        return {}
    _install_http_client()
    try:
        response = get_session().get(f"{_base_url()}/info", timeout=5)
        return response.json() if response.status_code == 200 else {}
    except Exception as exc:  # any transport or decoding failure means "unknown"
        log.info("GET /info failed: %s", exc)
        return {}


def health() -> dict[str, Any]:
    """For monitoring: whether a server is configured and ``GET /health`` answers 200."""
    from huggingface_hub import get_session

    if not configured():
        return {
            "configured": False,
            "ok": None,
            "detail": "no generation server configured (extractive answers)",
        }
    _install_http_client()
    try:
        response = get_session().get(f"{_base_url()}/health", timeout=5)
    except Exception as exc:
        return {"configured": True, "ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    return {"configured": True, "ok": response.status_code == 200, "detail": f"HTTP {response.status_code}"}


# --- generation ---------------------------------------------------------------------------------------------


class _Request:
    """One streaming request read by a background thread, so the caller can wait with deadlines and stop.

    When the caller gives up, the thread notices at the next chunk (or when the read times out), stops
    reading and closes the response, which tells the server to stop generating.
    """

    def __init__(self, messages: Messages, *, max_tokens: int, temperature: float) -> None:
        settings = get_settings()
        self.items: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.cancelled = threading.Event()
        self._client = _client(timeout=settings.llm_timeout_seconds)
        self._kwargs = {
            "model": settings.tgi_model or None,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "stream": True,
        }
        self._messages = messages
        self._pending: tuple[str, Any] | None = None  # an item read past the tokens handed out together
        self._thread = threading.Thread(target=self._run, name="kbchat-llm", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for chunk in self._client.chat_completion(self._messages, **self._kwargs):
                if self.cancelled.is_set():
                    break
                for choice in chunk.choices or []:
                    content = choice.delta.content if choice.delta else None
                    if content:
                        self.items.put(("token", content))
            self.items.put(("end", None))
        except Exception as exc:  # handed to the caller, who classifies it
            self.items.put(("error", exc))
        finally:
            try:
                self._client.close()
            except Exception:
                pass

    def next(self, deadline: float, should_stop: ShouldStop | None) -> tuple[str, Any]:
        """The next ("token" | "end" | "error", value), or ("timeout", None) at the deadline;
        raises GenerationStopped when ``should_stop`` says so. Tokens that have already arrived come as one
        piece: a busy worker then writes one stream entry for them instead of one each (it never waits for more)."""
        while True:
            if should_stop is not None and should_stop():
                self.cancel()
                raise GenerationStopped("Stopped.")
            if self._pending is not None:
                item, self._pending = self._pending, None
                return item
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", None
            try:
                kind, value = self.items.get(timeout=min(remaining, _POLL_SECONDS if should_stop else remaining))
            except queue.Empty:
                continue
            if kind != "token":
                return kind, value
            return "token", value + self._arrived_tokens()

    def _arrived_tokens(self) -> str:
        pieces: list[str] = []
        while True:
            try:
                item = self.items.get_nowait()
            except queue.Empty:
                break
            if item[0] != "token":
                self._pending = item
                break
            pieces.append(item[1])
        return "".join(pieces)

    def cancel(self) -> None:
        self.cancelled.set()


# --- circuit breaker ------------------------------------------------------------------------------------------
# Shared by every chat worker through Redis: once the server has failed ``llm_circuit_failures`` questions in a
# row (retries used up, or no first token in time), questions skip it for ``llm_circuit_open_seconds`` and get an
# extractive answer at once, instead of each waiting through its retries. When the key expires, the next question
# tries the server again; a first token closes the breaker.
CIRCUIT_KEY = "kbchat:llm:circuit"  # set while open; value = the reason; expires when the breaker half-opens
FAILURES_KEY = "kbchat:llm:failures"  # consecutive questions the server failed


def circuit_state() -> dict[str, Any]:
    """``{"open": bool, "reason": str, "seconds_left": float, "failures": int}`` (closed when Redis cannot say)."""
    try:
        from infra.redis_client import get_redis

        r = get_redis()
        pipe = r.pipeline()
        pipe.get(CIRCUIT_KEY)
        pipe.pttl(CIRCUIT_KEY)
        pipe.get(FAILURES_KEY)
        reason, ttl_ms, failures = pipe.execute()
    except Exception:
        return {"open": False, "reason": "", "seconds_left": 0.0, "failures": 0}
    return {"open": reason is not None, "reason": reason or "", "seconds_left": max(0, ttl_ms or 0) / 1000,
            "failures": int(failures or 0)}


def _server_failed(reason: str) -> None:
    settings = get_settings()
    if settings.llm_circuit_failures <= 0:
        return
    try:
        from infra.redis_client import get_redis

        r = get_redis()
        failures = r.incr(FAILURES_KEY)
        r.expire(FAILURES_KEY, max(600, settings.llm_circuit_open_seconds * 4))
        if failures >= settings.llm_circuit_failures:
            r.set(CIRCUIT_KEY, reason[:300], ex=max(1, settings.llm_circuit_open_seconds))
            r.delete(FAILURES_KEY)
            log.warning("language model circuit open for %d s after %d failed questions: %s",
                        settings.llm_circuit_open_seconds, failures, reason)
    except Exception as exc:  # Redis trouble must not turn into an answer failure
        log.warning("could not record the model failure: %s", exc)


def _server_answered() -> None:
    try:
        from infra.redis_client import get_redis

        get_redis().delete(FAILURES_KEY)
    except Exception:
        pass


def _check_circuit() -> None:
    if get_settings().llm_circuit_failures <= 0:
        return
    state = circuit_state()
    if state["open"]:
        raise ModelUnavailable(
            f"The language model was unavailable moments ago ({state['reason']}); it is tried again in "
            f"{max(1, round(state['seconds_left']))} s."
        )


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
    if not configured():
        raise ModelUnavailable("No generation server is configured.")
    max_tokens = max_tokens or settings.llm_max_tokens
    temperature = settings.llm_temperature if temperature is None else temperature
    _check_circuit()
    deadline = time.monotonic() + settings.llm_first_token_timeout_seconds
    attempt = 0
    while True:
        request = _Request(messages, max_tokens=max_tokens, temperature=temperature)
        kind, value = request.next(deadline, should_stop)
        if kind == "token":  # the breaker is reset below, once this token is out: not on its path
            break
        if kind == "end":  # an empty answer
            _server_answered()
            return
        request.cancel()
        if kind == "timeout":
            _server_failed(f"no first token within {settings.llm_first_token_timeout_seconds:g} s")
            raise FirstTokenTimeout(_first_token_message(settings.llm_first_token_timeout_seconds))
        retry, reason, retry_after, exc = _classify(value)
        if exc is not None:
            raise exc from value
        if attempt >= settings.llm_retries:
            _server_failed(reason)
            raise ModelUnavailable(
                f"The language model is unavailable ({reason}) after {attempt + 1} attempts."
            )
        delay = _backoff(attempt, settings.llm_retry_backoff_seconds, retry_after)
        attempt += 1
        if on_retry is not None:
            on_retry(attempt, delay, reason)
        _sleep(min(delay, max(0.0, deadline - time.monotonic())), should_stop)
        if time.monotonic() >= deadline:
            _server_failed(f"no first token within {settings.llm_first_token_timeout_seconds:g} s")
            raise FirstTokenTimeout(_first_token_message(settings.llm_first_token_timeout_seconds))

    reset_breaker = True
    try:
        yield value
        _server_answered()
        reset_breaker = False
        while True:
            kind, value = request.next(time.monotonic() + settings.llm_timeout_seconds, should_stop)
            if kind == "token":
                yield value
            elif kind == "end":
                return
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
            _server_answered()


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
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError, OverloadedError, ValidationError

    if isinstance(exc, HfHubHTTPError) and exc.response is not None:
        status = exc.response.status_code
        message = _error_message(exc)
        if status == 422:
            return False, message, None, PromptRejected(message, _given_tokens(message))
        if status in RETRY_STATUSES:
            return True, f"HTTP {status}: {message}", _retry_after(exc.response), None
        return (
            False,
            message,
            None,
            ModelUnavailable(f"The language model refused the request (HTTP {status}: {message})."),
        )
    if isinstance(exc, ValidationError):  # a validation error sent as a stream event
        return False, str(exc), None, PromptRejected(str(exc), _given_tokens(str(exc)))
    if isinstance(exc, OverloadedError):
        return True, f"overloaded: {exc}", None, None
    if _timed_out(exc):
        return True, "timed out", None, None
    if isinstance(exc, httpx2.TransportError | ConnectionError):
        return True, f"cannot connect: {_describe(exc)}", None, None
    return False, _describe(exc), None, ModelUnavailable(f"The language model failed ({_describe(exc)}).")


def _timed_out(exc: BaseException) -> bool:
    """The HTTP client gave up waiting for the server (connect or read timeout)."""
    import httpx2
    from huggingface_hub.errors import InferenceTimeoutError

    return isinstance(exc, InferenceTimeoutError | httpx2.TimeoutException)


def _error_message(exc: Any) -> str:
    """TGI's ``error`` field when the body has one, else the status line."""
    try:
        body = exc.response.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])[:500]
    except Exception:
        pass
    return (str(exc).splitlines() or [type(exc).__name__])[0][:300]


def _given_tokens(message: str) -> int | None:
    """How many input tokens TGI counted, from its 422 message ("... Given: 5000 `inputs` tokens ...")."""
    match = re.search(r"Given:\s*(\d+)", message)
    return int(match.group(1)) if match else None


def _retry_after(response: Any) -> float | None:
    try:
        return float(response.headers.get("retry-after"))
    except (TypeError, ValueError):
        return None


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
        time.sleep(min(remaining, _POLL_SECONDS))


def _describe(exc: BaseException) -> str:
    text = (str(exc).splitlines() or [""])[0].strip()
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
