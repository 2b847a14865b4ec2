"""Retrieval quality on real questions: FinanceBench's filings and analyst questions (``shared/corpus/financebench``).

All filings go into one knowledge base (a company's other filings are the distractors); each question is asked of
kbchat's default (hybrid) search, its vector half, its full-text half, and a LangChain-style baseline (page text →
1000/200-character recursive splitter → the same embedding model → exact cosine), all in the same run. Printed per
pipeline: document hit@1/5/10 (a passage of the question's document among the top k), page hit@1/5/10 (its
evidence page of that document among the top k) and document MRR; then the questions the default misses at 5,
with what it retrieved instead.

The knowledge base is ingested once through kbchat's pipeline (parse → chunk → embed → store, in this process) and
reused while its documents and chunk recipe are current (``--rebuild`` starts over); the baseline's vectors are
cached beside it. Nothing here is part of the tests.

    make bench  # or:
    .venv/bin/python bench/retrieval_quality.py              # all 71 filings, 126 questions
    .venv/bin/python bench/retrieval_quality.py --docs 20    # the first 20 filings and their questions
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus" / "financebench"
DATA = ROOT / "bench" / ".data"
KS = (1, 5, 10)
MODES = ("hybrid", "vector", "fulltext")


@dataclass
class Question:
    id: str
    text: str
    document: str  # file name
    pages: set[int]


def load_questions(files: list[Path]) -> list[Question]:
    names = {f.name for f in files}
    questions = []
    for line in (CORPUS / "questions.jsonl").read_text().splitlines():
        row = json.loads(line)
        document = row["doc_name"] + ".pdf"
        if document in names:
            pages = {e["page"] for e in row["evidence"] if e["doc_name"] == row["doc_name"]}
            questions.append(Question(row["id"], row["question"], document, pages))
    return questions


def build_kb(name: str, files: list[Path], rebuild: bool) -> tuple[int, list[int]]:
    """The knowledge base with every file ingested by the current recipe (ingests what is missing), and the ids of
    ``files``' documents in it."""
    from db.repositories import documents as document_repo
    from db.repositories import knowledge_bases as kb_repo
    from infra.database import session_scope
    from rag import library
    from rag.context import CHUNK_RECIPE
    from rag.ingestion import ingest_document

    with session_scope() as session:
        kb = kb_repo.get_by_name(session=session, name=name)
        if kb is not None and (rebuild or kb.chunk_recipe != CHUNK_RECIPE):
            library.delete_kb(session=session, kb_id=kb.id)
    with session_scope() as session:
        kb_id = library.get_or_create_kb(session=session, name=name).id
        todo, ids = [], []
        for path in files:
            outcome = library.store_upload(session=session, kb_id=kb_id, filename=path.name, data=path.read_bytes())
            ids.append(outcome.document_id)
            if outcome.status == "queued":
                todo.append(outcome.document_id)
            elif outcome.document_id is not None:
                document = document_repo.get(session=session, document_id=outcome.document_id)
                if document.status != "ready":
                    todo.append(document.id)
    if todo:
        started = time.perf_counter()
        for document_id in tqdm(todo, desc="ingest (kbchat pipeline)", unit="doc"):
            result = ingest_document(document_id)
            if result.status != "ready":
                print(f"  document {document_id}: {result.status} {result.error}", file=sys.stderr)
        print(f"ingested {len(todo)} documents in {time.perf_counter() - started:.0f} s")
    return kb_id, ids


def baseline_index(files: list[Path]) -> tuple[np.ndarray, list[tuple[str, int]]]:
    """LangChain-style chunks (page text → 1000/200 recursive character splitter) and their vectors, cached."""
    from langchain_text_splitters import RecursiveCharacterTextSplitter

    from rag import embedding
    from rag.parsing import parse

    key = hashlib.sha1("|".join(f.name for f in files).encode()).hexdigest()[:12]
    cache = DATA / f"financebench-baseline-{embedding.model_label().replace('/', '_')}-{key}.npz"
    if cache.exists():
        saved = np.load(cache, allow_pickle=True)
        return saved["vectors"], [tuple(x) for x in saved["where"]]
    splitter = RecursiveCharacterTextSplitter(chunk_size=1000, chunk_overlap=200)
    texts, where = [], []
    for path in tqdm(files, desc="baseline: parse + split", unit="doc"):
        for section in parse(path.read_bytes(), path.name).sections:
            for piece in splitter.split_text(section.text):
                texts.append(piece)
                where.append((path.name, section.page))
    vectors = np.zeros((len(texts), 0), dtype=np.float32)
    parts = []
    for start in tqdm(range(0, len(texts), 256), desc="baseline: embed", unit="batch"):
        parts.append(embedding.embed(texts[start : start + 256]))
    vectors = np.vstack(parts) if parts else vectors
    DATA.mkdir(parents=True, exist_ok=True)
    np.savez(cache, vectors=vectors, where=np.array(where, dtype=object))
    return vectors, where


def ntsb_evaluation(seeds: tuple[int, ...] = (1, 2, 3), size: int = 100) -> dict[str, float]:
    """The synthetic evaluation the README tracks: 20 NTSB reports, ``seeds`` × ``size`` extractive questions
    through ``rag.evaluation.evaluate_kb`` (no language model), averaged."""
    from rag.evaluation import evaluate_kb

    files = sorted((CORPUS.parent / "ntsb").glob("*.pdf"))
    kb_id, _ = build_kb(f"bench-ntsb-{len(files)}", files, rebuild=False)
    runs = [evaluate_kb(kb_id, trigger="cli", seed=seed, sample_size=size) for seed in seeds]
    return {key: float(np.mean([run[key] for run in runs])) for key in ("hit_at_1", "hit_at_5", "hit_at_10", "mrr")}


def score(results: list[tuple[Question, list[tuple[str, set[int]]]]]) -> dict[str, float]:
    """document hit@k, page hit@k and document MRR over (question, [(document, pages), …]) pairs."""
    figures: dict[str, float] = {}
    n = max(len(results), 1)
    for k in KS:
        figures[f"doc@{k}"] = sum(any(d == q.document for d, _ in got[:k]) for q, got in results) / n
        figures[f"page@{k}"] = sum(any(d == q.document and p & q.pages for d, p in got[:k]) for q, got in results) / n
    figures["mrr"] = sum(next((1 / r for r, (d, _) in enumerate(got, 1) if d == q.document), 0.0)
                         for q, got in results) / n
    return figures


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--docs", type=int, default=0,
                        help="only the first N filings (by name) and their questions, searched among themselves")
    parser.add_argument("--rebuild", action="store_true", help="ingest the knowledge base again")
    parser.add_argument("--failures", type=int, default=15, help="how many missed questions to print")
    parser.add_argument("--modes", default=",".join(MODES), help="which kbchat pipelines to measure")
    parser.add_argument("--no-baseline", action="store_true")
    parser.add_argument("--no-ntsb", action="store_true", help="skip the NTSB synthetic evaluation")
    args = parser.parse_args()
    if not CORPUS.exists():
        print(f"no corpus at {CORPUS}", file=sys.stderr)
        return 1

    from bench.retrieval import start_services
    from infra.database import session_scope
    from rag import embedding
    from rag.golden import passage_pages
    from rag.retrieval import search

    files = sorted((CORPUS / "pdfs").glob("*.pdf"))
    if args.docs:
        files = files[: args.docs]
    questions = load_questions(files)
    services = start_services(DATA)
    try:
        # One base for all runs; --docs N searches only the first N filings' documents in it.
        kb_id, document_ids = build_kb("bench-financebench", files, args.rebuild)
        subset = document_ids if args.docs else None
        table: dict[str, dict[str, float]] = {}
        misses = []
        for mode in [m for m in args.modes.split(",") if m]:
            results, latencies = [], []
            for q in tqdm(questions, desc=f"kbchat {mode}", unit="q"):
                started = time.perf_counter()
                with session_scope() as session:
                    hits = search(session=session, kb_id=kb_id, question=q.text, k=10, mode=mode,
                                  document_ids=subset)
                latencies.append(time.perf_counter() - started)
                results.append((q, [(h.document, passage_pages(h)) for h in hits]))
                if mode == "hybrid" and not any(h.document == q.document for h in hits[:5]):
                    misses.append((q, hits[:3]))
            table[f"kbchat {mode}"] = score(results) | {"p50 ms": 1000 * float(np.median(latencies)),
                                                         "p95 ms": 1000 * float(np.percentile(latencies, 95))}
        if not args.no_baseline:
            vectors, where = baseline_index(files)
            results = []
            for q in tqdm(questions, desc="baseline", unit="q"):
                sims = vectors @ embedding.embed([q.text])[0]
                top = np.argsort(-sims)[:10]
                results.append((q, [(where[i][0], {where[i][1]}) for i in top]))
            table["LangChain-style baseline"] = score(results)
        ntsb = None if args.no_ntsb else ntsb_evaluation()
    finally:
        if services is not None:
            services.stop()

    print(f"\n{len(files)} filings, {len(questions)} questions; CPU: {describe()}")
    columns = [f"doc@{k}" for k in KS] + [f"page@{k}" for k in KS] + ["mrr", "p50 ms", "p95 ms"]
    print(f"{'pipeline':<28}" + "".join(f"{c:>9}" for c in columns))
    for name, figures in table.items():
        print(f"{name:<28}" + "".join(f"{figures[c]:>9.3f}" if c in figures else f"{'':>9}" for c in columns))
    base = table.get("LangChain-style baseline")
    if base and "kbchat hybrid" in table:
        for c in ("doc@5", "page@5"):
            print(f"kbchat hybrid - baseline, {c}: {table['kbchat hybrid'][c] - base[c]:+.3f}")
    if ntsb:
        print(f"\nNTSB synthetic evaluation (20 reports, 3 seeds x 100 extractive questions): hit@1 {ntsb['hit_at_1']:.3f}"
              f"  hit@5 {ntsb['hit_at_5']:.3f}  hit@10 {ntsb['hit_at_10']:.3f}  MRR {ntsb['mrr']:.3f}")
    if misses:
        print(f"\nmissed at 5 by kbchat hybrid ({len(misses)}), first {args.failures}:")
        for q, got in misses[: args.failures]:
            print(f"- {q.document} p. {sorted(q.pages)}: {q.text[:110]}")
            for h in got:
                print(f"    got {h.document} p. {h.page} [{h.score:.3f}]")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
