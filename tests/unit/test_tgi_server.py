"""The TGI test server against TGI's own OpenAPI file: every response shape it sends is validated with
jsonschema against ``shared/spec/tgi-openapi.json``, so the fake cannot drift from the real server."""

from __future__ import annotations

import http.client
import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.tgi_server import TGIServer

# A copy of ../shared/spec/tgi-openapi.json (see tests/spec/SOURCE.md), so the check runs wherever the repo is cloned.
SPEC_PATH = Path(__file__).resolve().parents[1] / "spec" / "tgi-openapi.json"


def _openapi_to_jsonschema(node: Any) -> Any:
    """OpenAPI 3.0's ``nullable: true`` becomes ``anyOf [schema, null]``; the rest is JSON Schema already."""
    if isinstance(node, list):
        return [_openapi_to_jsonschema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {key: _openapi_to_jsonschema(value) for key, value in node.items() if key != "nullable"}
    if node.get("nullable"):
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


@pytest.fixture(scope="module")
def schemas() -> dict[str, Any]:
    if not SPEC_PATH.exists():
        pytest.skip(f"the TGI OpenAPI file is not at {SPEC_PATH}")
    spec = json.loads(SPEC_PATH.read_text())
    return {"paths": spec["paths"], "components": _openapi_to_jsonschema(spec["components"])}


def check(schemas: dict[str, Any], name: str, instance: Any) -> None:
    """Validate ``instance`` against components/schemas/``name`` ($refs resolve inside the spec)."""
    schema = {"$ref": f"#/components/schemas/{name}", "components": schemas["components"]}
    errors = sorted(Draft202012Validator(schema).iter_errors(instance), key=lambda e: list(e.path))
    assert not errors, f"{name}: " + "; ".join(f"{list(e.path)}: {e.message}" for e in errors[:5])


def documented_statuses(schemas: dict[str, Any], path: str, method: str) -> set[int]:
    return {int(code) for code in schemas["paths"][path][method]["responses"]}


@pytest.fixture
def tgi():
    with TGIServer() as server:
        yield server


def request(server: TGIServer, method: str, path: str, body: Any = None) -> tuple[int, dict[str, str], bytes]:
    host, port = server.url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=10)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=payload, headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


def sse_events(raw: bytes) -> list[str]:
    """The ``data:`` payloads of a server-sent event stream, in order."""
    return [line[5:].strip() for line in raw.decode().splitlines() if line.startswith("data:")]


def chat_body(**extra: Any) -> dict[str, Any]:
    return {
        "model": "tgi",
        "messages": [{"role": "user", "content": "What happened?"}],
        "max_tokens": 50,
        **extra,
    }


# --- the happy paths -------------------------------------------------------------------------------------


def test_info_and_health(tgi, schemas):
    status, _, body = request(tgi, "GET", "/info")
    assert status == 200
    info = json.loads(body)
    check(schemas, "Info", info)
    assert info["max_input_tokens"] == 4096 and info["max_total_tokens"] == 8192

    assert request(tgi, "GET", "/health")[0] == 200
    tgi.behaviour.healthy = False
    status, _, body = request(tgi, "GET", "/health")
    assert status == 503 and status in documented_statuses(schemas, "/health", "get")
    check(schemas, "ErrorResponse", json.loads(body))


def test_chat_completion_json(tgi, schemas):
    tgi.behaviour.answer = "Engine failure [1], then a forced landing [2]."
    status, headers, body = request(tgi, "POST", "/v1/chat/completions", chat_body())
    assert status == 200 and headers["content-type"] == "application/json"
    completion = json.loads(body)
    check(schemas, "ChatCompletion", completion)
    assert completion["choices"][0]["message"]["content"] == tgi.behaviour.answer
    assert completion["usage"]["completion_tokens"] == 8


def test_chat_completion_stream_with_usage(tgi, schemas):
    tgi.behaviour.answer = "Engine failure [1]."
    status, headers, body = request(
        tgi, "POST", "/v1/chat/completions", chat_body(stream=True, stream_options={"include_usage": True})
    )
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    for chunk in chunks:
        check(schemas, "ChatCompletionChunk", chunk)
    *tokens, usage = chunks
    assert "".join(c["choices"][0]["delta"]["content"] for c in tokens) == "Engine failure [1]."
    assert all(c["usage"] is None for c in tokens)
    assert tokens[-1]["choices"][0]["finish_reason"] == "stop"
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == len(tokens)


def test_chat_completion_stream_without_usage(tgi, schemas):
    _, _, body = request(tgi, "POST", "/v1/chat/completions", chat_body(stream=True))
    events = sse_events(body)
    assert events[-1] == "[DONE]"
    for event in events[:-1]:
        chunk = json.loads(event)
        check(schemas, "ChatCompletionChunk", chunk)
        assert chunk["choices"] and "usage" not in chunk


def test_max_tokens_cuts_the_answer(tgi):
    tgi.behaviour.answer = "one two three four five"
    _, _, body = request(tgi, "POST", "/v1/chat/completions", chat_body(max_tokens=2))
    assert json.loads(body)["choices"][0]["message"]["content"] == "one two"


def test_generate_and_generate_stream(tgi, schemas):
    tgi.behaviour.answer = "Fuel exhaustion."
    status, _, body = request(
        tgi, "POST", "/generate", {"inputs": "Why?", "parameters": {"max_new_tokens": 20}}
    )
    assert status == 200
    check(schemas, "GenerateResponse", json.loads(body))

    status, headers, body = request(tgi, "POST", "/generate_stream", {"inputs": "Why?"})
    assert status == 200 and headers["content-type"] == "text/event-stream"
    events = [json.loads(e) for e in sse_events(body)]
    for event in events:
        check(schemas, "StreamResponse", event)
    assert (
        events[-1]["generated_text"] == "Fuel exhaustion."
        and events[-1]["details"]["finish_reason"] == "eos_token"
    )


# --- errors ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [424, 429, 503])
def test_error_burst_then_success(tgi, schemas, code):
    tgi.behaviour.fail_statuses = [code, code]
    for _ in range(2):
        status, headers, body = request(tgi, "POST", "/v1/chat/completions", chat_body(stream=True))
        assert status == code and headers["content-type"] == "application/json"
        check(schemas, "ErrorResponse", json.loads(body))
    # 503 is what proxies and a loading TGI answer; the spec lists the ones the router itself sends.
    if code != 503:
        assert code in documented_statuses(schemas, "/v1/chat/completions", "post")
    assert request(tgi, "POST", "/v1/chat/completions", chat_body(stream=True))[0] == 200
    assert [r["status"] for r in tgi.requests] == [code, code, 200]


def test_prompt_over_the_input_limit_is_422(tgi, schemas):
    tgi.behaviour.max_input_tokens = 20
    long = {"role": "user", "content": "word " * 30}
    status, _, body = request(tgi, "POST", "/v1/chat/completions", chat_body(messages=[long]))
    assert status == 422
    error = json.loads(body)
    check(schemas, "ErrorResponse", error)
    assert (
        error["error_type"] == "validation" and "must have less than 20 tokens. Given: 30" in error["error"]
    )


def test_prompt_plus_max_tokens_over_the_total_is_422(tgi, schemas):
    tgi.behaviour.max_total_tokens = 100
    status, _, body = request(tgi, "POST", "/v1/chat/completions", chat_body(max_tokens=200))
    assert status == 422
    error = json.loads(body)
    check(schemas, "ErrorResponse", error)
    assert "`max_new_tokens` must be <= 100" in error["error"]


def test_malformed_request_is_422(tgi, schemas):
    status, _, body = request(tgi, "POST", "/v1/chat/completions", {"messages": [{"content": "no role"}]})
    assert status == 422
    check(schemas, "ErrorResponse", json.loads(body))


def test_generation_error_mid_stream(tgi, schemas):
    tgi.behaviour.answer = "a b c d e f"
    tgi.behaviour.error_after_tokens = 3
    status, _, body = request(tgi, "POST", "/v1/chat/completions", chat_body(stream=True))
    assert status == 200
    events = sse_events(body)
    assert len(events) == 4 and "[DONE]" not in events
    for event in events[:3]:
        check(schemas, "ChatCompletionChunk", json.loads(event))
    check(schemas, "ErrorResponse", json.loads(events[3]))


def test_dropped_connection(tgi):
    tgi.behaviour.answer = "a b c d e f"
    tgi.behaviour.drop_after_tokens = 2
    with pytest.raises(http.client.IncompleteRead):
        request(tgi, "POST", "/v1/chat/completions", chat_body(stream=True))


# --- the client kbchat uses reads it like a TGI ------------------------------------------------------------------


def test_huggingface_hub_client_streams_from_it(tgi, monkeypatch):
    import huggingface_hub.constants
    from huggingface_hub import InferenceClient

    # Loading the embedding model sets HF_HUB_OFFLINE, which makes huggingface_hub refuse every request
    # (rag/llm.py lets its own server through); this test is about the wire format, so plain online mode.
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)

    tgi.behaviour.answer = "Carburettor icing [1]."
    client = InferenceClient(base_url=tgi.url, timeout=10)
    pieces = [
        chunk.choices[0].delta.content
        for chunk in client.chat_completion([{"role": "user", "content": "Why?"}], stream=True, max_tokens=20)
        if chunk.choices
    ]
    assert "".join(pieces) == "Carburettor icing [1]."
    assert tgi.chat_requests()[-1]["stream"] is True
