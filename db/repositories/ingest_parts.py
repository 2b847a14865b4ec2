"""Queries on split ingests: page-range parts per run and the chunks they stage until the run's last part stores them."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import delete, func, select, text, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.models import FINAL_STATES, Document, IngestPart, StagedChunk
from db.repositories.chunks import EMBEDDING, ChunkRow, row_values


def create_parts(*, session: Session, document_id: int, run: str, ranges: Sequence[tuple[int, int]]) -> None:
    """Record the run's page ranges; a range already recorded (the splitting task redelivered) is kept as it is."""
    session.execute(
        insert(IngestPart)
        .values([{"document_id": document_id, "run": run, "first_page": first, "last_page": last,
                  "pages_done": 0, "chunk_count": 0, "done": False} for first, last in ranges])
        .on_conflict_do_nothing(constraint="uq_ingest_parts_document_run_first")
    )


def get_part(*, session: Session, document_id: int, run: str, first_page: int) -> IngestPart | None:
    return session.scalar(
        select(IngestPart).where(
            IngestPart.document_id == document_id, IngestPart.run == run, IngestPart.first_page == first_page
        )
    )


def claim_part(
    *, session: Session, document_id: int, run: str, first_page: int, task_id: str | None, worker: str | None
) -> int:
    """A delivery starts the part: it records its task id and worker; returns the part's attempts before this one."""
    part = get_part(session=session, document_id=document_id, run=run, first_page=first_page)
    assert part is not None
    before = part.attempts or 0
    part.attempts = before + 1
    part.task_id = task_id or part.task_id
    part.worker = worker
    part.claimed_at = func.now() if worker else None
    session.flush()
    return before


def requeue_part(*, session: Session, document_id: int, run: str, first_page: int, task_id: str) -> None:
    """The part goes back to the queue as delivery ``task_id`` (an older delivery of it stands down)."""
    session.execute(
        update(IngestPart)
        .where(IngestPart.document_id == document_id, IngestPart.run == run, IngestPart.first_page == first_page)
        .values(task_id=task_id, worker=None, claimed_at=None, pages_done=0)
    )


def unclaimed_parts(*, session: Session, document_id: int, run: str) -> list[IngestPart]:
    """The run's parts not done that no delivery has started (still queued, or held by a worker that never began)."""
    return list(session.scalars(
        select(IngestPart)
        .where(IngestPart.document_id == document_id, IngestPart.run == run, IngestPart.done.is_(False),
               IngestPart.worker.is_(None))
        .order_by(IngestPart.first_page)
    ))


def list_claimed(*, session: Session) -> list[IngestPart]:
    """Parts not done, claimed by a worker, of runs that still own an unfinished document."""
    return list(session.scalars(
        select(IngestPart)
        .join(Document, Document.id == IngestPart.document_id)
        .where(IngestPart.done.is_(False), IngestPart.worker.is_not(None), IngestPart.run == Document.task_id,
               Document.status.not_in(FINAL_STATES))
        .order_by(IngestPart.document_id, IngestPart.first_page)
    ))


def workers_of(*, session: Session, document_ids: list[int]) -> dict[int, set[str]]:
    """The workers running unfinished parts of each document's current run."""
    if not document_ids:
        return {}
    rows = session.execute(
        select(IngestPart.document_id, IngestPart.worker)
        .join(Document, Document.id == IngestPart.document_id)
        .where(IngestPart.document_id.in_(document_ids), IngestPart.done.is_(False), IngestPart.worker.is_not(None),
               IngestPart.run == Document.task_id)
    ).all()
    found: dict[int, set[str]] = {}
    for document_id, worker in rows:
        found.setdefault(int(document_id), set()).add(worker)
    return found


def pending_parts(*, session: Session, document_id: int, run: str) -> list[tuple[int, int]]:
    """The run's page ranges not yet done, in page order."""
    rows = session.execute(
        select(IngestPart.first_page, IngestPart.last_page)
        .where(IngestPart.document_id == document_id, IngestPart.run == run, IngestPart.done.is_(False))
        .order_by(IngestPart.first_page)
    ).all()
    return [(row.first_page, row.last_page) for row in rows]


def count_parts(*, session: Session, document_id: int, run: str) -> tuple[int, int]:
    """(parts, parts done) of one run."""
    row = session.execute(
        select(func.count(), func.count().filter(IngestPart.done.is_(True))).where(
            IngestPart.document_id == document_id, IngestPart.run == run
        )
    ).one()
    return int(row[0]), int(row[1])


def set_pages_done(*, session: Session, document_id: int, run: str, first_page: int, pages_done: int) -> int:
    """Record how many of a part's pages are embedded; returns the pages done across the whole run."""
    session.execute(
        update(IngestPart)
        .where(IngestPart.document_id == document_id, IngestPart.run == run, IngestPart.first_page == first_page)
        .values(pages_done=pages_done)
    )
    return pages_done_total(session=session, document_id=document_id, run=run)


def pages_done_total(*, session: Session, document_id: int, run: str) -> int:
    """Pages embedded across every part of one run: the document's progress."""
    return int(
        session.scalar(
            select(func.coalesce(func.sum(IngestPart.pages_done), 0)).where(
                IngestPart.document_id == document_id, IngestPart.run == run
            )
        )
        or 0
    )


def replace_staged(
    *, session: Session, document_id: int, run: str, first_page: int, rows: Sequence[ChunkRow], batch: int = 500
) -> None:
    """Replace one part's staged chunks and mark the part done, in the caller's transaction (redelivery-safe)."""
    session.execute(
        delete(StagedChunk).where(
            StagedChunk.document_id == document_id, StagedChunk.run == run, StagedChunk.first_page == first_page
        )
    )
    for start in range(0, len(rows), batch):
        session.execute(
            _INSERT_STAGED,
            [
                {**row_values(row), "document_id": document_id, "run": run, "first_page": first_page}
                for row in rows[start : start + batch]
            ],
        )
    part = get_part(session=session, document_id=document_id, run=run, first_page=first_page)
    assert part is not None
    part.done = True
    part.chunk_count = len(rows)
    part.pages_done = part.last_page - part.first_page + 1
    session.flush()


_INSERT_STAGED = text(
    "INSERT INTO staged_chunks (document_id, run, first_page, ordinal, page, locator, heading, text, token_count, "
    "embedding) VALUES (:document_id, :run, :first_page, :ordinal, :page, :locator, :heading, :text, :token_count, "
    ":embedding)"
).bindparams(EMBEDDING)


def delete_for_document(*, session: Session, document_id: int, keep_run: str | None = None) -> None:
    """Forget the document's parts and staged chunks (all runs, or all but ``keep_run``)."""
    for model in (StagedChunk, IngestPart):
        statement = delete(model).where(model.document_id == document_id)
        if keep_run is not None:
            statement = statement.where(model.run != keep_run)
        session.execute(statement)


def count_staged(*, session: Session, document_id: int) -> int:
    return session.scalar(select(func.count()).select_from(StagedChunk).where(StagedChunk.document_id == document_id)) or 0


def count_for_document(*, session: Session, document_id: int) -> int:
    return session.scalar(select(func.count()).select_from(IngestPart).where(IngestPart.document_id == document_id)) or 0



def delete_stale(*, session: Session, older_than_seconds: int) -> int:
    """Parts and staged chunks of runs that no longer own their document (a newer run or an unsplit ingest took
    over, or the document is final) and untouched for ``older_than_seconds``: what an abandoned run leaves."""
    parts = session.execute(text(
        "DELETE FROM ingest_parts p USING documents d WHERE d.id = p.document_id "
        "AND (p.run IS DISTINCT FROM d.task_id OR d.status IN ('ready', 'failed')) "
        "AND p.updated_at < now() - make_interval(secs => :s)"), {"s": older_than_seconds}).rowcount
    staged = session.execute(text(
        "DELETE FROM staged_chunks c USING documents d WHERE d.id = c.document_id "
        "AND (c.run IS DISTINCT FROM d.task_id OR d.status IN ('ready', 'failed')) "
        "AND NOT EXISTS (SELECT 1 FROM ingest_parts p WHERE p.document_id = c.document_id AND p.run = c.run)"
    )).rowcount
    return (parts or 0) + (staged or 0)
