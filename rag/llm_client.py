"""The HTTP side of the generation server: which one is configured, huggingface_hub's InferenceClient for it,
and its ``/info`` and ``/health``."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

import httpx2
from huggingface_hub import InferenceClient, get_session, set_client_factory
from huggingface_hub.utils import _http as hf_http

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


@lru_cache(maxsize=1)
def _install_http_client() -> None:
    """Let requests to the generation server through huggingface_hub's shared HTTP client.

    That client refuses every request when ``HF_HUB_OFFLINE`` is set (kbchat sets it so the embedding model never
    downloads, and air-gapped sites set it too). Requests to the configured server pass; Hub requests stay
    blocked. Without an API key no Authorization header goes out (not even a cached Hub token).
    """

    settings = get_settings()
    target = urlsplit(base_url())
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


def client(timeout: float) -> InferenceClient:
    """An InferenceClient for the configured server (close it when done)."""
    _install_http_client()
    key = get_settings().tgi_api_key
    return InferenceClient(
        base_url=base_url(), api_key=key.get_secret_value() if key is not None else None, timeout=timeout
    )


def reset() -> None:
    """Put huggingface_hub's own HTTP client back (tests that change the server URL)."""
    _install_http_client.cache_clear()

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
    if not configured():
        return {}
    _install_http_client()
    try:
        response = get_session().get(f"{base_url()}/info", timeout=5)
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
    _install_http_client()
    try:
        response = get_session().get(f"{base_url()}/health", timeout=5)
    except Exception as exc:
        return {"configured": True, "ok": False, "detail": f"{type(exc).__name__}: {exc}"}
    return {"configured": True, "ok": response.status_code == 200, "detail": f"HTTP {response.status_code}"}
