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
from pathlib import Path

from infra.discovery import ServiceUnavailable
from kbchat import access_commands, kb_commands


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="kbchat", description="A private knowledge base that people talk to.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("run", help="everything on one machine: services, workers, scheduler, web app, demo")
    p.add_argument("--host", help="web address (default KBCHAT_WEB_HOST, 127.0.0.1)")
    p.add_argument("--port", type=int, help="web port (default KBCHAT_WEB_PORT, 8501)")
    p.add_argument("--no-demo", action="store_true", help="do not load the demo knowledge base")

    p = sub.add_parser("web", help="the web app alone: pages, sign-in, health checks (production: one per container)")
    p.add_argument("--host")
    p.add_argument("--port", type=int)

    sub.add_parser("migrate", help="bring the database schema to the newest revision (and create the first admin)")

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
    p.add_argument("--mode", choices=("hybrid", "vector", "fulltext"),
                   help="both halves fused (default: KBCHAT_RETRIEVAL_MODE), or one half alone")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("ask", help="ask a question; the answer streams with its citations")
    p.add_argument("question")
    p.add_argument("--kb", required=True)
    p.add_argument("--timeout", type=float, default=120, help="seconds to wait for the answer to start")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("eval", help="evaluate retrieval: sampled chunks (or your own questions), hit@k and MRR")
    p.add_argument("--kb", required=True)
    p.add_argument("--questions", metavar="FILE", type=Path,
                   help="your golden questions: CSV (question, document[, page]) or JSONL with those keys; reports "
                        "document and page hit@1/5/10 and MRR, and what was retrieved instead")
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

    access_commands.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(COMMANDS[args.command](args) or 0)
    except ServiceUnavailable as exc:
        print(f"kbchat: {exc}", file=sys.stderr)
        return 2
    except kb_commands.KnowledgeBaseMissing as exc:
        print(f"kbchat: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


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
    from infra.settings import get_settings
    from usecases.accounts import INITIAL_PASSWORD_FILE, ensure_initial_admin

    url = service_urls().database_url
    check_database(url)
    migrate.upgrade(url)
    print("kbchat: database is at the newest revision")
    password = ensure_initial_admin()  # a database without users gets `admin` (the containers' first start)
    if password:
        print(f"kbchat: created the first admin 'admin' with the password {password} (shown once; also in "
              f"{get_settings().data_dir / INITIAL_PASSWORD_FILE} until it is changed)")
    return 0


def _cmd_worker(args) -> int:
    from tasks.worker import exec_worker

    kb_commands.check_services()
    queues = [q.strip() for q in args.queues.split(",") if q.strip()]
    try:
        exec_worker(queues, args.concurrency)
    except ValueError as exc:
        print(f"kbchat: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_scheduler(args) -> int:
    from tasks.scheduler import exec_scheduler

    kb_commands.check_services()
    exec_scheduler()
    return 0


def _cmd_healthcheck(args) -> int:
    kb_commands.check_services()
    print("ok")
    return 0


def _cmd_metrics(args) -> int:
    from infra.discovery import service_urls
    from kbchat.metrics import serve
    from kbchat.services import check_redis

    check_redis(service_urls().redis_url)
    serve(args.host, args.port)
    return 0


def _eval_golden(args, kb_id: int) -> int:
    from tqdm import tqdm

    from db.repositories import evaluations as eval_repo
    from infra.database import session_scope
    from rag import golden
    from rag.evaluation import evaluate_golden

    try:
        questions = golden.load(kb_id, args.questions.read_bytes(), args.questions.name)
    except OSError as exc:
        print(f"kbchat: cannot read {args.questions}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except golden.QuestionFileError as exc:
        print(f"kbchat: {args.questions.name}: {exc}", file=sys.stderr)
        return 2
    run_id = golden.start_run(kb_id, questions, trigger="cli")
    with tqdm(total=len(questions), unit="question", file=sys.stderr, disable=args.json, desc="asking") as bar:
        def progress(done: int, total: int) -> None:
            bar.n = done
            bar.refresh()

        summary = evaluate_golden(run_id, progress=progress)
    with session_scope() as session:
        run = eval_repo.get(session=session, run_id=run_id)
        details = list(run.details or []) if run else []
    if args.json:
        print(json.dumps({**summary, "details": details}, indent=2, ensure_ascii=False))
        return 0
    page = summary.get("page_hit_at_5")
    print(f"{args.kb}: {summary['questions']} golden questions from {args.questions.name}, run {run_id}")
    print(f"  document hit@1 {summary['hit_at_1']:.2f}   hit@5 {summary['hit_at_5']:.2f}   "
          f"hit@10 {summary['hit_at_10']:.2f}   MRR {summary['mrr']:.3f}")
    if page is not None:
        print(f"  page     hit@1 {summary['page_hit_at_1']:.2f}   hit@5 {page:.2f}   "
              f"hit@10 {summary['page_hit_at_10']:.2f}")
    missed = golden.not_first(details)
    if missed:
        print(f"  {len(missed)} question(s) whose first passage is not from the expected document (or page), worst first:")
        print(f"    {'line':>5}  {'doc rank':>8}  {'page rank':>9}  question → retrieved instead")
        for d in missed[:20]:
            got = "; ".join(f"{t['document']}" + (f" p. {t['page']}" if t.get("page") else "") for t in d["top"])
            print(f"    {d['line']:>5}  {d['rank'] or '—':>8}  {d['page_rank'] or '—':>9}  {d['question'][:70]}"
                  f" ({d['document']}{', p. ' + ','.join(map(str, d['pages'])) if d['pages'] else ''}) → "
                  f"{got or 'nothing'}")
    if summary.get("alert"):
        print(f"  alert raised: {summary['alert']['message']}")
    return 0


def _cmd_eval(args) -> int:
    from tqdm import tqdm

    from db.repositories import evaluations as eval_repo
    from infra.database import session_scope
    from rag.evaluation import evaluate_kb

    kb_commands.check_services()
    kb_id = kb_commands.kb_id_named(args.kb)
    if args.questions is not None:
        return _eval_golden(args, kb_id)
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


COMMANDS = {
    "run": _cmd_run,
    "web": _cmd_web,
    "migrate": _cmd_migrate,
    "worker": _cmd_worker,
    "scheduler": _cmd_scheduler,
    "ingest": kb_commands.ingest_command,
    "search": kb_commands.search_command,
    "ask": kb_commands.ask_command,
    "eval": _cmd_eval,
    "check": kb_commands.check_command,
    "healthcheck": _cmd_healthcheck,
    "metrics": _cmd_metrics,
    **access_commands.COMMANDS,
}


if __name__ == "__main__":
    sys.exit(main())
