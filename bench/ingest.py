"""Ingestion benchmark: a corpus through the real worker path, against the embedding limit and a LangChain-style
baseline; plus PDF text extraction (pypdf vs pypdfium2) and the ONNX int8 embedder with a retrieval-quality check.

    .venv/bin/python bench/ingest.py [--corpus ../shared/corpus/nih] [--concurrency 2] [--rounds 3] [--skip-onnx]
    .venv/bin/python bench/ingest.py --corpus ../shared/corpus/financebench --docs 8   # dense SEC filings

``--docs N`` takes N filings spread over the corpus (sorted by name), each with a text layer on every page. Per round it prints where the worker slots'
time went (parse, chunk, embed, store, other task overhead, idle), read from the workers' ``ingest stages`` log
lines, and how long documents waited in the queue. Starts its own embedded PostgreSQL and Redis in a temporary folder and a real ``kbchat worker`` process; prints
the figures and removes everything it started. Needs the ``bench`` extra (langchain-text-splitters).
"""

from __future__ import annotations

import argparse
import io
import os
import random
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

DEFAULT_CORPUS = ROOT.parent / "shared" / "corpus" / "nih"


def line(label: str, value: str) -> None:
    print(f"  {label:<48} {value}", flush=True)


# --- services and the worker ----------------------------------------------------------------------------


def start_services(data_dir: Path):
    from db import migrate
    from infra.settings import Settings, get_settings
    from kbchat.services import Services

    os.environ["KBCHAT_DATA_DIR"] = str(data_dir)
    for key in ("KBCHAT_DATABASE_URL", "KBCHAT_REDIS_URL"):
        os.environ.pop(key, None)
    services = Services(Settings(data_dir=data_dir), write_state=False)
    urls = services.start()
    os.environ["KBCHAT_DATABASE_URL"] = urls.database_url
    os.environ["KBCHAT_REDIS_URL"] = urls.redis_url
    get_settings.cache_clear()
    migrate.upgrade(urls.database_url)
    return services, urls


def start_worker(concurrency: int, log_path: Path, env: dict[str, str] | None = None) -> subprocess.Popen:
    from telemetry import events

    log = open(log_path, "ab")
    process = subprocess.Popen(
        [sys.executable, "-m", "kbchat.cli", "worker", "--queues", "ingest,maintenance",
         "--concurrency", str(concurrency)],
        env=dict(os.environ, PYTHONUNBUFFERED="1", **(env or {})), stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
        start_new_session=True,
    )
    log.close()
    deadline = time.monotonic() + 120
    while not events.live_workers():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the worker did not start; see {log_path}")
        time.sleep(0.3)
    return process


def stop_worker(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def pick_files(corpus: Path, docs: int | None) -> list[Path]:
    """The corpus's PDFs (a ``pdfs`` folder inside it counts, as FinanceBench has), or ``docs`` of them spread
    evenly over the name order, so a subset mixes companies and filing kinds. A subset takes only filings with a
    text layer on every page: a page OCR reads costs seconds that the baseline (which reads no scans) never spends."""
    folder = corpus / "pdfs" if (corpus / "pdfs").is_dir() else corpus
    files = sorted(folder.glob("*.pdf"))
    if not docs or docs >= len(files):
        return files
    chosen: list[Path] = []
    step = len(files) / docs
    for i in range(docs):
        for path in files[int(i * step):] + files:
            if path not in chosen and not _scanned_pages(path):
                chosen.append(path)
                break
    return sorted(chosen)


def _scanned_pages(path: Path) -> int:
    import pypdfium2

    from rag.parsing.ocr import needs_ocr

    document = pypdfium2.PdfDocument(path.read_bytes())
    try:
        return sum(1 for page in document if needs_ocr(page.get_textpage().get_text_range()))
    finally:
        document.close()


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds so far of a process and its descendants, live or ended (a worker and its task
    processes)."""
    import psutil

    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0.0
    for process in processes:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:
            continue
        # children_*: task processes that ended (a pool child replaced) and were reaped by this one
        total += times.user + times.system + times.children_user + times.children_system
    return total


def stage_shares(log_text: str, wall: float, slots: int, documents: list) -> dict[str, float]:
    """Where the worker slots' time (``slots`` × ``wall``) went, from the round's ``ingest stages`` lines: each
    stage's share, the rest of the tasks' time (``other``) and slots with no task (``idle``); plus the documents'
    mean wait in the queue (upload stored → its task started) in seconds and as a share of their time to ready."""
    from rag.ingestion_timing import STAGES, parse_report

    reports = [r for r in map(parse_report, log_text.splitlines()) if r is not None]
    capacity = wall * slots
    shares = {name: sum(r.get(name, 0.0) for r in reports) / capacity for name in STAGES}
    busy = sum(r.get("total", 0.0) for r in reports) / capacity
    shares["other"] = max(0.0, busy - sum(shares.values()))
    shares["idle"] = max(0.0, 1.0 - busy)
    waits = [(d.started_at - d.created_at).total_seconds() for d in documents if d.started_at and d.created_at]
    spans = [(d.finished_at - d.created_at).total_seconds() for d in documents if d.finished_at and d.created_at]
    shares["queue_wait_s"] = statistics.mean(waits) if waits else 0.0
    shares["queue_wait_share"] = sum(waits) / sum(spans) if spans and sum(spans) else 0.0
    shares["tasks"] = len(reports)
    return shares


def ingest_through_worker(files: list[Path] | list[tuple[str, bytes]], kb_name: str) -> tuple[float, list]:
    """Store and enqueue every file (a path, or a name and its bytes) as the upload page does; the seconds until all
    are final, and the documents."""
    from db.models import FINAL_STATES
    from db.repositories import documents as document_repo
    from infra.database import session_scope
    from rag.access import Actor
    from tasks.backend import get_backend
    from usecases.documents import upload_files
    from usecases.knowledge_bases import create_kb

    payloads = [(f.name, f.read_bytes()) if isinstance(f, Path) else f for f in files]
    started = time.perf_counter()
    ids = []
    kb_id, _ = create_kb(Actor.operator("bench"), name=kb_name)
    for name, data in payloads:  # one at a time, so the worker starts on the first while the others are stored
        (outcome,) = upload_files(get_backend(), Actor.operator("bench"), kb_id=kb_id, files=[(name, data)])
        if outcome.status != "queued":
            raise RuntimeError(f"{name}: {outcome.status} {outcome.error}")
        ids.append(outcome.document_id)
    while True:
        with session_scope() as session:
            documents = document_repo.list_by_ids(session=session, document_ids=ids)
        if all(d.status in FINAL_STATES for d in documents):
            return time.perf_counter() - started, documents
        time.sleep(0.2)


def chunk_texts(kb_name: str) -> list[str]:
    """The texts the pipeline embedded (context header + heading path + chunk), in document order."""
    from sqlalchemy import text

    from infra.database import session_scope
    from rag.ingestion import embedding_text

    with session_scope() as session:
        rows = session.execute(
            text("SELECT d.context, c.heading, c.text FROM chunks c JOIN knowledge_bases k ON k.id = c.kb_id "
                 "JOIN documents d ON d.id = c.document_id "
                 "WHERE k.name = :name ORDER BY c.document_id, c.ordinal"), {"name": kb_name}
        ).all()
    return [embedding_text(context, heading, body) for context, heading, body in rows]


# --- encoders -------------------------------------------------------------------------------------------


def torch_model():
    from sentence_transformers import SentenceTransformer

    from rag.embedding import model_name

    return SentenceTransformer(model_name(), device="cpu")


def onnx_model():
    from rag.embedding import model_cache_dir, model_name
    from rag.onnx_embedder import OnnxEncoder

    return OnnxEncoder(model_name(), model_cache_dir())


def timed_encode(model, texts: list[str], batch_size: int) -> tuple[float, np.ndarray]:
    model.encode(texts[:batch_size], batch_size=batch_size, normalize_embeddings=True)  # warm up
    started = time.perf_counter()
    vectors = model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                           show_progress_bar=False)
    return time.perf_counter() - started, np.asarray(vectors, dtype=np.float32)


# --- the LangChain-style baseline -----------------------------------------------------------------------


def baseline(files: list[Path], model, database_url: str) -> tuple[float, int, int]:
    """pypdf pages → RecursiveCharacterTextSplitter(1000, 200) → the same model → one INSERT per row."""
    import psycopg
    from langchain_text_splitters import RecursiveCharacterTextSplitter
    from pypdf import PdfReader

    conninfo = database_url.replace("postgresql+psycopg://", "postgresql://")
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    with psycopg.connect(conninfo) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_baseline (id bigserial PRIMARY KEY, source text, page int, "
                     "text text, embedding vector(384))")
        conn.commit()
    pages = chunks = 0
    started = time.perf_counter()
    with psycopg.connect(conninfo) as conn:
        for path in files:
            reader = PdfReader(path)
            docs = [(index + 1, page.extract_text() or "") for index, page in enumerate(reader.pages)]
            pieces = [(page, piece) for page, text in docs for piece in splitter.split_text(text)]
            vectors = model.encode([p for _, p in pieces], batch_size=32, show_progress_bar=False)
            with conn.cursor() as cursor:
                for (page, piece), vector in zip(pieces, vectors, strict=True):
                    cursor.execute(
                        "INSERT INTO bench_baseline (source, page, text, embedding) VALUES (%s, %s, %s, %s::vector)",
                        (path.name, page, piece.replace("\x00", ""), "[" + ",".join(f"{x:.7g}" for x in vector) + "]"),
                    )
            conn.commit()
            pages += len(docs)
            chunks += len(pieces)
    return time.perf_counter() - started, pages, chunks


# --- extraction -----------------------------------------------------------------------------------------


def extraction(files: list[Path]) -> dict[str, tuple[float, int, int]]:
    """Seconds, pages and characters for pypdf (its defaults and ours) and pypdfium2 on the same files."""
    import pypdfium2
    from pypdf import PdfReader, apply_configuration
    from pypdf.errors import LimitReachedError

    from rag.parsing import PDF_LIMITS

    out: dict[str, tuple[float, int, int]] = {}
    for label, limits in (("pypdf (its default limits)", {}), ("pypdf (rag.parsing.PDF_LIMITS)", PDF_LIMITS)):
        started, pages, chars, refused = time.perf_counter(), 0, 0, 0
        with apply_configuration(**limits):
            for path in files:
                try:
                    reader = PdfReader(io.BytesIO(path.read_bytes()))
                    texts = [page.extract_text() or "" for page in reader.pages]
                except LimitReachedError:
                    refused += 1
                    continue
                pages += len(texts)
                chars += sum(len(t) for t in texts)
        out[label + (f", {refused} file(s) refused" if refused else "")] = (time.perf_counter() - started, pages, chars)
    started, pages, chars = time.perf_counter(), 0, 0
    for path in files:
        document = pypdfium2.PdfDocument(path.read_bytes())
        for page in document:
            textpage = page.get_textpage()
            chars += len(textpage.get_text_range())
            textpage.close()
            page.close()
            pages += 1
        document.close()
    out["pypdfium2"] = (time.perf_counter() - started, pages, chars)
    return out


# --- retrieval quality ----------------------------------------------------------------------------------

_WORD = re.compile(r"[A-Za-z][A-Za-z\-]{3,}")


def questions_from_chunks(texts: list[str], count: int, seed: int = 7) -> list[tuple[int, str]]:
    """(chunk index, question) pairs: a question is a sentence of the chunk with a third of its words dropped and
    its order shuffled a little, so it is a cue, not a copy. Chunks with too little prose are skipped."""
    rng = random.Random(seed)
    candidates = list(range(len(texts)))
    rng.shuffle(candidates)
    out = []
    for index in candidates:
        body = texts[index].split("\n", 1)[-1]
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", body) if len(_WORD.findall(s)) >= 8]
        if not sentences:
            continue
        words = _WORD.findall(rng.choice(sentences))
        kept = [w for i, w in enumerate(words) if i % 3 != 2][:14]
        if len(kept) >= 5:
            cut = rng.randrange(1, len(kept))
            out.append((index, "What about " + " ".join(kept[cut:] + kept[:cut]).lower() + "?"))
        if len(out) >= count:
            break
    return out


def sentence_questions(texts: list[str], count: int, seed: int = 5) -> list[tuple[int, str]]:
    """(chunk index, question) pairs: one whole sentence of the chunk (6-30 words), as a person quoting it asks."""
    rng = random.Random(seed)
    out = []
    for index in rng.sample(range(len(texts)), min(count, len(texts))):
        body = texts[index].split("\n", 1)[-1]
        sentences = [s for s in re.split(r"(?<=[.!?])\s+", body) if 6 <= len(s.split()) <= 30]
        if sentences:
            out.append((index, rng.choice(sentences)))
    return out


def ranks(model, vectors: np.ndarray, texts: list[str], questions: list[tuple[int, str]]) -> np.ndarray:
    """Per question, the rank of the first right chunk: its source, or any chunk holding the question verbatim
    (overlapping windows and boilerplate pages repeat sentences); 50 when none is in the top 50."""
    asked = np.asarray(model.encode([q for _, q in questions], batch_size=64, normalize_embeddings=True),
                       dtype=np.float32)
    scores = asked @ vectors.T
    out = []
    for i, (source, question) in enumerate(questions):
        top = np.argsort(-scores[i])[:50]
        right = [r for r, j in enumerate(top) if j == source or (len(question) > 40 and question in texts[j])]
        out.append(right[0] if right else 50)
    return np.array(out)


def compare(label: str, before: np.ndarray, after: np.ndarray) -> None:
    """recall@k of torch and onnx-int8 on the same questions, with the questions only one of them gets right."""
    for k in (1, 5, 10):
        line(f"{label} recall@{k}", f"torch {np.mean(before < k):.3f} | onnx-int8 {np.mean(after < k):.3f}  "
             f"(right only with torch {int(np.sum((before < k) & (after >= k)))}, "
             f"only with onnx-int8 {int(np.sum((after < k) & (before >= k)))})")


# --- rounds through the worker ---------------------------------------------------------------------------


def worker_round(files: list[Path], concurrency: int, env: dict[str, str], data_dir: Path, tag: str) -> dict:
    """One round: a fresh worker (with ``env`` over the settings), warmed up, then the files into a base of their
    own; its seconds, documents, stage shares and CPU use."""
    log_path = data_dir / f"worker-{tag}.log"
    worker = start_worker(concurrency, log_path, env)
    try:
        # Load the model in the worker processes before timing (a once-per-process cost, not throughput).
        warm = data_dir / f"warm-up-{tag}"
        warm.mkdir()
        for number in range(concurrency * 2):
            (warm / f"w{number}.txt").write_text(f"Warm-up document {tag} {number}. It loads the embedding model.\n")
        warm_seconds, _ = ingest_through_worker(sorted(warm.iterdir()), f"warm-up-{tag}")
        offset = log_path.stat().st_size
        cpu_before = tree_cpu_seconds(worker.pid)
        seconds, documents = ingest_through_worker(files, f"bench-{tag}")
        cpu = tree_cpu_seconds(worker.pid) - cpu_before
        time.sleep(0.5)  # the last task's log line is written just after its document is ready
        with open(log_path, "rb") as handle:
            handle.seek(offset)
            round_log = handle.read().decode("utf-8", "replace")
    finally:
        stop_worker(worker)
    shares = stage_shares(round_log, seconds, concurrency, documents)
    shares["cpu"] = cpu / (seconds * (os.cpu_count() or 1))
    shares["cpu_per_chunk"] = cpu / max(1, sum(d.chunk_count for d in documents))
    return {"seconds": seconds, "documents": documents, "shares": shares, "warm": warm_seconds,
            "load": os.getloadavg()[0], "kb": f"bench-{tag}"}


def report_rounds(rounds: list[dict], concurrency: int) -> None:
    seconds = statistics.median(r["seconds"] for r in rounds)
    documents = rounds[0]["documents"]
    shares = [r["shares"] for r in rounds]
    failed = [f"{d.filename}: {d.error}" for d in documents if d.status != "ready"]
    pages = sum(d.pages or 0 for d in documents)
    chunks = sum(d.chunk_count for d in documents)
    line("model load + warm-up (not counted), median", f"{statistics.median(r['warm'] for r in rounds):.1f} s")
    line("documents / pages / chunks", f"{len(documents)} / {pages} / {chunks}")
    for reason in failed:  # e.g. a scanned protocol without a text layer: a correct, explained failure
        line("  not ingested", reason)
    line(f"wall time, median of {len(rounds)} rounds", f"{seconds:.1f} s  (rounds: "
         + ", ".join(f"{r['seconds']:.1f} at load {r['load']:.1f}" for r in rounds) + ")")
    line("pages/s", f"{pages / seconds:.2f}")
    line("chunks/s", f"{chunks / seconds:.2f}")
    keys = ("parse", "chunk", "embed", "store", "other", "idle")
    line(f"worker slot time ({concurrency} × wall), median",
         "  ".join(f"{k} {statistics.median(s[k] for s in shares):.0%}" for k in keys))
    line("waiting in the queue: mean per document, median",
         f"{statistics.median(s['queue_wait_s'] for s in shares):.1f} s  "
         f"({statistics.median(s['queue_wait_share'] for s in shares):.0%} of upload → ready)")
    line("ingest tasks per round", f"{int(shares[0]['tasks'])}")
    line("worker CPU time ÷ (wall × cores), median",
         f"{statistics.median(s['cpu'] for s in shares):.0%}  (the rest: idle cores, or other processes' use)")
    line("worker CPU seconds per chunk, median (steadier than wall time under load)",
         f"{statistics.median(s['cpu_per_chunk'] for s in shares) * 1000:.1f} ms")


# --- main -----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS)
    parser.add_argument("--concurrency", type=int, default=2, help="ingest worker processes (make run uses 2)")
    parser.add_argument("--questions", type=int, default=800)
    parser.add_argument("--versus", default="", help="also run each round with these settings (KBCHAT_X=v,...), "
                        "interleaved with the default, e.g. KBCHAT_EMBEDDING_BATCH_SIZE=64,KBCHAT_EMBEDDING_THREADS=1")
    parser.add_argument("--docs", type=int, default=None, help="only this many PDFs, spread over the corpus")
    parser.add_argument("--skip-onnx", action="store_true", help="no torch-vs-onnx quality comparison")
    parser.add_argument("--skip-baseline", action="store_true", help="no LangChain-style baseline (quicker)")
    parser.add_argument("--skip-extraction", action="store_true", help="no pypdf-vs-pdfium extraction figures")
    parser.add_argument("--rounds", type=int, default=3, help="worker-path rounds and raw encodes; medians count")
    args = parser.parse_args()
    files = pick_files(args.corpus, args.docs)
    if not files:
        print(f"no PDFs in {args.corpus}")
        return 0
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

    from infra.settings import get_settings

    data_dir = Path(tempfile.mkdtemp(prefix="kbchat-bench-"))
    services = None
    try:
        services, urls = start_services(data_dir)
        settings = get_settings()
        # The workers run at the background niceness (as make run starts them); so do the raw encode and the
        # baseline here, or on a busy machine the comparison would be between priorities, not pipelines.
        os.nice(settings.background_worker_nice)
        print(f"kbchat ingest benchmark: {len(files)} files from {args.corpus}, {os.cpu_count()} cores, "
              f"load average {' / '.join(f'{x:.2f}' for x in os.getloadavg())}, "
              f"backend {settings.task_backend}, embedder {settings.embedding_backend}, "
              f"worker concurrency {args.concurrency}, batch {settings.embedding_batch_size}")
        print(f"CPU: {describe()}")
        versus = dict(item.split("=", 1) for item in args.versus.split(",")) if args.versus else None
        configs = [("default", {})] + ([("versus " + args.versus, versus)] if versus else [])
        results: dict[str, list] = {label: [] for label, _ in configs}
        for number in range(args.rounds):
            for label, env in configs:  # interleaved, so both see the same load
                results[label].append(worker_round(files, args.concurrency, env, data_dir, f"{number}-{len(env)}"))
        for label, _ in configs:
            print(f"\nthrough the real worker path (upload → queue → parse → chunk → embed → store), {label}")
            report_rounds(results[label], args.concurrency)
        default_rounds = results["default"]
        seconds = statistics.median(r["seconds"] for r in default_rounds)
        documents = default_rounds[0]["documents"]
        pages = sum(d.pages or 0 for d in documents)
        chunks = sum(d.chunk_count for d in documents)
        if versus:
            other = statistics.median(r["seconds"] for r in results[configs[1][0]])
            line("default ÷ versus pages/s (median rounds)", f"{other / seconds:.2f}")

        texts = chunk_texts(default_rounds[0]["kb"])
        need_torch = not (args.skip_baseline and args.skip_onnx and settings.embedding_backend == "onnx-int8")
        torch = torch_model() if need_torch else None
        if settings.embedding_backend == "torch" or not args.skip_onnx:  # the limit, or the vectors compared
            torch_seconds, torch_vectors = timed_encode(torch, texts, settings.embedding_batch_size)
            limit_seconds = torch_seconds
        if settings.embedding_backend == "onnx-int8":
            onnx = onnx_model()
            limit_seconds = statistics.median(
                timed_encode(onnx, texts, settings.embedding_batch_size)[0] for _ in range(args.rounds)
            )
        encode_rate = len(texts) / limit_seconds
        print(f"\nthe limit: raw encode of the same {len(texts)} chunk texts, same model and embedder, one process, "
              f"all cores (median of {args.rounds if settings.embedding_backend == 'onnx-int8' else 1})")
        line(f"{settings.embedding_backend} encode chunks/s", f"{encode_rate:.2f}")
        line("pipeline chunks/s ÷ raw encode chunks/s", f"{(chunks / seconds) / encode_rate:.2f}  (target ≥ 0.95)")

        if not args.skip_baseline:
            base_seconds, base_pages, base_chunks = baseline(files, torch, urls.database_url)
            print("\nLangChain-style baseline (pypdf → RecursiveCharacterTextSplitter 1000/200 → torch → row INSERTs)")
            line("pages / chunks", f"{base_pages} / {base_chunks}")
            line("wall time", f"{base_seconds:.1f} s")
            line("pages/s", f"{base_pages / base_seconds:.2f}")
            line("chunks/s", f"{base_chunks / base_seconds:.2f}")
            line("kbchat pages/s ÷ baseline pages/s",
                 f"{(pages / seconds) / (base_pages / base_seconds):.2f}  (target ≥ 4)")

        if not args.skip_extraction:
            print("\nPDF text extraction on the same files")
            for label, (secs, n_pages, chars) in extraction(files).items():
                line(label, f"{n_pages / secs:7.1f} pages/s  {n_pages} pages  {chars:,} chars  {secs:.1f} s")

        if not args.skip_onnx:
            try:
                started = time.perf_counter()
                onnx = onnx_model()
                export_seconds = time.perf_counter() - started
            except ImportError as exc:
                print(f"\nONNX int8: skipped ({exc})")
            else:
                onnx_seconds, onnx_vectors = timed_encode(onnx, texts, settings.embedding_batch_size)
                cosine = (onnx_vectors * torch_vectors).sum(axis=1)
                print("\nONNX with dynamic int8 quantisation (exported locally from the packaged model)")
                line("load (the export was made once, by the worker)", f"{export_seconds:.1f} s")
                line("onnx-int8 encode chunks/s", f"{len(texts) / onnx_seconds:.2f}  "
                     f"({torch_seconds / onnx_seconds:.2f}x torch)")
                line("cosine to torch vectors: mean / min", f"{cosine.mean():.4f} / {cosine.min():.4f}")
                for kind, questions in (
                    ("cue", questions_from_chunks(texts, args.questions)),
                    ("sentence", sentence_questions(texts, args.questions)),
                ):
                    compare(f"{len(questions)} {kind} questions", ranks(torch, torch_vectors, texts, questions),
                            ranks(onnx, onnx_vectors, texts, questions))
        return 0
    finally:
        if services is not None:
            services.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
