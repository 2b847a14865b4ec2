"""A small TGI test server that follows ``shared/spec/tgi-openapi.json`` (tests and benchmarks only).

It speaks the parts of TGI's HTTP contract kbchat uses: the OpenAI-compatible ``POST /v1/chat/completions``
(JSON, or server-sent events with one ``ChatCompletionChunk`` per token, a usage chunk when
``stream_options.include_usage`` is set, then ``data: [DONE]``), ``POST /generate``, ``POST /generate_stream``,
``GET /health`` and ``GET /info``; errors are ``{"error", "error_type"}`` bodies with TGI's status codes.

Tests steer it through ``server.behaviour`` (a plain dataclass, read on every request): the answer text,
latency per token, a burst of 429/503 answers, an error or a dropped connection after K tokens, the input
limits that trigger 422. ``tests/unit/test_tgi_server.py`` validates every response shape against the spec.

Run it by hand for a demo: ``python -m tests.tgi_server --port 8080`` and ``KBCHAT_TGI_URL=http://127.0.0.1:8080``.
"""

from __future__ import annotations

import argparse
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_ID = "kbchat/test-model"
FINGERPRINT = "3.3.6-kbchat-test"

# TGI's own messages, so clients that parse them (kbchat reads "Given: N") see the real wording.
INPUT_TOO_LONG = "Input validation error: `inputs` must have less than {limit} tokens. Given: {given}"
TOTAL_TOO_LONG = (
    "Input validation error: `inputs` tokens + `max_new_tokens` must be <= {limit}. "
    "Given: {given} `inputs` tokens and {new} `max_new_tokens`"
)
ERRORS = {
    422: ("Input validation error", "validation"),
    424: ("Request failed during generation", "generation"),
    429: ("Model is overloaded", "overloaded"),
    503: ("Service unavailable: no healthy shard", "unavailable"),
}

Responder = Callable[[dict[str, Any]], str]


def count_tokens(text: str) -> int:
    """The server's token count: words and punctuation marks (close enough to a BPE count for tests)."""
    return len(re.findall(r"\w+|[^\w\s]", text))


def split_tokens(text: str) -> list[str]:
    """The answer as the pieces a tokenizer would stream: each word with its leading whitespace."""
    return re.findall(r"\s*\S+", text) or ([text] if text else [])


@dataclass
class Behaviour:
    """What the server does; tests change these fields between (or during) requests."""

    answer: str = "The documents answer this question [1]."
    # Called with the request body; its return value replaces ``answer`` when it is not None.
    responder: Responder | None = None
    token_latency: float = 0.0  # seconds between streamed tokens
    first_token_delay: float = 0.0  # seconds before the first token (prefill)
    fail_statuses: list[int] = field(default_factory=list)  # the next requests answer these codes, one each
    error_after_tokens: int | None = None  # a generation error event after K tokens
    drop_after_tokens: int | None = None  # the connection is cut after K tokens
    max_input_tokens: int = 4096
    max_total_tokens: int = 8192
    max_concurrent_requests: int = 128
    healthy: bool = True

    def reset(self) -> None:
        self.__init__()  # type: ignore[misc]


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128  # socketserver's 5 drops connections when 20 chats start at once; TGI's is far larger

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Clients that hang up (a stop, a timeout, a closed keep-alive connection) are normal here."""
        import sys

        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)


class TGIServer:
    """A threaded HTTP server on 127.0.0.1; ``with TGIServer() as tgi: tgi.url``."""

    def __init__(self, port: int = 0, behaviour: Behaviour | None = None) -> None:
        self.behaviour = behaviour or Behaviour()
        self.requests: list[dict[str, Any]] = []  # every request: path, body, status, time
        self._lock = threading.Lock()
        self._httpd = _QuietServer(("127.0.0.1", port), _handler_for(self))
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> TGIServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, args=(0.05,), name="tgi-test-server", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def __enter__(self) -> TGIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def chat_requests(self) -> list[dict[str, Any]]:
        """The bodies of the chat completion requests received so far."""
        return [r["body"] for r in self.requests if r["path"] == "/v1/chat/completions"]

    def _take_failure(self) -> int | None:
        with self._lock:
            if self.behaviour.fail_statuses:
                return self.behaviour.fail_statuses.pop(0)
        return None

    def _record(self, path: str, body: Any, status: int, headers: dict[str, str] | None = None) -> None:
        with self._lock:
            self.requests.append(
                {"path": path, "body": body, "status": status, "time": time.time(), "headers": headers or {}}
            )


def _handler_for(server: TGIServer) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        tgi = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, chunked streams: what a real TGI does
    tgi: TGIServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    # --- plumbing ---------------------------------------------------------------------------------

    def _send_json(self, status: int, body: Any) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _send_error(self, status: int, message: str | None = None, *, sse: bool = False) -> None:
        default, error_type = ERRORS.get(status, ("Internal error", "unknown"))
        body = {"error": message or default, "error_type": error_type}
        if not sse:
            self._send_json(status, body)
            return
        self._start_stream(status)
        self._chunk(f"data:{json.dumps(body)}\n\n")
        self._end_stream()

    def _start_stream(self, status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        """Cut the connection mid-response, as a crashed server or a proxy timeout does."""
        self.wfile.flush()
        try:
            self.connection.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.close_connection = True

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def _read_json(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        return json.loads(raw or b"null")

    # --- routes -----------------------------------------------------------------------------------

    def do_GET(self) -> None:
        behaviour = self.tgi.behaviour
        if self.path == "/health":
            self.tgi._record(
                self.path, None, headers=self._headers(), status=200 if behaviour.healthy else 503
            )
            if behaviour.healthy:
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()
            else:
                self._send_json(503, {"error": "unhealthy", "error_type": "healthcheck"})
        elif self.path == "/info":
            self.tgi._record(self.path, None, headers=self._headers(), status=200)
            self._send_json(200, info(behaviour))
        else:
            self._send_json(404, {"error": f"no route {self.path}", "error_type": "not_found"})

    def do_POST(self) -> None:
        try:
            body = self._read_json()
        except ValueError as exc:
            self._send_error(422, f"Failed to deserialize the JSON body into the target type: {exc}")
            return
        routes = {
            "/v1/chat/completions": self._chat,
            "/generate": self._generate,
            "/generate_stream": self._generate,
        }
        route = routes.get(self.path)
        if route is None:
            self._send_json(404, {"error": f"no route {self.path}", "error_type": "not_found"})
            return
        route(body)

    def _chat(self, body: Any) -> None:
        behaviour = self.tgi.behaviour
        stream = bool(isinstance(body, dict) and body.get("stream"))
        failure = self.tgi._take_failure()
        if failure is not None:
            self.tgi._record(self.path, body, headers=self._headers(), status=failure)
            self._send_error(failure)
            return
        problem = validate_chat(body, behaviour)
        if problem is not None:
            self.tgi._record(self.path, body, headers=self._headers(), status=422)
            self._send_error(422, problem)
            return
        self.tgi._record(self.path, body, headers=self._headers(), status=200)
        prompt_tokens = sum(count_tokens(_content_text(m.get("content"))) for m in body["messages"])
        text = answer_for(body, behaviour)
        tokens = split_tokens(text)[: _max_new_tokens(body.get("max_tokens"))]
        created = int(time.time())
        if not stream:
            if behaviour.first_token_delay:
                time.sleep(behaviour.first_token_delay)
            self._send_json(200, chat_completion(tokens, prompt_tokens, created))
            return
        include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
        self._stream_chat(tokens, prompt_tokens, created, include_usage)

    def _stream_chat(self, tokens: list[str], prompt_tokens: int, created: int, include_usage: bool) -> None:
        behaviour = self.tgi.behaviour
        self._start_stream()
        if behaviour.first_token_delay:
            time.sleep(behaviour.first_token_delay)
        try:
            for i, token in enumerate(tokens):
                if behaviour.drop_after_tokens is not None and i >= behaviour.drop_after_tokens:
                    self._drop()
                    return
                if behaviour.error_after_tokens is not None and i >= behaviour.error_after_tokens:
                    error = {
                        "error": "Request failed during generation: CUDA out of memory",
                        "error_type": "generation",
                    }
                    self._chunk(f"data:{json.dumps(error)}\n\n")
                    self._end_stream()
                    return
                if i and behaviour.token_latency:
                    time.sleep(behaviour.token_latency)
                last = i == len(tokens) - 1
                chunk = chat_chunk(
                    token, created, finish_reason="stop" if last else None, usage_field=include_usage
                )
                self._chunk(f"data:{json.dumps(chunk)}\n\n")
            if include_usage:
                usage = chat_usage_chunk(prompt_tokens, len(tokens), created)
                self._chunk(f"data:{json.dumps(usage)}\n\n")
            self._chunk("data: [DONE]\n\n")
            self._end_stream()
        except (BrokenPipeError, ConnectionResetError):  # the client went away (a stop, a timeout)
            self.close_connection = True

    def _generate(self, body: Any) -> None:
        behaviour = self.tgi.behaviour
        stream = self.path == "/generate_stream"
        failure = self.tgi._take_failure()
        if failure is not None:
            self.tgi._record(self.path, body, headers=self._headers(), status=failure)
            self._send_error(failure, sse=stream)
            return
        if not isinstance(body, dict) or not isinstance(body.get("inputs"), str):
            self.tgi._record(self.path, body, headers=self._headers(), status=422)
            self._send_error(422, "Input validation error: `inputs` is required", sse=stream)
            return
        parameters = body.get("parameters") or {}
        max_new = _max_new_tokens(parameters.get("max_new_tokens"))
        input_length = count_tokens(body["inputs"])
        problem = _length_problem(input_length, max_new, behaviour)
        if problem is not None:
            self.tgi._record(self.path, body, headers=self._headers(), status=422)
            self._send_error(422, problem, sse=stream)
            return
        self.tgi._record(self.path, body, headers=self._headers(), status=200)
        tokens = split_tokens(answer_for(body, behaviour))[:max_new]
        if not stream:
            details = {
                "finish_reason": "eos_token",
                "generated_tokens": len(tokens),
                "prefill": [],
                "tokens": [
                    {"id": i, "text": t, "logprob": -0.1, "special": False} for i, t in enumerate(tokens)
                ],
                "seed": None,
            }
            self._send_json(200, {"generated_text": "".join(tokens), "details": details})
            return
        self._start_stream()
        for i, token in enumerate(tokens):
            if i and behaviour.token_latency:
                time.sleep(behaviour.token_latency)
            last = i == len(tokens) - 1
            event = {
                "index": i,
                "token": {"id": i, "text": token, "logprob": -0.1, "special": False},
                "generated_text": "".join(tokens) if last else None,
                "details": {
                    "finish_reason": "eos_token",
                    "generated_tokens": len(tokens),
                    "input_length": input_length,
                    "seed": None,
                }
                if last
                else None,
            }
            self._chunk(f"data:{json.dumps(event)}\n\n")
        self._end_stream()


# --- response bodies (module functions so the schema test can build them too) ------------------------


def info(behaviour: Behaviour) -> dict[str, Any]:
    return {
        "model_id": MODEL_ID,
        "model_sha": None,
        "model_pipeline_tag": "text-generation",
        "max_concurrent_requests": behaviour.max_concurrent_requests,
        "max_best_of": 2,
        "max_stop_sequences": 4,
        "max_input_tokens": behaviour.max_input_tokens,
        "max_total_tokens": behaviour.max_total_tokens,
        "validation_workers": 2,
        "max_client_batch_size": 4,
        "router": "text-generation-router",
        "version": "3.3.6",
        "sha": None,
        "docker_label": None,
    }


def chat_chunk(
    token: str, created: int, *, finish_reason: str | None = None, usage_field: bool = False
) -> dict:
    chunk: dict[str, Any] = {
        "object": "chat.completion.chunk",
        "id": "",
        "created": created,
        "model": MODEL_ID,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "delta": {"role": "assistant", "content": token},
                "logprobs": None,
                "finish_reason": finish_reason,
            }
        ],
    }
    if usage_field:
        chunk["usage"] = None
    return chunk


def chat_usage_chunk(prompt_tokens: int, completion_tokens: int, created: int) -> dict:
    return {
        "object": "chat.completion.chunk",
        "id": "",
        "created": created,
        "model": MODEL_ID,
        "system_fingerprint": FINGERPRINT,
        "choices": [],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def chat_completion(tokens: list[str], prompt_tokens: int, created: int) -> dict:
    return {
        "object": "chat.completion",
        "id": "",
        "created": created,
        "model": MODEL_ID,
        "system_fingerprint": FINGERPRINT,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "".join(tokens)},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": len(tokens),
            "total_tokens": prompt_tokens + len(tokens),
        },
    }


def validate_chat(body: Any, behaviour: Behaviour) -> str | None:
    """TGI's 422 message for an invalid chat request, or None when it is acceptable."""
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list) or not body["messages"]:
        return "Input validation error: `messages` must be a non-empty list"
    for message in body["messages"]:
        if not isinstance(message, dict) or "role" not in message or "content" not in message:
            return "Failed to deserialize the JSON body into the target type: messages: missing field `role`"
    max_tokens = body.get("max_tokens")
    if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 0):
        return "Input validation error: `max_tokens` must be a non-negative integer"
    prompt_tokens = sum(count_tokens(_content_text(m.get("content"))) for m in body["messages"])
    return _length_problem(prompt_tokens, _max_new_tokens(max_tokens), behaviour)


def _length_problem(input_tokens: int, max_new: int, behaviour: Behaviour) -> str | None:
    if input_tokens >= behaviour.max_input_tokens:
        return INPUT_TOO_LONG.format(limit=behaviour.max_input_tokens, given=input_tokens)
    if input_tokens + max_new > behaviour.max_total_tokens:
        return TOTAL_TOO_LONG.format(limit=behaviour.max_total_tokens, given=input_tokens, new=max_new)
    return None


def _max_new_tokens(value: Any) -> int:
    return int(value) if isinstance(value, int) and value >= 0 else 1024


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(part.get("text", "") for part in content if isinstance(part, dict))
    return ""


def answer_for(body: dict[str, Any], behaviour: Behaviour) -> str:
    if behaviour.responder is not None:
        text = behaviour.responder(body)
        if text is not None:
            return text
    return behaviour.answer


def main() -> None:
    parser = argparse.ArgumentParser(description="kbchat's TGI test server")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--answer", default=Behaviour.answer)
    parser.add_argument("--token-latency", type=float, default=0.03)
    parser.add_argument("--first-token-delay", type=float, default=0.0, help="seconds before the first token")
    args = parser.parse_args()
    server = TGIServer(
        args.port,
        Behaviour(answer=args.answer, token_latency=args.token_latency, first_token_delay=args.first_token_delay),
    )
    print(f"TGI test server on {server.url}", flush=True)
    try:
        server._httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
