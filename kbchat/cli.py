"""The ``kbchat`` command line: run the stack, start processes, ingest, search and ask from a shell.

Each command imports what it uses inside its function: ``kbchat --help`` and the commands that only start other
processes must not pay for loading torch, Streamlit or a task backend (late imports for start-up time; the layers
contract in pyproject.toml still checks them).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from infra.discovery import ServiceUnavailable


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kbchat", description="A private knowledge base that people talk to.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="everything on one machine: services, workers, scheduler, web app, demo")
    p.add_argument("--host", help="web address (default KBCHAT_WEB_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="web port (default KBCHAT_WEB_PORT, 8501)")
    p.add_argument("--no-demo", action="store_true", help="do not load the demo knowledge base")

    p = sub.add_parser("web", help="the Streamlit web app alone (production: one per web container)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)

    sub.add_parser("migrate", help="bring the database schema to the newest revision")

    p = sub.add_parser("worker", help="a task worker on the configured backend")
    p.add_argument("--queues", default="ingest,chat,maintenance", help="comma-separated: ingest, chat, maintenance")
    p.add_argument("--concurrency", type=int, default=2, help="processes (Celery ingest) or threads")

    sub.add_parser("scheduler", help="periodic jobs: Celery beat, or the Dramatiq-mode scheduler")

    p = sub.add_parser("ingest", help="add files (or folders of files) to a knowledge base")
    p.add_argument("paths", nargs="+", type=Path, metavar="PATH")
    p.add_argument("--kb", required=True, help="knowledge base name (created if new)")
    p.add_argument("--wait", action="store_true", help="wait until every file is ready or failed")
    p.add_argument("--timeout", type=float, default=3600, help="seconds to wait with --wait")
    p.add_argument("--json", action="store_true", help="print the per-file summary as JSON")

    p = sub.add_parser("search", help="the passages closest to a question")
    p.add_argument("question")
    p.add_argument("--kb", required=True)
    p.add_argument("-k", type=int, default=5, help="how many passages (default 5)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("ask", help="ask a question; the answer streams with its citations")
    p.add_argument("question")
    p.add_argument("--kb", required=True)
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the answer to start")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("eval", help="evaluate retrieval: sampled chunks, a question each, hit@1/5/10 and MRR")
    p.add_argument("--kb", required=True)
    p.add_argument("--seed", type=int, help="sampling seed (default KBCHAT_EVAL_SEED, the nightly run's)")
    p.add_argument("--sample", type=int, help="chunks to sample (default KBCHAT_EVAL_SAMPLE_SIZE)")
    p.add_argument("--json", action="store_true", help="print the run, with per-question details, as JSON")

    p = sub.add_parser("check", help="consistency of documents, chunks and stored files (and stuck documents)")
    p.add_argument("--kb", help="only this knowledge base (default: all)")
    p.add_argument("--fix", action="store_true", help="fix what is found (re-index, remove orphans, re-enqueue)")
    p.add_argument("--json", action="store_true")

    sub.add_parser("healthcheck", help="exit 0 when PostgreSQL and Redis answer (for container health checks)")

    p = sub.add_parser("metrics", help="Prometheus exporter: queue depth, workers, task counts and run times")
    p.add_argument("--host", default="0.0.0.0", help="address to listen on (default 0.0.0.0)")
    p.add_argument("--port", type=int, default=9108, help="port (default 9108)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(COMMANDS[args.command](args) or 0)
    except ServiceUnavailable as exc:
        print(f"kbchat: {exc}", file=sys.stderr)
        return 2
    except KnowledgeBaseMissing as exc:
        print(f"kbchat: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


class KnowledgeBaseMissing(LookupError):
    pass


def _cmd_run(args) -> int:
    from kbchat.runner import run

    return run(host=args.host, port=args.port, demo=not args.no_demo)


def _cmd_web(args) -> int:
    import os

    from infra.discovery import service_urls
    from infra.settings import get_settings
    from kbchat.runner import web_argv

    settings = get_settings()
    service_urls()  # fail early with a plain message
    argv = web_argv(args.host or settings.web_host, args.port or settings.web_port, settings)
    os.execv(argv[0], argv)
    return 0


def _cmd_migrate(args) -> int:
    from db import migrate
    from infra.database import check_database
    from infra.discovery import service_urls

    url = service_urls().database_url
    check_database(url)
    migrate.upgrade(url)
    print("kbchat: database is at the newest revision")
    return 0


def _cmd_worker(args) -> int:
    from tasks.worker import exec_worker

    _check_services()
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    try:
        exec_worker(queues, args.concurrency)
    except ValueError as exc:
        print(f"kbchat: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_scheduler(args) -> int:
    from tasks.scheduler import exec_scheduler

    _check_services()
    exec_scheduler()
    return 0


def _cmd_healthcheck(args) -> int:
    _check_services()
    print("ok")
    return 0


def _cmd_metrics(args) -> int:
    from infra.discovery import service_urls
    from kbchat.metrics import serve
    from kbchat.services import check_redis

    check_redis(service_urls().redis_url)
    serve(args.host, args.port)
    return 0


def _check_services() -> None:
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


def _cmd_ingest(args) -> int:
    from db.repositories import documents as document_repo
    from infra.database import session_scope
    from rag.library import UploadOutcome
    from tasks.backend import get_backend
    from usecases.documents import upload_files
    from usecases.knowledge_bases import create_kb

    _check_services()
    unreadable: list[UploadOutcome] = []
    files: list[tuple[str, bytes]] = []
    for path in _files(args.paths):
        try:
            files.append((path.name, path.read_bytes()))
        except OSError as exc:
            unreadable.append(UploadOutcome(path.name, "rejected", error=f"cannot read {path}: {exc.strerror}"))
    outcomes = unreadable
    if files:
        kb_id, _ = create_kb(name=args.kb)
        outcomes += upload_files(get_backend(), kb_id=kb_id, files=files)
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


_STAGE_WEIGHT = {"queued": 0.0, "parsing": 0.05, "chunking": 0.3, "embedding": 0.35, "storing": 0.95}


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
                    span = 0.6 if document.status == "embedding" else 0.25 if document.status == "parsing" else 0.0
                    done += base + span * (document.progress or 0.0)
            bar.n = round(done, 2)
            active = [d for d in documents.values() if d.status not in FINAL_STATES]
            bar.set_postfix_str(", ".join(sorted({d.status for d in active})) or "done")
            bar.refresh()
            if not active or time.monotonic() > deadline:
                return documents
            time.sleep(0.5)


def _kb_id(name: str) -> int:
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


def _cmd_search(args) -> int:
    from infra.database import check_database
    from infra.discovery import service_urls
    from rag.citations import citation_label
    from usecases.asking import search_passages

    check_database(service_urls().database_url)  # a plain message, not a traceback, when it does not answer
    kb_id = _kb_id(args.kb)
    hits = search_passages(kb_id=kb_id, question=args.question, k=args.k)
    if args.json:
        print(json.dumps({"question": args.question, "kb": args.kb, "hits": hits}, indent=2, ensure_ascii=False))
        return 0
    for rank, hit in enumerate(hits, start=1):
        text = " ".join(hit["text"].split())
        print(f"{rank}. [{hit['score']:.3f}] {citation_label(hit)}\n   {text[:300]}{'…' if len(text) > 300 else ''}\n")
    if not hits:
        print("no passages (is the knowledge base empty?)")
    return 0


def _cmd_ask(args) -> int:
    from rag.citations import citation_label
    from tasks.backend import get_backend
    from telemetry.answer_streams import read_answer, request_stop
    from usecases.asking import ask

    _check_services()  # both are needed: a plain message, not a traceback (or a 20 s Celery retry), when one is down
    kb_id = _kb_id(args.kb)
    started = time.perf_counter()
    task_id = ask(get_backend(), kb_id=kb_id, question=args.question).task_id
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
    citations = [_citation_json(c) for c in read.citations]
    mode = read.mode
    if args.json:
        extra = {k: True for k in ("stopped", "interrupted", "no_answer") if done.get(k) or meta.get(k)}
        print(json.dumps({"answer": read.text, "mode": mode, "citations": citations, "timings": timings,
                          "task_id": task_id, **({"notices": notices} if notices else {}), **extra},
                         indent=2, ensure_ascii=False))
    else:
        print()
        if mode == "extractive" and not done.get("no_answer"):
            print("(extractive answer: quoted passages, no language model)", file=sys.stderr)
        elif mode == "cache":
            print("(answered from the cache: the same question was asked before)", file=sys.stderr)
        if citations:
            print("Sources:")
            for c in citations:
                print(f"  [{c['n']}] {citation_label(c)} (score {c['score']:.2f})")
    return 0


def _cmd_eval(args) -> int:
    from tqdm import tqdm

    from db.repositories import evaluations as eval_repo
    from infra.database import session_scope
    from rag.evaluation import evaluate_kb

    _check_services()
    kb_id = _kb_id(args.kb)
    with tqdm(total=0, unit="question", file=sys.stderr, disable=args.json, desc="evaluating") as bar:
        def progress(done: int, total: int) -> None:
            bar.total = total
            bar.n = done
            bar.refresh()

        summary = evaluate_kb(kb_id, trigger="cli", seed=args.seed, sample_size=args.sample, progress=progress)
    with session_scope() as session:
        run = eval_repo.get(session=session, run_id=summary["run_id"])
        details = list(run.details or []) if run else []
    if args.json:
        print(json.dumps({**summary, "details": details}, indent=2, ensure_ascii=False))
        return 0
    if not summary["questions"]:
        print(f"{args.kb}: nothing to evaluate (no ready documents with text)")
        return 0
    print(f"{args.kb}: {summary['questions']} questions ({summary['question_mode']}), seed {summary['seed']}, "
          f"run {summary['run_id']}")
    print(f"  hit@1 {summary['hit_at_1']:.2f}   hit@5 {summary['hit_at_5']:.2f}   "
          f"hit@10 {summary['hit_at_10']:.2f}   MRR {summary['mrr']:.3f}")
    missed = sorted(details, key=lambda d: (d["rank"] is not None, -(d["rank"] or 0)))[:5]
    if missed and (missed[0]["rank"] is None or missed[0]["rank"] > 1):
        print("  worst questions:")
        for d in missed:
            where = f"p. {d['page']}" if d.get("page") else (d.get("locator") or "")
            rank = "not in top 10" if d["rank"] is None else f"rank {d['rank']}"
            print(f"    {rank:<14} {d['question'][:90]}  ({d['document']}{', ' + where if where else ''})")
    if summary.get("alert"):
        print(f"  alert raised: {summary['alert']['message']}")
    return 0


def _cmd_check(args) -> int:
    from tasks.backend import get_backend
    from usecases.upkeep import check_consistency

    _check_services()
    kb_id = _kb_id(args.kb) if args.kb else None
    report = check_consistency(get_backend(), kb_id=kb_id, fix=args.fix)
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


def _citation_json(citation: dict) -> dict:
    """The citation fields the CLI promises (README: ``kbchat ask --json``)."""
    keys = ("n", "document", "document_id", "page", "locator", "chunk_id", "score", "text")
    return {key: citation.get(key) for key in keys}


COMMANDS = {
    "run": _cmd_run,
    "web": _cmd_web,
    "migrate": _cmd_migrate,
    "worker": _cmd_worker,
    "scheduler": _cmd_scheduler,
    "ingest": _cmd_ingest,
    "search": _cmd_search,
    "ask": _cmd_ask,
    "eval": _cmd_eval,
    "check": _cmd_check,
    "healthcheck": _cmd_healthcheck,
    "metrics": _cmd_metrics,
}


if __name__ == "__main__":
    sys.exit(main())
