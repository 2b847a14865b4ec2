"""The ``kbchat`` commands that work on a knowledge base: ingest, search, ask and check.

Like ``kbchat.cli``, each imports what it uses inside its function, so ``kbchat --help`` and the commands that
only start processes stay quick (start-up time, not a cycle)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


class KnowledgeBaseMissing(LookupError):
    """No knowledge base has the name given on the command line."""


def operator():
    """The shell on the server acts as admin (README: "Accounts and access"); audited as ``cli:<login>``."""
    import getpass

    from rag.access import Actor

    try:
        login = getpass.getuser()
    except (KeyError, OSError):
        login = "unknown"
    return Actor.operator(f"cli:{login}")


def check_services() -> None:
    """Both services answer, or ServiceUnavailable with a plain message."""
    from infra.database import check_database
    from infra.discovery import service_urls
    from kbchat.services import check_redis

    urls = service_urls()
    check_database(urls.database_url)
    check_redis(urls.redis_url)


def _files(paths: list[Path]) -> list[Path]:
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found.extend(sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".")))
        else:
            found.append(path)
    return found


def ingest_command(args) -> int:
    from db.repositories import documents as document_repo
    from infra.database import session_scope
    from rag.library import UploadOutcome
    from tasks.backend import get_backend
    from usecases.documents import upload_files
    from usecases.knowledge_bases import create_kb

    check_services()
    unreadable: list[UploadOutcome] = []
    files: list[tuple[str, bytes]] = []
    for path in _files(args.paths):
        try:
            files.append((path.name, path.read_bytes()))
        except OSError as exc:
            unreadable.append(UploadOutcome(path.name, "rejected", error=f"cannot read {path}: {exc.strerror}"))
    outcomes = unreadable
    if files:
        kb_id, _ = create_kb(operator(), name=args.kb)
        outcomes += upload_files(get_backend(), operator(), kb_id=kb_id, files=files)
    queued = [o.document_id for o in outcomes if o.status == "queued" and o.document_id is not None]

    documents: dict[int, object] = {}
    if args.wait and queued:
        documents = _wait_for_documents(queued, args.timeout, quiet=False)
    elif queued:
        with session_scope() as session:
            documents = {d.id: d for d in document_repo.list_by_ids(session=session, document_ids=queued)}

    rows = []
    for outcome in outcomes:
        document = documents.get(outcome.document_id) if outcome.status == "queued" else None
        rows.append(
            {
                "file": outcome.filename,
                "document_id": outcome.document_id,
                "status": document.status if document is not None else outcome.status,
                "pages": document.pages if document is not None else None,
                "chunks": document.chunk_count if document is not None else 0,
                "duplicate_of": outcome.duplicate_of,
                "error": (document.error if document is not None else None) or outcome.error,
            }
        )
    if args.json:
        print(json.dumps(rows, indent=2, ensure_ascii=False))
    else:
        for row in rows:
            detail = row["error"] or (f"{row['pages']} pages, {row['chunks']} chunks" if row["pages"] else "")
            print(f"{row['status']:<10} {row['file']}" + (f"  — {detail}" if detail else ""))
    bad = [r for r in rows if r["status"] in ("failed", "rejected")]
    unfinished = args.wait and any(r["status"] not in ("ready", "failed", "rejected", "duplicate") for r in rows)
    return 1 if bad or unfinished else 0


_STAGE_WEIGHT = {"queued": 0.0, "parsing": 0.05, "ocr": 0.05, "chunking": 0.3, "embedding": 0.35, "storing": 0.95}


def _wait_for_documents(document_ids: list[int], timeout: float, quiet: bool) -> dict[int, object]:
    """Poll the documents until all are final, with a progress bar on stderr."""
    from tqdm import tqdm

    from db.models import FINAL_STATES
    from db.repositories import documents as document_repo
    from infra.database import session_scope

    deadline = time.monotonic() + timeout
    with tqdm(total=len(document_ids), unit="file", file=sys.stderr, disable=quiet,
              bar_format="{l_bar}{bar}| {n:.1f}/{total} files [{elapsed}<{remaining}] {postfix}") as bar:
        while True:
            with session_scope() as session:
                documents = {d.id: d for d in document_repo.list_by_ids(session=session, document_ids=document_ids)}
            done = 0.0
            for document in documents.values():
                if document.status in FINAL_STATES:
                    done += 1
                else:
                    base = _STAGE_WEIGHT.get(document.status, 0.0)
                    span = 0.6 if document.status == "embedding" else 0.25 if document.status in ("parsing", "ocr") else 0.0
                    done += base + span * (document.progress or 0.0)
            bar.n = round(done, 2)
            active = [d for d in documents.values() if d.status not in FINAL_STATES]
            bar.set_postfix_str(", ".join(sorted({d.status for d in active})) or "done")
            bar.refresh()
            if not active or time.monotonic() > deadline:
                return documents
            time.sleep(0.5)


def kb_id_named(name: str) -> int:
    """The id of the knowledge base called ``name``; KnowledgeBaseMissing (listing the others) when none is."""
    from db.repositories import knowledge_bases as kb_repo
    from infra.database import session_scope

    with session_scope() as session:
        kb = kb_repo.get_by_name(session=session, name=name)
        if kb is None:
            names = [k.name for k in kb_repo.list_knowledge_bases(session=session)]
            raise KnowledgeBaseMissing(
                f"no knowledge base named {name!r}" + (f"; there are: {', '.join(names)}" if names else "; none exist yet")
            )
        return kb.id


def search_command(args) -> int:
    from infra.database import check_database
    from infra.discovery import service_urls
    from rag.citations import citation_label
    from usecases.searching import search_passages  # not usecases.asking: its imports cost a search 0.2 s

    check_database(service_urls().database_url)  # a plain message, not a traceback, when it does not answer
    kb_id = kb_id_named(args.kb)
    hits = search_passages(operator(), kb_id=kb_id, question=args.question, k=args.k, mode=args.mode)
    if args.json:
        print(json.dumps({"question": args.question, "kb": args.kb, "hits": hits}, indent=2, ensure_ascii=False))
        return 0
    for rank, hit in enumerate(hits, start=1):
        text = " ".join(hit["text"].split())
        print(f"{rank}. [{hit['score']:.3f}] {citation_label(hit)}\n   {text[:300]}{'…' if len(text) > 300 else ''}\n")
    if not hits:
        print("no passages (is the knowledge base empty?)")
    return 0


def ask_command(args) -> int:
    from rag.citations import citation_json, citation_label
    from rag.extractive import best_excerpt
    from tasks.backend import get_backend
    from telemetry.answer_streams import read_answer, request_stop
    from usecases.asking import ask

    check_services()  # both are needed: a plain message, not a traceback (or a 20 s Celery retry), when one is down
    kb_id = kb_id_named(args.kb)
    started = time.perf_counter()
    task_id = ask(get_backend(), operator(), kb_id=kb_id, question=args.question).task_id
    echo = {} if args.json else {
        "on_status": lambda message: print(f"kbchat: {message}", file=sys.stderr),
        "on_token": lambda piece, _: print(piece, end="", flush=True),
        "on_notice": lambda notice: print(f"\n\n[{notice}]", end="", flush=True),
    }
    try:
        read = read_answer(task_id, timeout=args.timeout, **echo)
    except TimeoutError:
        print(f"kbchat: no answer started within {args.timeout:.0f} s: is a chat worker running? (task {task_id})",
              file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        request_stop(task_id)  # the worker stops generating too
        raise
    if read.error is not None:
        print(f"\nkbchat: the answer failed: {read.error['message']}", file=sys.stderr)
        return 1
    done, meta, notices, first_token = read.done, read.meta, read.notices, read.first_token_at
    timings = dict(done.get("timings", {}))
    timings["end_to_end_ms"] = round((time.perf_counter() - started) * 1000, 1)
    if first_token is not None:
        timings["end_to_end_first_token_ms"] = round((first_token - started) * 1000, 1)
    citations = [citation_json(c) for c in read.citations]
    mode = read.mode
    if args.json:
        extra = {k: True for k in ("stopped", "interrupted", "no_answer") if done.get(k) or meta.get(k)}
        print(json.dumps({"answer": read.text, "mode": mode, "citations": citations, "timings": timings,
                          "task_id": task_id, **({"notices": notices} if notices else {}), **extra},
                         indent=2, ensure_ascii=False))
    else:
        print()
        if mode == "extractive" and not done.get("no_answer"):
            print("(extractive answer: sentences quoted from the passages, no language model)", file=sys.stderr)
        elif mode == "cache":
            print("(answered from the cache: the same question was asked before)", file=sys.stderr)
        if citations:
            print("Passages given to the model; the answer cites none:" if not any(c["cited"] for c in citations)
                  else "Sources:")
            for c in citations:
                print(f"  [{c['n']}] {citation_label(c)} (score {c['score']:.2f})")
                if mode == "extractive":  # the passages the sentences above are from, shortened
                    print(f"      {best_excerpt(args.question, c['text'] or '', max_chars=300)}")
    return 0


def check_command(args) -> int:
    from tasks.backend import get_backend
    from usecases.upkeep import check_consistency

    check_services()
    kb_id = kb_id_named(args.kb) if args.kb else None
    report = check_consistency(get_backend(), operator(), kb_id=kb_id, fix=args.fix)
    if args.json:
        print(json.dumps(report, indent=2, ensure_ascii=False, default=str))
    else:
        scope = f"knowledge base {args.kb!r}" if args.kb else f"{report['knowledge_bases']} knowledge base(s)"
        if not report["problems"]:
            print(f"consistent: {scope}, nothing to fix")
        for p in report["problems"]:
            where = " / ".join(str(x) for x in (p.get("kb"), p.get("document")) if x)
            print(f"{p['kind']:<20} {where}: {p['detail']} — {p['action']}")
    unfixed = [p for p in report["problems"] if not args.fix or p["kind"] == "missing_blob"]
    return 1 if unfixed else 0
