"""Queries on chunks: bulk replace for ingestion; hybrid (vector + full-text) and exact search for retrieval."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pgvector.sqlalchemy import Vector
from sqlalchemy import bindparam, delete, func, select, text
from sqlalchemy.orm import Session

from db.models import Chunk, Document


@dataclass(frozen=True)
class ChunkRow:
    ordinal: int
    page: int | None
    locator: str | None
    heading: str | None
    text: str
    token_count: int
    embedding: Sequence[float]


@dataclass(frozen=True)
class Hit:
    chunk_id: int
    document_id: int
    document: str
    page: int | None
    locator: str | None
    score: float  # cosine similarity to the question: what the relevance threshold compares
    text: str
    ordinal: int = 0
    fused: float = 0.0  # reciprocal-rank fusion score: what the ranking uses
    vector_rank: int | None = None
    text_rank: int | None = None


def replace_for_document(
    *,
    session: Session,
    kb_id: int,
    document_id: int,
    rows: Sequence[ChunkRow],
    text_search_config: str,
    context: str | None = None,
    batch: int = 500,
) -> None:
    """Delete the document's chunks and insert ``rows`` in the caller's transaction (so a retry never duplicates).

    Each chunk is indexed for full-text search with the document's ``context`` header and its heading before its
    text, the same text its vector was made from."""
    session.execute(delete(Chunk).where(Chunk.document_id == document_id))
    for start in range(0, len(rows), batch):
        session.execute(
            _INSERT,
            [
                {**row_values(row), "kb_id": kb_id, "document_id": document_id, "cfg": text_search_config,
                 "context": context}
                for row in rows[start : start + batch]
            ],
        )
    _count_lexemes(session, kb_id, document_id)


def row_values(row: ChunkRow) -> dict:
    """A chunk row's bind values, for inserts into chunks or staging (``EMBEDDING`` binds the vector)."""
    return {
        "ordinal": row.ordinal,
        "page": row.page,
        "locator": row.locator,
        "heading": row.heading,
        "text": row.text,
        "token_count": row.token_count,
        "embedding": row.embedding,
    }


# What a chunk is indexed by: the document's context header, the chunk's heading path and its text (NULLs skipped).
_SEARCH_TEXT = "to_tsvector(CAST(:cfg AS regconfig), concat_ws(E'\\n', {context}, {heading}, {text}))"

# pgvector's type binds a list or numpy array as the ``:embedding`` of the plain-SQL statements below.
EMBEDDING = bindparam("embedding", type_=Vector())

# Plain SQL so the tsvector is computed from the same bound text.
_INSERT = text(
    "INSERT INTO chunks (kb_id, document_id, ordinal, page, locator, heading, text, token_count, tsv, embedding) "
    "VALUES (:kb_id, :document_id, :ordinal, :page, :locator, :heading, :text, :token_count, "
    + _SEARCH_TEXT.format(context="CAST(:context AS text)", heading="CAST(:heading AS text)", text="CAST(:text AS text)")
    + ", :embedding)"
).bindparams(EMBEDDING)

# Per document, how many chunks hold each lexeme (their sum over a base is the full-text ranking's document
# frequency); replaced with the chunks, in the same transaction.
_DELETE_LEXEMES = text("DELETE FROM document_lexemes WHERE document_id = :document_id")
_COUNT_LEXEMES = text(
    "INSERT INTO document_lexemes (document_id, lexeme, kb_id, chunks) "
    "SELECT :document_id, u.lexeme, :kb_id, count(*) FROM chunks c, unnest(c.tsv) AS u "
    "WHERE c.document_id = :document_id GROUP BY u.lexeme"
)


def _count_lexemes(session: Session, kb_id: int, document_id: int) -> None:
    params = {"kb_id": kb_id, "document_id": document_id}
    session.execute(_DELETE_LEXEMES, params)
    session.execute(_COUNT_LEXEMES, params)


def replace_from_staging(
    *, session: Session, kb_id: int, document_id: int, run: str, text_search_config: str
) -> int:
    """Replace the document's chunks with a split run's staged ones, ordinals renumbered 0..n-1 in page order,
    in the caller's transaction; returns how many were stored."""
    session.execute(delete(Chunk).where(Chunk.document_id == document_id))
    stored = session.execute(
        _INSERT_FROM_STAGING,
        {"kb_id": kb_id, "document_id": document_id, "run": run, "cfg": text_search_config},
    ).rowcount
    _count_lexemes(session, kb_id, document_id)
    return stored


_INSERT_FROM_STAGING = text(
    "INSERT INTO chunks (kb_id, document_id, ordinal, page, locator, heading, text, token_count, tsv, embedding) "
    "SELECT :kb_id, s.document_id, row_number() OVER (ORDER BY s.first_page, s.ordinal) - 1, s.page, s.locator, "
    "s.heading, s.text, s.token_count, "
    + _SEARCH_TEXT.format(context="d.context", heading="s.heading", text="s.text")
    + ", s.embedding FROM staged_chunks s JOIN documents d ON d.id = s.document_id "
    "WHERE s.document_id = :document_id AND s.run = :run"
)


def count_for_document(*, session: Session, document_id: int) -> int:
    return session.scalar(select(func.count()).select_from(Chunk).where(Chunk.document_id == document_id)) or 0


# The vector half's plan, decided per search from how many chunks it covers: an exact scan of those chunks (about
# 2 µs a chunk) up to ``EXACT_MAX_CHUNKS``, or also when they are too small a share of the chunks table for an
# HNSW scan to find enough of them (a filtered HNSW scan reads about ``candidates / share`` index entries and gives
# up at ``hnsw.max_scan_tuples``); the HNSW index otherwise (2-7 ms whatever the size). PostgreSQL's own choice
# was an exact scan for a base of 19,000 chunks beside others (36 ms instead of 2) and for any choice of documents;
# it prices a 384-dimension distance like an addition.
EXACT_MAX_CHUNKS = 2000
HNSW_MIN_SHARE = 0.01

_SEARCH_OPTIONS = """
SELECT set_config('hnsw.ef_search', :ef, true), set_config('hnsw.iterative_scan', 'relaxed_order', true),
       set_config('plan_cache_mode', 'force_custom_plan', true),
       set_config('enable_seqscan', CASE WHEN scope.approximate THEN 'off' ELSE 'on' END, true),
       scope.searched, scope.approximate
FROM (
    SELECT n.searched, n.searched >= :exact_max AND n.searched >= :min_share * greatest(n.table_rows, n.searched) AS approximate
    FROM (
        SELECT (SELECT coalesce(sum(d.chunk_count), 0) FROM documents d
                WHERE d.kb_id = :kb_id AND d.status = 'ready' {document_filter}) AS searched,
               (SELECT reltuples FROM pg_class WHERE oid = 'chunks'::regclass) AS table_rows  -- -1: not counted yet
    ) n
) scope
"""
_SCOPE_DOCUMENTS = "AND d.id = ANY(CAST(:document_ids AS bigint[]))"


@dataclass(frozen=True)
class Scope:
    """What one search covers: ``searched`` chunks (the base's, or the chosen documents'), and whether its vector
    half scans the HNSW index (``approximate``) or those chunks exactly."""

    searched: int
    approximate: bool


_OPTIONS = {  # by whether documents are chosen
    documents: text(_SEARCH_OPTIONS.format(document_filter=_SCOPE_DOCUMENTS if documents else ""))
    for documents in (False, True)
}


def set_search_options(
    session: Session, ef_search: int, *, kb_id: int = 0, document_ids: Sequence[int] | None = None
) -> Scope:
    """Search settings for this transaction, and the scope of a search of base ``kb_id`` (optionally of some
    documents): HNSW's ``ef_search``, iterative scans so a filter (the knowledge base, chosen documents) cannot
    starve the index of candidates (pgvector >= 0.8), a plan made for each question's own values (after a few
    runs of a prepared statement PostgreSQL may switch to a generic plan, and the full-text half's generic plan,
    blind to how rare the matched words are, took 200 ms instead of 5 at 100k chunks), and, when the vector half
    is to scan the HNSW index, no sequential scans for the rest of the transaction (so the planner cannot choose
    an exact scan of a large base instead: see ``EXACT_MAX_CHUNKS``)."""
    params = {"kb_id": kb_id, "ef": str(int(ef_search)), "exact_max": EXACT_MAX_CHUNKS, "min_share": HNSW_MIN_SHARE}
    if document_ids:
        params["document_ids"] = [int(d) for d in document_ids]
    row = session.execute(_OPTIONS[bool(document_ids)], params).one()
    return Scope(int(row.searched), bool(row.approximate))


@dataclass(frozen=True)
class Candidate:
    """A chunk found by either half of hybrid search, with what each half said of it; fusion ranks them."""

    hit: Hit
    vector_rank: int | None  # 1 = nearest; None: not among the vector half's candidates
    text_score: float  # the summed weights of the question words and phrases it holds (0: none)
    text_listed: bool = False  # among the full-text half's own candidates
    page_matched: frozenset[int] = frozenset()  # the weighted queries some chunk of its page matches (by index)


# The question's lexemes (the text search configuration's normalisation, stop words out), where they stand, and
# in how many chunks of the base each occurs; with the base's chunk count. Each lexeme's count is its own index
# lookup on (kb_id, lexeme): a join let the planner, with statistics that did not yet know a new base, read every
# lexeme of the base into a hash table (6,500 rows for 20 reports, 2 ms; far more for a large base).
_QUESTION_TERMS = text("""
SELECT q.lexeme, q.positions,
       (SELECT coalesce(sum(l.chunks), 0) FROM document_lexemes l WHERE l.kb_id = :kb_id AND l.lexeme = q.lexeme)
           AS chunks,
       (SELECT coalesce(sum(d.chunk_count), 0) FROM documents d WHERE d.kb_id = :kb_id AND d.status = 'ready') AS total
FROM unnest(to_tsvector(CAST(:cfg AS regconfig), :question)) AS q
""")


def question_terms(
    *, session: Session, kb_id: int, question: str, text_search_config: str
) -> tuple[list[tuple[str, tuple[int, ...], int]], int]:
    """((lexeme, positions, chunks holding it), …) of ``question`` in the base, and the base's chunk count."""
    rows = session.execute(_QUESTION_TERMS, {"kb_id": kb_id, "question": question, "cfg": text_search_config}).all()
    total = int(rows[0].total) if rows else 0
    return [(row.lexeme, tuple(row.positions or ()), int(row.chunks)) for row in rows], total


# The full-text half: the chunks that hold any of the question's rarer words (``:match``, at most ``:rank_limit``
# of them, which bounds the statement's time), the ``:prerank`` that ts_rank puts first (one cheap rank per match
# instead of a test per word), each scored by the weights of the words and phrases it holds (``:queries``/
# ``:weights``, BM25-style inverse document frequencies). It needs no question vector, so it runs while the
# question is embedded.
_TEXT_HITS = """
WITH weighted AS MATERIALIZED (
    SELECT CAST(q AS tsquery) AS query, w AS weight
    FROM unnest(CAST(:queries AS text[]), CAST(:weights AS float8[])) AS t(q, w)
)
SELECT m.id, sum(w.weight) AS text_score
FROM (
    SELECT found.id, found.tsv
    FROM (
        SELECT c.id, c.tsv
        FROM chunks c
        WHERE c.kb_id = :kb_id AND c.tsv @@ CAST(:match AS tsquery) {document_filter}
        LIMIT :rank_limit
    ) found
    ORDER BY ts_rank(found.tsv, CAST(:match AS tsquery)) DESC
    LIMIT :prerank
) m
JOIN weighted w ON m.tsv @@ w.query
GROUP BY m.id
ORDER BY text_score DESC, m.id
LIMIT :candidates
"""

# The vector half (HNSW, cosine) merged with the full-text half's list (``:text_ids``/``:text_scores``) in one
# statement. Iterative scans may return neighbours slightly out of order, so ranks are recomputed from the
# distances. Every candidate gets both scores, whichever half found it: its cosine similarity (also the relevance
# threshold's) and its full-text score, so fusion compares like with like; fusing is the caller's. With
# ``:evidence``, a candidate also carries its page's evidence: the indexes (0-based) of the weighted queries that
# some chunk of its page matches. Only candidates that the evidence could lift into the first ``:keep`` get it:
# the fused score (``rag.retrieval.fuse``'s: cosine + ``:text_weight`` × the share of the question's word weight)
# plus the most the evidence can add (``:evidence_weight``) must reach the ``:keep``-th best fused score; the
# others stay below it whatever their pages hold. A page's chunks have consecutive ordinals (a chunk never
# crosses a page), so only the chunks within ``:radius`` ordinals of a candidate are read, through the
# (document_id, ordinal) index: the time stays bounded however long the document or crowded the page.
_CANDIDATES = """
WITH vector_hits AS (
    SELECT id, row_number() OVER (ORDER BY distance, id) AS rank
    FROM ({nearest}) nearest
),
weighted AS MATERIALIZED (
    SELECT CAST(q AS tsquery) AS query, w AS weight, i - 1 AS i
    FROM unnest(CAST(:queries AS text[]), CAST(:weights AS float8[])) WITH ORDINALITY AS t(q, w, i)
),
text_hits AS (
    SELECT id, text_score FROM unnest(CAST(:text_ids AS bigint[]), CAST(:text_scores AS float8[])) AS t(id, text_score)
),
found AS MATERIALIZED (
    SELECT coalesce(v.id, t.id) AS id, c.document_id, d.filename, c.page, c.locator, c.ordinal, c.text,
           1 - (c.embedding <=> :embedding) AS score, v.rank AS vector_rank, t.id IS NOT NULL AS text_listed,
           coalesce(t.text_score, (SELECT sum(w.weight) FROM weighted w WHERE c.tsv @@ w.query), 0) AS text_score
    FROM vector_hits v
    FULL OUTER JOIN text_hits t ON t.id = v.id
    JOIN chunks c ON c.id = coalesce(v.id, t.id)
    JOIN documents d ON d.id = c.document_id
),
fused AS (
    SELECT id, document_id, page, ordinal,
           score + :text_weight * least(1.0, coalesce(text_score / nullif(:text_total, 0), 0)) AS fused
    FROM found
),
cutoff AS (
    SELECT coalesce((SELECT fused FROM fused ORDER BY fused DESC OFFSET :keep - 1 LIMIT 1), '-infinity') AS fused
),
page_chunks AS (
    SELECT DISTINCT c.id
    FROM (
        SELECT DISTINCT f.document_id, f.page, f.ordinal
        FROM fused f, cutoff
        WHERE :evidence AND f.page IS NOT NULL AND f.fused + :evidence_weight >= cutoff.fused - 0.0001
    ) x
    JOIN chunks c ON c.document_id = x.document_id AND c.ordinal BETWEEN x.ordinal - :radius AND x.ordinal + :radius
    WHERE c.page = x.page AND c.kb_id = :kb_id
),
page_evidence AS (
    SELECT c.document_id, c.page, array_agg(DISTINCT w.i) AS matched
    FROM page_chunks pc
    JOIN chunks c ON c.id = pc.id
    JOIN weighted w ON c.tsv @@ w.query
    GROUP BY c.document_id, c.page
)
SELECT f.*, p.matched
FROM found f
LEFT JOIN page_evidence p ON p.document_id = f.document_id AND p.page = f.page
"""
# The vector half's nearest chunks. Exact: the distances of the chunks searched, sorted (the subquery's OFFSET 0
# keeps the HNSW index out). Approximate: the HNSW index, filtered during the scan; ``+ 0`` keeps the planner off
# the kb_id and document indexes, and with sequential scans off (``set_search_options``) the index is its one plan.
_EXACT = """
        SELECT id, distance FROM (
            SELECT c.id, c.embedding <=> :embedding AS distance
            FROM chunks c
            WHERE c.kb_id = :kb_id {document_filter}
            OFFSET 0
        ) scanned
        ORDER BY distance
        LIMIT :candidates"""
_APPROXIMATE = """
        SELECT c.id, c.embedding <=> :embedding AS distance
        FROM chunks c
        WHERE c.kb_id + 0 = :kb_id {document_filter}
        ORDER BY distance
        LIMIT :candidates"""
_DOCUMENT_FILTER = "AND c.document_id = ANY(CAST(:document_ids AS bigint[]))"
_DOCUMENT_FILTER_UNINDEXED = "AND c.document_id + 0 = ANY(CAST(:document_ids AS bigint[]))"
_TEXT_HITS_ALL = text(_TEXT_HITS.format(document_filter=""))
_TEXT_HITS_DOCUMENTS = text(_TEXT_HITS.format(document_filter=_DOCUMENT_FILTER))
_CANDIDATES_STATEMENTS = {
    (approximate, documents): text(_CANDIDATES.format(nearest=(_APPROXIMATE if approximate else _EXACT).format(
        document_filter=(_DOCUMENT_FILTER_UNINDEXED if approximate else _DOCUMENT_FILTER) if documents else ""
    ))).bindparams(EMBEDDING)
    for approximate in (False, True)
    for documents in (False, True)
}


@dataclass(frozen=True)
class PageEvidence:
    """Page evidence for the candidates that it could lift into the ``keep`` first: fused as ``rag.retrieval.fuse``
    does (cosine + ``text_weight`` × the full-text score ÷ ``text_total``, at most 1), plus at most ``weight``."""

    keep: int
    text_weight: float
    text_total: float
    weight: float


def text_candidates(
    *,
    session: Session,
    kb_id: int,
    match: str,
    weighted: Sequence[tuple[str, float]],
    candidates: int,
    rank_limit: int,
    document_ids: Sequence[int] | None = None,
) -> list[tuple[int, float]]:
    """The full-text half: the ``candidates`` best matches of ``match`` in one knowledge base (optionally of some
    documents), best first, as (chunk id, full-text score)."""
    if not match:
        return []
    params = {
        "kb_id": kb_id,
        "match": match,
        "queries": [q for q, _ in weighted],
        "weights": [float(w) for _, w in weighted],
        "candidates": candidates,
        "prerank": 4 * candidates,
        "rank_limit": max(rank_limit, candidates),
    }
    statement = _TEXT_HITS_ALL
    if document_ids:
        statement = _TEXT_HITS_DOCUMENTS
        params["document_ids"] = [int(d) for d in document_ids]
    return [(int(row.id), float(row.text_score)) for row in session.execute(statement, params).all()]


def hybrid_candidates(
    *,
    session: Session,
    kb_id: int,
    embedding: Sequence[float],
    text_hits: Sequence[tuple[int, float]],
    weighted: Sequence[tuple[str, float]],
    candidates: int,
    document_ids: Sequence[int] | None = None,
    page_evidence: PageEvidence | None = None,
    radius: int = 10,
    approximate: bool = False,
) -> list[Candidate]:
    """The ``candidates`` nearest chunks of one knowledge base (optionally of some documents) and the full-text
    half's ``text_hits`` (``text_candidates``), each once, with both halves' scores; with ``page_evidence``, the
    candidates it could lift into its ``keep`` first with which of ``weighted`` (by index) some chunk of their
    page, within ``radius`` ordinals, matches. ``approximate``: the vector half scans the HNSW index (the
    transaction's options and scope, ``set_search_options``), else the searched chunks exactly."""
    evidence = page_evidence or PageEvidence(keep=1, text_weight=0.0, text_total=0.0, weight=0.0)
    params = {
        "kb_id": kb_id,
        "embedding": embedding,
        "queries": [q for q, _ in weighted],
        "weights": [float(w) for _, w in weighted],
        "text_ids": [int(i) for i, _ in text_hits],
        "text_scores": [float(score) for _, score in text_hits],
        "candidates": candidates,
        "evidence": bool(page_evidence and weighted),
        "keep": max(1, int(evidence.keep)),
        "text_weight": float(evidence.text_weight),
        "text_total": float(evidence.text_total),
        "evidence_weight": float(evidence.weight),
        "radius": int(radius),
    }
    statement = _CANDIDATES_STATEMENTS[(approximate, bool(document_ids))]
    if document_ids:
        params["document_ids"] = [int(d) for d in document_ids]
    rows = session.execute(statement, params).all()
    return [
        Candidate(
            hit=Hit(
                chunk_id=row.id,
                document_id=row.document_id,
                document=row.filename,
                page=row.page,
                locator=row.locator,
                score=round(float(row.score), 4),
                text=row.text,
                ordinal=row.ordinal,
                vector_rank=row.vector_rank,
            ),
            vector_rank=row.vector_rank,
            text_score=float(row.text_score or 0.0),
            text_listed=bool(row.text_listed),
            page_matched=frozenset(int(i) for i in row.matched) if row.matched else frozenset(),
        )
        for row in rows
    ]


def vector_search(
    *, session: Session, kb_id: int, embedding: Sequence[float], k: int, ef_search: int, exact: bool = False
) -> list[Hit]:
    """Top ``k`` chunks of one knowledge base by cosine similarity, planned like the vector half of
    ``hybrid_candidates`` (HNSW for a large base), or an exact scan (recall baseline)."""
    in_base = Chunk.kb_id == kb_id
    if exact:
        session.execute(text("SELECT set_config('enable_indexscan', 'off', true)"))
    elif set_search_options(session, ef_search, kb_id=kb_id).approximate:
        in_base = (Chunk.kb_id + 0) == kb_id
    distance = Chunk.embedding.cosine_distance(list(embedding)).label("distance")
    rows = session.execute(
        select(
            Chunk.id,
            Chunk.document_id,
            Document.filename,
            Chunk.page,
            Chunk.locator,
            Chunk.ordinal,
            Chunk.text,
            distance,
        )
        .join(Document, Document.id == Chunk.document_id)
        .where(in_base)
        .order_by(distance)
        .limit(k)
    ).all()
    return [
        Hit(
            chunk_id=row.id,
            document_id=row.document_id,
            document=row.filename,
            page=row.page,
            locator=row.locator,
            score=round(1.0 - float(row.distance), 4),
            text=row.text,
            ordinal=row.ordinal,
        )
        for row in rows
    ]


def neighbours(*, session: Session, document_id: int, ordinal: int, radius: int) -> list[Chunk]:
    """The chunks within ``radius`` positions of one chunk in its document, in reading order (context)."""
    return list(
        session.scalars(
            select(Chunk)
            .where(Chunk.document_id == document_id, Chunk.ordinal.between(ordinal - radius, ordinal + radius))
            .order_by(Chunk.ordinal)
        )
    )


def list_for_document(*, session: Session, document_id: int, limit: int = 50, offset: int = 0) -> list[Chunk]:
    """A page of the document's chunks in reading order (the chunk preview)."""
    return list(
        session.scalars(
            select(Chunk).where(Chunk.document_id == document_id).order_by(Chunk.ordinal).limit(limit).offset(offset)
        )
    )


def get(*, session: Session, chunk_id: int) -> Chunk | None:
    return session.get(Chunk, chunk_id)
