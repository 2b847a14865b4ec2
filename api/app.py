"""The REST API under ``/api/v1`` (FastAPI, mounted in the web app's ASGI app; OpenAPI at ``/api/v1/openapi.json``,
docs at ``/api/v1/docs``).

Every call sends ``Authorization: Bearer kbk_…``; the key acts as its user within its bases, through the same use
cases (and access checks) as the pages. Missing or bad key → 401; a base outside the key's scope or the user's
grants → 404 like one that does not exist; too many calls → 429 with ``Retry-After``. Errors are RFC 9457 problem
details. Every call is in the audit log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import Depends, FastAPI, File, Path, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import URL
from starlette.exceptions import HTTPException as StarletteHTTPException
from swagger_ui_bundle import swagger_ui_path

from infra.settings import get_settings
from rag.access import Actor, Forbidden, NotFound
from rag.citations import citation_json
from rag.library import safe_filename
from tasks.backend import get_backend
from telemetry.answer_streams import follow, read_answer
from usecases import api_keys, asking, audit, documents, knowledge_bases, searching

PROBLEM = "application/problem+json"


class Problem(Exception):
    """An error answered as RFC 9457 problem details."""

    def __init__(self, status: int, title: str, detail: str, headers: dict[str, str] | None = None,
                 **extra: Any) -> None:
        super().__init__(detail)
        self.status, self.title, self.detail, self.headers, self.extra = status, title, detail, headers or {}, extra


def problem_response(status: int, title: str, detail: str, headers: dict[str, str] | None = None,
                     **extra: Any) -> JSONResponse:
    body = {"type": "about:blank", "title": title, "status": status, "detail": detail, **extra}
    return JSONResponse(body, status_code=status, media_type=PROBLEM, headers=headers)


# --- the caller ----------------------------------------------------------------------------------------------


def _bearer(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    return value.strip() if scheme.lower() == "bearer" and value.strip() else None


def caller(request: Request) -> Actor:
    """The key's actor (401 otherwise), counted against its rate limit (429). A plain function: FastAPI runs it on
    the thread pool, one hop for the whole check."""
    key = _bearer(request)
    try:
        actor = api_keys.admit(key, client_addr=request.client.host if request.client else "")
    except api_keys.KeyRefused as exc:
        raise Problem(401, "Unauthorized", str(exc), headers={"WWW-Authenticate": 'Bearer realm="kbchat"'}) from None
    except api_keys.RateLimited as exc:
        raise Problem(429, "Too Many Requests", str(exc), headers={"Retry-After": str(exc.retry_after)}) from None
    request.state.actor = actor
    request.state.key_prefix = api_keys.key_prefix(key or "")
    return actor


Caller = Annotated[Actor, Depends(caller)]
KbId = Annotated[int, Path(ge=1, description="A knowledge base id (GET /api/v1/knowledge-bases lists them)")]
DocumentId = Annotated[int, Path(ge=1)]


# --- bodies --------------------------------------------------------------------------------------------------


class NewKnowledgeBase(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="Shown everywhere; unique")


class SearchRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    k: int = Field(default=5, ge=1, le=50)


class AskRequest(BaseModel):
    question: str = Field(min_length=1, max_length=4000)
    conversation_id: int | None = Field(default=None, ge=1, description="Go on with one of your conversations")
    document_ids: list[int] | None = Field(default=None, description="Limit retrieval to these documents")


def _document(d) -> dict:
    return {
        "id": d.id, "kb_id": d.kb_id, "filename": d.filename, "status": d.status, "progress": round(d.progress or 0, 3),
        "progress_done": d.progress_done, "progress_total": d.progress_total, "pages": d.pages,
        "chunks": d.chunk_count, "size_bytes": d.size_bytes, "mime": d.mime, "error": d.error, "task_id": d.task_id,
        "created_at": d.created_at.isoformat() if d.created_at else None,
        "finished_at": d.finished_at.isoformat() if d.finished_at else None,
    }


# --- the app -------------------------------------------------------------------------------------------------

app = FastAPI(
    title="kbchat API", version="1", openapi_url="/openapi.json", docs_url=None,
    redoc_url=None,
    description="Knowledge bases, documents, search and answers with citations. Authenticate with "
                "`Authorization: Bearer <key>` (`kbchat apikey create --user NAME`).",
)


# The docs page: Swagger UI from the swagger-ui-bundle package (nothing from a CDN; the page's policy allows no
# inline script, so its start-up script is a file of its own).
_DOCS_PAGE = """<!doctype html><html lang="en"><head><meta charset="utf-8"><title>kbchat API</title>
<link rel="stylesheet" href="/api/v1/docs/assets/swagger-ui.css"></head>
<body><div id="swagger-ui"></div><script src="/api/v1/docs/assets/swagger-ui-bundle.js"></script>
<script src="/api/v1/docs/start.js"></script></body></html>"""
_DOCS_START = """window.ui = SwaggerUIBundle({url: "/api/v1/openapi.json", dom_id: "#swagger-ui", deepLinking: true});"""
app.mount("/docs/assets", StaticFiles(directory=str(swagger_ui_path)), name="docs-assets")


@app.get("/docs", include_in_schema=False)
def docs() -> HTMLResponse:
    return HTMLResponse(_DOCS_PAGE)


@app.get("/docs/start.js", include_in_schema=False)
def docs_start() -> Response:
    return Response(_DOCS_START, media_type="text/javascript")


@app.exception_handler(Problem)
async def _problem(request: Request, exc: Problem) -> JSONResponse:
    return problem_response(exc.status, exc.title, exc.detail, exc.headers, **exc.extra)


@app.exception_handler(NotFound)
async def _not_found(request: Request, exc: NotFound) -> JSONResponse:
    return problem_response(404, "Not Found", str(exc))


@app.exception_handler(Forbidden)
async def _forbidden(request: Request, exc: Forbidden) -> JSONResponse:
    return problem_response(403, "Forbidden", str(exc))


@app.exception_handler(ValueError)
async def _bad_value(request: Request, exc: ValueError) -> JSONResponse:
    return problem_response(400, "Bad Request", str(exc))


@app.exception_handler(RequestValidationError)
async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
    errors = [{"field": ".".join(str(p) for p in e.get("loc", ()) if p != "body") or "body", "message": e.get("msg")}
              for e in exc.errors()]
    detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors) or "The request is not valid."
    return problem_response(422, "Unprocessable Content", detail, errors=errors)


@app.exception_handler(StarletteHTTPException)
async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    return problem_response(exc.status_code, str(exc.detail), str(exc.detail), dict(exc.headers or {}))


class AuditCalls:
    """Every call that got past the key check is in the audit log (method, path, status, key prefix), written once
    the response is sent: not on the caller's time. Plain ASGI (no response buffering, no extra task per call)."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        status = 500

        async def send_status(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            actor = state.get("actor")
            if actor is not None:
                await run_in_threadpool(audit.record_now, actor, "api.call",
                                        target=f"{scope['method']} {URL(scope=scope).path}",
                                        status=status, key=state.get("key_prefix", ""))


app.add_middleware(AuditCalls)


@app.get("/knowledge-bases", summary="The knowledge bases you may use")
def list_bases(actor: Caller) -> list[dict]:
    return knowledge_bases.list_kbs(actor)


@app.post("/knowledge-bases", status_code=201, summary="Create a knowledge base (you own it)")
def create_base(body: NewKnowledgeBase, actor: Caller) -> dict:
    kb_id, name = knowledge_bases.create_kb(actor, name=body.name)
    return {"id": kb_id, "name": name}


@app.get("/knowledge-bases/{kb_id}/documents", summary="Documents with status and progress")
def list_documents(kb_id: KbId, actor: Caller, limit: int = 500) -> list[dict]:
    return [_document(d) for d in documents.list_documents(actor, kb_id=kb_id, limit=min(max(limit, 1), 5000))]


@app.post("/knowledge-bases/{kb_id}/documents", status_code=202,
          summary="Upload one or many files (multipart field `files`); ingestion is queued")
async def upload(kb_id: KbId, actor: Caller, request: Request,
                 files: Annotated[list[UploadFile], File(description="one or more files")]) -> dict:
    limit = get_settings().max_upload_mb * 1024 * 1024
    declared = int(request.headers.get("content-length") or 0)
    if declared > limit * max(1, len(files)) + 1024 * 1024:
        raise Problem(413, "Content Too Large", f"The upload is {declared / 1048576:.1f} MB; each file may be at "
                      f"most {get_settings().max_upload_mb} MB.")
    results = []
    queue = get_backend()
    for part in files:
        if not part.filename:
            raise Problem(422, "Unprocessable Content", "Every file part needs a file name.",
                          errors=[{"field": "files", "message": "a part without a file name"}])
        data = await part.read(limit + 1)  # the one copy in memory; the rest stays in the spooled temp file
        if len(data) > limit:
            raise Problem(413, "Content Too Large", f"{safe_filename(part.filename)} is over the "
                          f"{get_settings().max_upload_mb} MB limit.")
        (outcome,) = await run_in_threadpool(documents.upload_files, queue, actor, kb_id=kb_id,
                                             files=[(part.filename, data)])
        del data
        results.append(outcome.to_dict())
    return {"documents": results}


@app.get("/knowledge-bases/{kb_id}/documents/{document_id}", summary="One document")
def get_document(kb_id: KbId, document_id: DocumentId, actor: Caller) -> dict:
    return _document(documents.get_document(actor, document_id=document_id, kb_id=kb_id))


@app.delete("/knowledge-bases/{kb_id}/documents/{document_id}", status_code=204,
            summary="Delete a document with its chunks and stored file")
def delete_document(kb_id: KbId, document_id: DocumentId, actor: Caller) -> Response:
    documents.get_document(actor, document_id=document_id, kb_id=kb_id)  # 404 first, like a missing one
    documents.delete_documents(actor, kb_id=kb_id, document_ids=[document_id])
    return Response(status_code=204)


@app.post("/knowledge-bases/{kb_id}/documents/{document_id}/reindex", status_code=202, summary="Re-index")
def reindex(kb_id: KbId, document_id: DocumentId, actor: Caller) -> dict:
    documents.get_document(actor, document_id=document_id, kb_id=kb_id)
    ids = documents.reindex_documents(get_backend(), actor, kb_id=kb_id, document_ids=[document_id])
    return {"queued": ids}


@app.get("/knowledge-bases/{kb_id}/documents/{document_id}/original", summary="Download the original file")
def original(kb_id: KbId, document_id: DocumentId, actor: Caller) -> Response:
    filename, mime, data = documents.document_original(actor, document_id=document_id, kb_id=kb_id)
    ascii_name = safe_filename(filename).encode("ascii", "replace").decode().replace('"', "'").replace("?", "_")
    disposition = f"attachment; filename=\"{ascii_name}\"; filename*=UTF-8''{quote(safe_filename(filename))}"
    return Response(data, media_type=mime, headers={"content-disposition": disposition,
                                                    "x-content-type-options": "nosniff"})


def _search_as_caller(request: Request, kb_id: int, body: SearchRequest) -> bytes:
    actor = caller(request)
    name, hits = searching.search_base(actor, kb_id=kb_id, question=body.question, k=body.k)
    return json.dumps({"question": body.question, "kb": name, "hits": hits}, ensure_ascii=False, default=str,
                      separators=(",", ":")).encode()


@app.post("/knowledge-bases/{kb_id}/search", summary="The passages closest to a question (`kbchat search --json`)")
async def search(kb_id: KbId, body: SearchRequest, request: Request) -> Response:
    # The hottest call: the key check and the search in one hop to the thread pool, and the hits (plain JSON
    # values) written by json.dumps rather than walked by FastAPI's encoder.
    return Response(await run_in_threadpool(_search_as_caller, request, kb_id, body), media_type="application/json")


def _sse(kind: str, data: Any) -> str:
    return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False, default=str)}\n\n"


@app.post("/knowledge-bases/{kb_id}/ask",
          summary="Ask: Server-Sent Events (tokens, then citations and timings) with `Accept: text/event-stream`, "
                  "else one JSON answer (`kbchat ask --json`)")
def ask(kb_id: KbId, body: AskRequest, actor: Caller, request: Request) -> Any:
    started = time.perf_counter()
    asked = asking.ask(get_backend(), actor, kb_id=kb_id, question=body.question,
                       conversation_id=body.conversation_id, document_ids=body.document_ids,
                       save_question=body.conversation_id is not None)
    timeout = get_settings().llm_first_token_timeout_seconds + 30
    if "text/event-stream" in request.headers.get("accept", ""):
        def events() -> Iterator[str]:
            yield _sse("task", {"task_id": asked.task_id, "conversation_id": asked.conversation_id})
            try:
                for kind, data in follow(asked.task_id, timeout=timeout):
                    if kind == "done":
                        data = {**data, "citations": [citation_json(c) for c in data.get("citations", [])]}
                    yield _sse(kind, data)
            except TimeoutError:
                yield _sse("error", {"code": "no_worker", "message": "No answer started: the chat workers may be "
                                                                      "down or busy."})

        return StreamingResponse(events(), media_type="text/event-stream",
                                 headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
    try:
        read = read_answer(asked.task_id, timeout=timeout)
    except TimeoutError:
        raise Problem(504, "Gateway Timeout", "No answer started: the chat workers may be down or busy.",
                      task_id=asked.task_id) from None
    if read.error is not None:
        raise Problem(502, "Bad Gateway", f"The answer failed: {read.error['message']}", task_id=asked.task_id)
    timings = {**read.done.get("timings", {}), "end_to_end_ms": round((time.perf_counter() - started) * 1000, 1)}
    extra = {k: True for k in ("stopped", "interrupted", "no_answer") if read.done.get(k) or read.meta.get(k)}
    return {"answer": read.text, "mode": read.mode, "citations": [citation_json(c) for c in read.citations],
            "timings": timings, "task_id": asked.task_id, "conversation_id": asked.conversation_id,
            **({"notices": read.notices} if read.notices else {}), **extra}


@app.get("/knowledge-bases/{kb_id}/conversations", summary="Your conversations in a base")
def conversations(kb_id: KbId, actor: Caller) -> list[dict]:
    return [{**c, "updated_at": str(c["updated_at"]), "created_at": str(c["created_at"])}
            for c in asking.list_conversations(actor, kb_id=kb_id)]


@app.get("/conversations/{conversation_id}", summary="One of your conversations, with its messages")
def conversation(conversation_id: Annotated[int, Path(ge=1)], actor: Caller) -> dict:
    messages = asking.conversation_messages(actor, conversation_id=conversation_id)
    return {"id": conversation_id, "messages": [
        {"role": m.role, "content": m.content, "mode": m.mode, "citations": [citation_json(c) for c in m.citations],
         "created_at": str(m.created_at)} for m in messages]}


@app.get("/tasks/{task_id}", summary="A task you started: state, times, result or error")
def task(task_id: Annotated[str, Path(max_length=100)], actor: Caller) -> dict:
    record = asking.get_task(actor, task_id=task_id)
    keep = ("name", "state", "queue", "queued_at", "started_at", "finished_at", "retries", "runtime", "error",
            "result", "retried_as", "retry_of")
    return {"id": task_id, **{k: record[k] for k in keep if k in record}}
