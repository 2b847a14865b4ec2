"""The HTTP API as a script uses it: through a real web process (uvicorn), real workers on both backends, real
PostgreSQL and Redis. Keys act as their user within their bases; errors are problem details."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import requests

from tests.conftest import OPERATOR, make_pdf, start_web, stop_web, wait_until

RATE_LIMIT = 60


@dataclass
class Api:
    url: str
    key: str
    user: str
    kb_id: int
    kb_name: str
    other_kb: int  # a base the key's user has no grant on

    def __call__(self, method: str, path: str, key: str | None = "", **kwargs) -> requests.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["authorization"] = f"Bearer {key or self.key}"
        return requests.request(method, f"{self.url}/api/v1{path}", headers=headers, timeout=120, **kwargs)


@pytest.fixture(scope="module")
def api(worker, tmp_path_factory) -> Iterator[Api]:
    from usecases import accounts, api_keys
    from usecases.knowledge_bases import create_kb

    tag = uuid.uuid4().hex[:6]
    user, _ = accounts.add_user(OPERATOR, username=f"script-{tag}", role="analyst")
    owner = accounts.actor_for_user_id(user["id"])
    kb_id, kb_name = create_kb(owner, name=f"api-{worker.backend}-{tag}")
    other_kb, _ = create_kb(OPERATOR, name=f"api-other-{tag}")
    key = api_keys.create_key(OPERATOR, username=user["username"])["key"]
    web = start_web(tmp_path_factory.mktemp("api-web") / "web.log",
                    {"KBCHAT_API_RATE_LIMIT_PER_MINUTE": str(RATE_LIMIT), "KBCHAT_MAX_UPLOAD_MB": "1"})
    try:
        yield Api(web.url, key, user["username"], kb_id, kb_name, other_kb)
    finally:
        stop_web(web)
        assert key not in web.log(), "an API key reached the web log"


def _problem(response: requests.Response, status: int) -> dict:
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body = response.json()
    assert body["status"] == status and body["title"] and body["detail"], body
    return body


def test_no_key_or_a_bad_key_is_401(api):
    assert "Bearer" in _problem(api("GET", "/knowledge-bases", key=None), 401)["detail"]
    _problem(api("GET", "/knowledge-bases", key="kbk_deadbeefnotakeyatall0000000000"), 401)
    _problem(api("GET", "/knowledge-bases", key="something-else"), 401)


def test_openapi_document_and_docs_page(api):
    spec = requests.get(f"{api.url}/api/v1/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.")
    for path in ("/knowledge-bases", "/knowledge-bases/{kb_id}/documents", "/knowledge-bases/{kb_id}/search",
                 "/knowledge-bases/{kb_id}/ask", "/tasks/{task_id}"):
        assert path in spec["paths"], path
    docs = requests.get(f"{api.url}/api/v1/docs", timeout=10)
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert requests.get(f"{api.url}/api/v1/docs/assets/swagger-ui-bundle.js", timeout=10).status_code == 200


def test_upload_list_search_ask_and_download(api):
    listed = api("GET", "/knowledge-bases").json()
    assert isinstance(listed, list), listed
    assert [kb["id"] for kb in listed] == [api.kb_id] and listed[0]["name"] == api.kb_name  # only its own
    pdf = make_pdf(["The ferry Marlin ran aground on the north sandbar at dawn.",
                    "Its captain blamed a faulty depth sounder and fog."])
    files = [("files", ("ferry report.pdf", pdf, "application/pdf")),
             ("files", ("notes.txt", b"The harbour master logged the grounding at 05:40. " * 3, "text/plain")),
             ("files", ("copy of ferry report.pdf", pdf, "application/pdf"))]
    uploaded = api("POST", f"/knowledge-bases/{api.kb_id}/documents", files=files)
    assert uploaded.status_code == 202, uploaded.text
    outcomes = uploaded.json()["documents"]
    assert [o["status"] for o in outcomes] == ["queued", "queued", "duplicate"]
    assert all(o["task_id"] for o in outcomes[:2]) and "Same content" in outcomes[2]["error"]
    ids = [o["document_id"] for o in outcomes[:2]]

    def ready():
        listed = api("GET", f"/knowledge-bases/{api.kb_id}/documents")
        assert listed.status_code == 200, listed.text
        rows = {d["id"]: d for d in listed.json()}
        return all(rows[i]["status"] == "ready" for i in ids) and rows

    rows = wait_until(ready, 120, "the uploads to be ready", interval=1)  # well inside the rate limit
    assert rows[ids[0]]["pages"] == 2 and rows[ids[0]]["chunks"] >= 1
    one = api("GET", f"/knowledge-bases/{api.kb_id}/documents/{ids[0]}").json()
    assert one["filename"] == "ferry report.pdf" and one["status"] == "ready"
    task = api("GET", f"/tasks/{one['task_id']}").json()
    assert task.get("name") == "ingest.document" and task["state"] == "succeeded", task

    original = api("GET", f"/knowledge-bases/{api.kb_id}/documents/{ids[0]}/original")
    assert original.status_code == 200 and original.content == pdf
    assert original.headers["content-disposition"].startswith('attachment; filename="ferry report.pdf"')

    found = api("POST", f"/knowledge-bases/{api.kb_id}/search", json={"question": "Where did the ferry run aground?",
                                                                       "k": 3})
    assert found.status_code == 200, found.text
    body = found.json()
    assert body["kb"] == api.kb_name and body["question"].startswith("Where")
    assert body["hits"][0]["document"] == "ferry report.pdf" and body["hits"][0]["page"] == 1
    assert {"chunk_id", "document_id", "score", "text", "page"} <= set(body["hits"][0])

    answered = api("POST", f"/knowledge-bases/{api.kb_id}/ask", json={"question": "What did the captain blame?"})
    assert answered.status_code == 200, answered.text
    answer = answered.json()
    assert answer["mode"] in ("extractive", "llm", "cache") and "sounder" in answer["answer"]
    assert answer["citations"][0]["document"] == "ferry report.pdf" and answer["citations"][0]["page"] == 2

    streamed = api("POST", f"/knowledge-bases/{api.kb_id}/ask", json={"question": "Who logged the grounding?"},
                   headers={"accept": "text/event-stream"}, stream=True)
    assert streamed.headers["content-type"].startswith("text/event-stream")
    events = []
    kind = None
    for line in streamed.iter_lines(decode_unicode=True):
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: "):
            events.append((kind, json.loads(line[6:])))
    kinds = [k for k, _ in events]
    assert kinds[0] == "task" and "token" in kinds and kinds[-1] == "done", kinds
    assert kinds.index("token") < kinds.index("done")
    done = events[-1][1]
    assert done["citations"] and done["citations"][0]["document"] in ("notes.txt", "ferry report.pdf")

    removed = api("DELETE", f"/knowledge-bases/{api.kb_id}/documents/{ids[1]}")
    assert removed.status_code == 204
    _problem(api("GET", f"/knowledge-bases/{api.kb_id}/documents/{ids[1]}"), 404)


def test_another_base_answers_like_a_missing_one(api):
    theirs = _problem(api("GET", f"/knowledge-bases/{api.other_kb}/documents"), 404)
    missing = _problem(api("GET", "/knowledge-bases/999999999/documents"), 404)
    assert theirs["detail"].replace(str(api.other_kb), "N") == missing["detail"].replace("999999999", "N")
    _problem(api("POST", f"/knowledge-bases/{api.other_kb}/search", json={"question": "anything"}), 404)
    _problem(api("POST", f"/knowledge-bases/{api.other_kb}/ask", json={"question": "anything"}), 404)
    before = api("GET", f"/knowledge-bases/{api.kb_id}/documents").json()
    _problem(api("POST", f"/knowledge-bases/{api.other_kb}/documents",
                 files=[("files", ("x.txt", b"hello there " * 10, "text/plain"))]), 404)
    assert api("GET", f"/knowledge-bases/{api.kb_id}/documents").json() == before


def test_a_scoped_key_sees_only_its_bases(api):
    from usecases import api_keys
    from usecases.knowledge_bases import create_kb

    second, _ = create_kb(OPERATOR, name=f"api-second-{uuid.uuid4().hex[:6]}")
    from usecases import accounts

    accounts.grant(OPERATOR, kb_id=second, grantee=api.user, level="viewer")
    scoped = api_keys.create_key(OPERATOR, username=api.user, kb_ids=[second])["key"]
    assert [kb["id"] for kb in api("GET", "/knowledge-bases", key=scoped).json()] == [second]
    _problem(api("GET", f"/knowledge-bases/{api.kb_id}/documents", key=scoped), 404)  # granted, not in scope
    with pytest.raises(LookupError):  # a key cannot reach beyond its user's grants
        api_keys.create_key(OPERATOR, username=api.user, kb_ids=[api.other_kb])


def test_revoked_and_expired_keys_are_401(api):
    from sqlalchemy import text

    from infra.database import session_scope
    from usecases import api_keys

    made = api_keys.create_key(OPERATOR, username=api.user, expires_days=1)
    assert api("GET", "/knowledge-bases", key=made["key"]).status_code == 200
    api_keys.revoke_key(OPERATOR, prefix=made["prefix"])
    assert "revoked" in _problem(api("GET", "/knowledge-bases", key=made["key"]), 401)["detail"]
    other = api_keys.create_key(OPERATOR, username=api.user, expires_days=1)
    with session_scope() as session:
        session.execute(text("update api_keys set expires_at = now() - interval '1 minute' where prefix = :p"),
                        {"p": other["prefix"]})
    assert "expired" in _problem(api("GET", "/knowledge-bases", key=other["key"]), 401)["detail"]


def test_a_disabled_account_is_refused_at_once_though_its_key_was_just_used(api):
    from usecases import accounts, api_keys

    user, _ = accounts.add_user(OPERATOR, username=f"{api.user}-d", role="analyst")
    made = api_keys.create_key(OPERATOR, username=user["username"])
    for _ in range(3):  # the web process now remembers the key
        assert api("GET", "/knowledge-bases", key=made["key"]).status_code == 200
    accounts.set_disabled(OPERATOR, username=user["username"])
    assert "disabled" in _problem(api("GET", "/knowledge-bases", key=made["key"]), 401)["detail"]
    accounts.set_disabled(OPERATOR, username=user["username"], disabled=False)
    assert api("GET", "/knowledge-bases", key=made["key"]).status_code == 200


def test_bad_input_gets_a_status_and_a_message_naming_the_field(api):
    bad = _problem(api("POST", f"/knowledge-bases/{api.kb_id}/search", json={"question": "x", "k": "many"}), 422)
    assert any(e["field"] == "k" for e in bad["errors"]), bad
    missing = _problem(api("POST", f"/knowledge-bases/{api.kb_id}/search", json={"k": 3}), 422)
    assert any(e["field"] == "question" for e in missing["errors"]), missing
    _problem(api("POST", f"/knowledge-bases/{api.kb_id}/search", data="{not json",
                 headers={"content-type": "application/json"}), 422)
    _problem(api("GET", "/knowledge-bases/not-a-number/documents"), 422)
    big = _problem(api("POST", f"/knowledge-bases/{api.kb_id}/documents",
                       files=[("files", ("big.txt", b"x" * (1024 * 1024 + 10), "text/plain"))]), 413)
    assert "1 MB" in big["detail"]
    traversal = api("POST", f"/knowledge-bases/{api.kb_id}/documents",
                    files=[("files", ("../../etc/passwd.txt", b"root-ish text that is harmless " * 3, "text/plain"))])
    assert traversal.status_code == 202 and traversal.json()["documents"][0]["filename"] == "passwd.txt"
    _problem(api("POST", "/knowledge-bases", json={"name": ""}), 422)


def test_rate_limit_answers_429_with_retry_after(api):
    from usecases import api_keys

    key = api_keys.create_key(OPERATOR, username=api.user)["key"]
    statuses = []
    for _ in range(2 * RATE_LIMIT + 2):  # the limit is per clock minute: one window is full within this many
        statuses.append(api("GET", "/knowledge-bases", key=key).status_code)
        if statuses[-1] == 429:
            break
    assert statuses[-1] == 429 and statuses[0] == 200 and len(statuses) > RATE_LIMIT, statuses
    limited = api("GET", "/knowledge-bases", key=key)
    body = _problem(limited, 429)
    assert int(limited.headers["retry-after"]) >= 1 and "try again" in body["detail"]


def test_every_call_is_audited(api):
    from usecases import audit

    api("GET", "/knowledge-bases")

    def audited():  # written just after the response went out
        entries = audit.list_events(OPERATOR, username=api.user, action="api.call")
        return any(e["target"] == "GET /api/v1/knowledge-bases" and e["details"]["status"] == 200
                   for e in entries) and entries

    entries = wait_until(audited, 10, "the call to be in the audit log")
    assert all(api.key not in json.dumps(e) for e in entries)
