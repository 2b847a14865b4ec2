"""The HTTP side of the generation server: which one is configured, the streamed Messages API request, and its
``/info`` and ``/health``."""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx2

from infra.settings import get_settings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Limits:
    max_input_tokens: int
    max_total_tokens: int


def configured() -> bool:
    """Whether a generation server is set (otherwise answers are extractive)."""
    return bool(get_settings().tgi_url.strip())


def base_url() -> str:
    return get_settings().tgi_url.strip().rstrip("/")


# --- the HTTP client ----------------------------------------------------------------------------------------
# kbchat's own client, not huggingface_hub's: that one refuses every request when HF_HUB_OFFLINE is set (the Docker
# image sets it, and so do air-gapped sites) and sends a cached Hub token along; letting requests through would
# mean replacing its process-wide client factory. Only the configured API key is ever sent.


class ServerRefused(Exception):
    """The server answered with an error status; ``message`` is TGI's ``error`` field or the status line."""

    def __init__(self, status: int, message: str, retry_after: float | None = None) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status, self.message, self.retry_after = status, message, retry_after


class StreamFailed(Exception):
    """An error event inside the stream (TGI: ``{"error", "error_type"}``)."""

    def __init__(self, message: str, error_type: str | None) -> None:
        super().__init__(message)
        self.error_type = error_type


def http_client(timeout: float) -> httpx2.Client:
    """A client for the configured server: its API key (if any) as a bearer token, ``timeout`` per connect/read."""
    key = get_settings().tgi_api_key
    headers = {"authorization": f"Bearer {key.get_secret_value()}"} if key is not None else {}
    return httpx2.Client(headers=headers, timeout=timeout, follow_redirects=True)


_shared: tuple[object, httpx2.Client] | None = None
_shared_lock = threading.Lock()


def shared_client() -> httpx2.Client:
    """The process's client for the generation server, shared by every answer (its connections are kept open and
    reused). Making a client costs tens of milliseconds (its certificate store), which an answer would otherwise
    pay before its first token. Made again when the server's key setting changes; forgotten after a fork."""
    global _shared
    key = get_settings().tgi_api_key
    identity = key.get_secret_value() if key is not None else None
    with _shared_lock:
        if _shared is None or _shared[0] != identity:
            if _shared is not None:
                _shared[1].close()
            _shared = (identity, http_client(timeout=get_settings().llm_timeout_seconds))
        return _shared[1]


def _forget_shared() -> None:
    global _shared, _shared_lock
    _shared, _shared_lock = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_shared)


def chat_url() -> str:
    """The OpenAI-compatible Messages endpoint under the configured URL (which may end in ``/v1``)."""
    base = base_url()
    return f"{base}/chat/completions" if base.endswith("/v1") else f"{base}/v1/chat/completions"


def stream_chat(
    client: httpx2.Client, messages: list[dict[str, str]], *, max_tokens: int, temperature: float,
    timeout: float | None = None,
) -> Iterator[str]:
    """The answer's text pieces as the server streams them (server-sent events); closing the iterator closes the
    response, which tells the server to stop. Raises ServerRefused, StreamFailed or httpx2's transport errors."""
    body = {"model": get_settings().tgi_model or "tgi", "messages": messages, "max_tokens": max_tokens,
            "temperature": temperature, "stream": True}
    with client.stream("POST", chat_url(), json=body,
                       timeout=timeout if timeout is not None else httpx2.USE_CLIENT_DEFAULT) as response:
        if response.status_code >= 400:
            response.read()
            raise ServerRefused(response.status_code, _error_message(response), _retry_after(response))
        for line in response.iter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:"):].strip()
            if data == "[DONE]":
                return
            event = json.loads(data)
            if event.get("error"):
                raise StreamFailed(str(event["error"]), event.get("error_type"))
            for choice in event.get("choices") or []:
                content = (choice.get("delta") or {}).get("content")
                if content:
                    yield content


def _error_message(response: httpx2.Response) -> str:
    """TGI's ``error`` field when the body has one, else the status line."""
    try:
        body = response.json()
        if isinstance(body, dict) and body.get("error"):
            return str(body["error"])[:500]
    except Exception:
        pass
    return f"{response.status_code} {response.reason_phrase}".strip()


def _retry_after(response: httpx2.Response) -> float | None:
    try:
        return float(response.headers.get("retry-after"))
    except (TypeError, ValueError):
        return None


def _get(path: str) -> httpx2.Response:
    return shared_client().get(f"{base_url()}{path}", timeout=5)


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
    if not configured():
        return {}
    try:
        response = _get("/info")
        return response.json() if response.status_code == 200 else {}
    except Exception as exc:  # any transport or decoding failure means "unknown"
        log.info("GET /info failed: %s", exc)
        return {}


def health() -> dict[str, Any]:
    """For monitoring: whether a server is configured and ``GET /health`` answers 200."""
    if not configured():
        return {
            "configured": False,
            "ok": None,
            "detail": "no generation server configured (extractive answers)",
        }
    try:
        response = _get("/health")
    except Exception as exc:
        return {"configured": True, "ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    return {"configured": True, "ok": response.status_code == 200, "detail": f"HTTP {response.status_code}"}
