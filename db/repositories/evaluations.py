"""Retrieval evaluation runs: the sample they draw from, and their results."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import func, null, select, text, update
from sqlalchemy.orm import Session

from db.models import READY, Chunk, Document, EvalRun

GOLDEN = "golden"  # the question_mode of runs of a user's question set

# A chunk shorter than this (in model tokens) is a heading or a page footer: no question to ask of it.
MIN_TOKENS = 20


def eligible_counts(*, session: Session, kb_id: int) -> list[tuple[int, int]]:
    """(document id, number of chunks worth a question) for the ready documents of a base, by document id."""
    rows = session.execute(
        select(Chunk.document_id, func.count())
        .join(Document, Document.id == Chunk.document_id)
        .where(Chunk.kb_id == kb_id, Document.status == READY, Chunk.token_count >= MIN_TOKENS)
        .group_by(Chunk.document_id)
        .order_by(Chunk.document_id)
    )
    return [(int(d), int(n)) for d, n in rows]


def document_names(*, session: Session, document_ids: list[int]) -> dict[int, str]:
    rows = session.execute(select(Document.id, Document.filename).where(Document.id.in_(document_ids)))
    return {int(i): name for i, name in rows}


def eligible_chunks(*, session: Session, document_id: int) -> list[Chunk]:
    return list(
        session.scalars(
            select(Chunk)
            .where(Chunk.document_id == document_id, Chunk.token_count >= MIN_TOKENS)
            .order_by(Chunk.ordinal)
        )
    )


def start(
    *, session: Session, kb_id: int, trigger: str, seed: int, sample_size: int, question_mode: str | None = None,
    details: list | None = None,
) -> int:
    """A running evaluation; a golden run is recorded with its questions as ``details`` until it finishes."""
    run = EvalRun(kb_id=kb_id, trigger=trigger, status="running", seed=seed, sample_size=sample_size,
                  question_mode=question_mode, details=details)
    session.add(run)
    session.flush()
    return run.id


def finish(*, session: Session, run_id: int, metrics: dict, details: list, question_mode: str) -> None:
    session.execute(
        update(EvalRun)
        .where(EvalRun.id == run_id)
        .values(
            status="succeeded", questions=len(details), question_mode=question_mode, details=details,
            hit_at_1=metrics["hit_at_1"], hit_at_5=metrics["hit_at_5"], hit_at_10=metrics["hit_at_10"],
            mrr=metrics["mrr"], page_hit_at_1=metrics.get("page_hit_at_1"),
            page_hit_at_5=metrics.get("page_hit_at_5"), page_hit_at_10=metrics.get("page_hit_at_10"),
            finished_at=func.now(),
        )
    )


def fail(*, session: Session, run_id: int, error: str) -> None:
    session.execute(
        update(EvalRun).where(EvalRun.id == run_id).values(status="failed", error=error[:2000], finished_at=func.now())
    )


def get(*, session: Session, run_id: int) -> EvalRun | None:
    return session.get(EvalRun, run_id)


def previous_comparable(*, session: Session, run: EvalRun) -> EvalRun | None:
    """The latest earlier successful run of the same base with the same seed and sample size."""
    return session.scalars(
        select(EvalRun)
        .where(
            EvalRun.kb_id == run.kb_id, EvalRun.status == "succeeded", EvalRun.id < run.id,
            EvalRun.seed == run.seed, EvalRun.sample_size == run.sample_size,
        )
        .order_by(EvalRun.id.desc())
        .limit(1)
    ).first()


def history(*, session: Session, kb_id: int, limit: int = 90, golden: bool = False) -> list[EvalRun]:
    """Successful runs of a base, oldest first (the trend chart): sampled runs, or with ``golden`` the runs of
    users' question sets."""
    mode = EvalRun.question_mode == GOLDEN if golden else EvalRun.question_mode.is_distinct_from(GOLDEN)
    runs = session.scalars(
        select(EvalRun)
        .where(EvalRun.kb_id == kb_id, EvalRun.status == "succeeded", mode)
        .order_by(EvalRun.started_at.desc())
        .limit(limit)
    )
    return list(reversed(list(runs)))


def recent(*, session: Session, kb_id: int, limit: int = 10, golden: bool = False) -> list[EvalRun]:
    """The newest runs of a base, whatever their status (sampled ones, or with ``golden`` golden ones)."""
    mode = EvalRun.question_mode == GOLDEN if golden else EvalRun.question_mode.is_distinct_from(GOLDEN)
    return list(session.scalars(
        select(EvalRun).where(EvalRun.kb_id == kb_id, mode).order_by(EvalRun.started_at.desc(), EvalRun.id.desc()).limit(limit)
    ))


def drop_old_details(*, session: Session, days: int) -> int:
    """Forget per-question details of runs older than ``days``; their metrics stay for the trend."""
    cutoff = datetime.now(UTC) - timedelta(days=days)
    result = session.execute(
        update(EvalRun).where(EvalRun.started_at < cutoff, EvalRun.details.is_not(None)).values(details=null())
    )
    return result.rowcount or 0


def fail_abandoned(*, session: Session, older_than: timedelta) -> int:
    """Runs still "running" long after they started (their worker died) are marked failed."""
    cutoff = datetime.now(UTC) - older_than
    result = session.execute(
        update(EvalRun)
        .where(EvalRun.status == "running", EvalRun.started_at < cutoff)
        .values(status="failed", error="The evaluation stopped without finishing (its worker stopped).",
                finished_at=func.now())
    )
    return result.rowcount or 0


def latest_scores_by_kb_name(*, session: Session) -> dict[str, dict[str, float]]:
    """Each base's newest succeeded evaluation (by base name): its scores and how many seconds ago it ran."""
    rows = session.execute(text("""
        SELECT DISTINCT ON (r.kb_id) k.name, r.hit_at_1, r.hit_at_5, r.hit_at_10, r.mrr,
               extract(epoch FROM now() - r.started_at) AS age
        FROM eval_runs r JOIN knowledge_bases k ON k.id = r.kb_id
        WHERE r.status = 'succeeded' ORDER BY r.kb_id, r.started_at DESC"""))
    return {name: {"hit_at_1": h1, "hit_at_5": h5, "hit_at_10": h10, "mrr": mrr, "age_seconds": float(age)}
            for name, h1, h5, h10, mrr, age in rows}
