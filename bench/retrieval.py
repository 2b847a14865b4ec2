"""Retrieval at 100k chunks: p50/p95 of question embedding + hybrid search, and recall@10 of the HNSW vector part
against exact search, at several ``ef_search``. Prints figures; never part of the tests.

The knowledge base is built once and reused (``--rebuild`` to start over): real chunks of the corpus
(``shared/corpus``), parsed, chunked and embedded like an upload, then variations of them up to the wanted size.
A variation mixes the sentences of two real chunks; its vector blends theirs (plus a little noise) instead of
being re-embedded, which keeps the build to minutes on a CPU while keeping the vectors' clustering realistic.

    .venv/bin/python bench/retrieval.py                 # embedded services under bench/.data
    .venv/bin/python bench/retrieval.py --chunks 20000 --queries 100 --ef 20,40,80
"""

from __future__ import annotations

import argparse
import hashlib
import os
import random
import re
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.machine import describe  # noqa: E402

CORPUS = ROOT.parent / "shared" / "corpus"
KB_NAME = "bench-retrieval-{chunks}"
CHUNKS_PER_DOCUMENT = 2000


def start_services(data_dir: Path) -> object | None:
    """Embedded PostgreSQL (and Redis) under ``data_dir`` unless KBCHAT_DATABASE_URL is set; migrated."""
    from db import migrate

    if os.environ.get("KBCHAT_DATABASE_URL"):
        migrate.upgrade(os.environ["KBCHAT_DATABASE_URL"])
        return None
    from infra.settings import Settings, get_settings
    from kbchat.services import Services

    data_dir.mkdir(parents=True, exist_ok=True)
    services = Services(Settings(data_dir=data_dir), write_state=False)
    urls = services.start()
    os.environ["KBCHAT_DATABASE_URL"], os.environ["KBCHAT_REDIS_URL"] = urls.database_url, urls.redis_url
    get_settings.cache_clear()
    migrate.upgrade(urls.database_url)
    return services


def corpus_chunks(limit: int) -> list[tuple[str, int | None, str]]:
    """(file, page, text) of real chunks of the corpus, parsed and chunked as an upload would be."""
    from infra.settings import get_settings
    from rag import embedding
    from rag.chunking import split_sections
    from rag.parsing import ParseError, parse

    settings = get_settings()
    files = sorted((CORPUS / "ntsb").glob("*.pdf")) + sorted((CORPUS / "nih").glob("*.pdf"))
    chunks: list[tuple[str, int | None, str]] = []
    for path in files:
        try:
            parsed = parse(path.read_bytes(), path.name)
        except ParseError as exc:
            print(f"  skipped {path.name}: {exc}")
            continue
        drafts = split_sections(
            parsed.sections,
            count_tokens=embedding.count_tokens,
            max_tokens=settings.chunk_tokens,
            overlap_tokens=settings.chunk_overlap_tokens,
        )
        chunks.extend((path.name, d.page, d.text) for d in drafts)
        if len(chunks) >= limit:
            break
    return chunks[:limit]


def sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if len(s.split()) >= 3] or [text]


def build(kb_name: str, total: int, base_limit: int, seed: int) -> int:
    """Create the benchmark base; returns its id."""
    import numpy as np

    from db.repositories import chunks as chunk_repo
    from db.repositories import documents as document_repo
    from infra.database import session_scope
    from infra.settings import get_settings
    from rag import embedding
    from rag.library import get_or_create_kb

    rng = random.Random(seed)
    started = time.perf_counter()
    base = corpus_chunks(base_limit)
    print(
        f"  {len(base)} real chunks from the corpus ({time.perf_counter() - started:.0f} s to parse and chunk)"
    )
    started = time.perf_counter()
    vectors = embedding.embed([text for _, _, text in base])
    print(
        f"  embedded in {time.perf_counter() - started:.0f} s ({len(base) / (time.perf_counter() - started):.0f}/s)"
    )

    noise = np.random.default_rng(seed)
    rows: list[tuple[str, int | None, str, np.ndarray]] = [
        (f, p, t, v) for (f, p, t), v in zip(base, vectors, strict=True)
    ]
    while len(rows) < total:
        a, b = rng.randrange(len(base)), rng.randrange(len(base))
        mine, theirs = sentences(base[a][2]), sentences(base[b][2])
        mixed = [s if rng.random() > 0.3 else rng.choice(theirs) for s in mine]
        vector = 0.75 * vectors[a] + 0.25 * vectors[b] + noise.normal(0, 0.02, vectors.shape[1])
        rows.append((base[a][0], base[a][1], " ".join(mixed), vector / np.linalg.norm(vector)))

    with session_scope() as session:
        kb_id = get_or_create_kb(session=session, name=kb_name).id
    started = time.perf_counter()
    for number, start in enumerate(range(0, len(rows), CHUNKS_PER_DOCUMENT)):
        part = rows[start : start + CHUNKS_PER_DOCUMENT]
        with session_scope() as session:
            label = f"bench-{number:03d}.pdf"
            document = document_repo.create_with_blob(
                session=session,
                kb_id=kb_id,
                filename=label,
                sha256=hashlib.sha256(label.encode()).hexdigest(),
                mime="application/pdf",
                data=b"",
            )
            chunk_repo.replace_for_document(
                session=session,
                kb_id=kb_id,
                document_id=document.id,
                text_search_config=get_settings().text_search_config,
                rows=[
                    chunk_repo.ChunkRow(
                        ordinal=i,
                        page=page,
                        locator=None,
                        heading=None,
                        text=text,
                        token_count=len(text.split()),
                        embedding=vector,
                    )
                    for i, (_, page, text, vector) in enumerate(part)
                ],
            )
            document_repo.mark_ready(session=session, document_id=document.id, pages=1, chunk_count=len(part))
        done = start + len(part)
        print(
            f"\r  stored {done}/{len(rows)} chunks ({done / (time.perf_counter() - started):.0f}/s, HNSW included)",
            end="",
            flush=True,
        )
    print()
    return kb_id


def find_kb(kb_name: str) -> tuple[int, int] | None:
    from db.repositories import knowledge_bases as kb_repo
    from infra.database import session_scope

    with session_scope() as session:
        kb = kb_repo.get_by_name(session=session, name=kb_name)
        return (kb.id, kb_repo.stats(session=session, kb_id=kb.id)["chunks"]) if kb else None


def questions(kb_id: int, count: int, seed: int) -> list[str]:
    """Sentences of the base's real chunks, as questions a reader might type (8-25 words)."""
    from sqlalchemy import text

    from infra.database import session_scope

    with session_scope() as session:
        texts = (
            session.execute(
                text("SELECT text FROM chunks WHERE kb_id = :kb ORDER BY id LIMIT 5000"), {"kb": kb_id}
            )
            .scalars()
            .all()
        )
    rng = random.Random(seed)
    picked: list[str] = []
    while len(picked) < count:
        candidates = [s for s in sentences(rng.choice(texts)) if 8 <= len(s.split()) <= 25]
        if candidates:
            picked.append(rng.choice(candidates))
    return picked


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


def measure(kb_id: int, qs: list[str], efs: list[int]) -> None:
    from db.repositories import chunks as chunk_repo
    from infra.database import session_scope
    from infra.settings import get_settings
    from rag import embedding, retrieval

    settings = get_settings()
    embedding.embed(["warm up"])
    vectors, embed_ms = [], []
    for q in qs:
        started = time.perf_counter()
        vectors.append(retrieval.embed_question(q))  # as search embeds it (the asked and the content-word form)
        embed_ms.append((time.perf_counter() - started) * 1000)
    print(
        f"  question embedding: p50 {percentile(embed_ms, 50):.1f} ms, p95 {percentile(embed_ms, 95):.1f} ms"
    )

    exact: list[set[int]] = []
    started = time.perf_counter()
    for vector in vectors:
        with session_scope() as session:
            hits = chunk_repo.vector_search(
                session=session, kb_id=kb_id, embedding=vector, k=10, ef_search=0, exact=True
            )
        exact.append({h.chunk_id for h in hits})
    print(
        f"  exact search (sequential scan): {(time.perf_counter() - started) / len(vectors) * 1000:.0f} ms a question"
    )

    print(
        f"\n  {'ef_search':>9}  {'vector p50':>10}  {'hybrid p50':>10}  {'p95':>7}"
        f"  {'embed+hybrid p50':>16}  {'p95':>7}  {'recall@10':>9}"
    )
    # One untimed pass first, so every ef_search row sees the same warm caches (a running server's steady state):
    # otherwise the first row pays for reading the index and heap pages of every question from disk.
    for q in qs:
        with session_scope() as session:
            retrieval.search(session=session, kb_id=kb_id, question=q, k=settings.top_k)
    for ef in efs:
        settings.hnsw_ef_search = ef
        search_ms, total_ms, vector_ms, recall = [], [], [], []
        for q, vector, truth in zip(qs, vectors, exact, strict=True):
            started = time.perf_counter()
            with session_scope() as session:
                retrieval.search(session=session, kb_id=kb_id, question=q, k=settings.top_k)
            total_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            with session_scope() as session:  # the search without the question's embedding
                scope = chunk_repo.set_search_options(session, ef, kb_id=kb_id)
                text_query = retrieval.full_text_query(session=session, kb_id=kb_id, question=q)
                text_hits = chunk_repo.text_candidates(
                    session=session, kb_id=kb_id, match=text_query.match, weighted=text_query.weighted,
                    candidates=max(settings.retrieval_candidates, settings.top_k * 3),
                    rank_limit=settings.fulltext_rank_limit,
                ) if text_query else []
                chunk_repo.hybrid_candidates(
                    session=session,
                    kb_id=kb_id,
                    embedding=vector,
                    text_hits=text_hits,
                    weighted=text_query.weighted if text_query else (),
                    candidates=max(settings.retrieval_candidates, settings.top_k * 3),
                    page_evidence=chunk_repo.PageEvidence(
                        keep=settings.top_k * 3, text_weight=settings.fulltext_weight, text_total=text_query.total,
                        weight=settings.page_evidence_weight,
                    ) if text_query is not None and settings.page_evidence_weight > 0 else None,
                    approximate=scope.approximate,
                )
            search_ms.append((time.perf_counter() - started) * 1000)
            started = time.perf_counter()
            with session_scope() as session:
                hnsw = chunk_repo.vector_search(
                    session=session, kb_id=kb_id, embedding=vector, k=10, ef_search=ef
                )
            vector_ms.append((time.perf_counter() - started) * 1000)
            recall.append(len({h.chunk_id for h in hnsw} & truth) / max(1, len(truth)))
        print(
            f"  {ef:>9}  {percentile(vector_ms, 50):>8.1f}ms  {percentile(search_ms, 50):>8.1f}ms"
            f"  {percentile(search_ms, 95):>5.1f}ms"
            f"  {percentile(total_ms, 50):>14.1f}ms  {percentile(total_ms, 95):>5.1f}ms  {statistics.mean(recall):>9.3f}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=100_000)
    parser.add_argument("--base", type=int, default=3000, help="real (embedded) corpus chunks among them")
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--ef", default="40,100,200,300,400")
    parser.add_argument("--data-dir", type=Path, default=ROOT / "bench" / ".data")
    parser.add_argument("--rebuild", action="store_true")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()

    services = start_services(args.data_dir)
    try:
        name = KB_NAME.format(chunks=args.chunks)
        found = find_kb(name)
        if found and (args.rebuild or found[1] < args.chunks):
            from db.repositories import knowledge_bases as kb_repo
            from infra.database import session_scope

            with session_scope() as session:
                kb_repo.delete_kb(session=session, kb_id=found[0])
            found = None
        if found is None:
            print(f"building {name}:")
            kb_id = build(name, args.chunks, args.base, args.seed)
            from sqlalchemy import text

            from infra.database import session_scope

            with session_scope() as session:
                # What autovacuum would do soon after a bulk load: merge the GIN pending list (which every
                # full-text query otherwise scans linearly) and refresh the planner's statistics.
                session.execute(text("SELECT gin_clean_pending_list('ix_chunks_tsv')"))
                session.execute(text("ANALYZE chunks"))
        else:
            kb_id = found[0]
        print(f"{name}: {find_kb(name)[1]} chunks; {args.queries} questions")  # type: ignore[index]
        print(f"CPU: {describe()}")
        measure(kb_id, questions(kb_id, args.queries, args.seed), [int(x) for x in args.ef.split(",")])
    finally:
        if services is not None:
            services.stop()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
