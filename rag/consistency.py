"""Consistency check: documents, their chunks and their stored files agree, per knowledge base.

Found, and fixed with ``fix=True``:
- a ready document whose chunk count, embeddings (missing, wrong dimension) or base do not match → re-indexed;
- a failed document that still has searchable chunks → chunks removed;
- chunks or blobs whose document is gone → removed;
- a document stuck in a non-final state past the timeout → re-enqueued (``maintenance.reconcile``'s rule);
- a base embedded with another model than the configured one → the base is re-indexed with the configured model;
- a base whose chunks were built by an older chunk recipe (``rag.context.CHUNK_RECIPE``) → re-indexed, once.
Reported only: a document whose original file is gone (it cannot be re-indexed: delete it and upload it again).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from datetime import timedelta

from db.models import KnowledgeBase
from db.repositories import consistency as repo
from db.repositories import documents as document_repo
from db.repositories import knowledge_bases as kb_repo
from infra.database import session_scope
from infra.settings import get_settings
from rag import embedding
from rag.context import CHUNK_RECIPE
from rag.library import reindex as requeue_documents
from rag.maintenance import moved_recently, reconcile_stuck_documents

log = logging.getLogger(__name__)


def check(
    *,
    kb_id: int | None = None,
    fix: bool = False,
    enqueue_ingest: Callable[[int], object],
    task_record: Callable[[str], dict | None],
    waiting_runs: Callable[[], set[str]],
) -> dict:
    """What is inconsistent (scoped to ``kb_id`` when given), and with ``fix`` what was done about it.

    The caller hands in how to queue a document's ingest, read a task's record and list the ingest runs still
    waiting in the queue (as ``rag.maintenance.reconcile_stuck_documents`` takes them)."""
    settings = get_settings()
    problems: list[dict] = []
    reindex: dict[int, list[int]] = {}  # kb id → document ids to re-index once the fix transaction commits
    model = embedding.model_label()

    def problem(kind: str, detail: str, action: str, **where) -> None:
        problems.append({"kind": kind, "detail": detail, "action": action if fix else f"would be {action}", **where})

    with session_scope() as session:
        bases: list[KnowledgeBase] = (
            [b for b in [kb_repo.get(session=session, kb_id=kb_id)] if b is not None]
            if kb_id is not None else kb_repo.list_knowledge_bases(session=session)
        )
        names = {b.id: b.name for b in bases}
        for base in bases:
            if base.embedding_model != model:
                problem("model_mismatch", f"embedded with {base.embedding_model}; the configured model is {model}",
                        "re-indexed", kb_id=base.id, kb=base.name)
                if fix:
                    base.embedding_model = model
                    reindex[base.id] = document_repo.list_ids(session=session, kb_id=base.id, statuses=("ready",))
            elif base.chunk_recipe != CHUNK_RECIPE:
                problem("recipe_outdated", f"chunks built by recipe {base.chunk_recipe}; the current one is "
                        f"{CHUNK_RECIPE} (document context in every chunk)", "re-indexed", kb_id=base.id, kb=base.name)
            if base.chunk_recipe != CHUNK_RECIPE and fix:
                base.chunk_recipe = CHUNK_RECIPE
                reindex.setdefault(base.id, []).extend(
                    document_repo.list_ids(session=session, kb_id=base.id, statuses=("ready",))
                )

        for row in repo.ready_mismatches(session=session, kb_id=kb_id):
            reasons = []
            if row["actual"] != row["chunk_count"] or row["actual"] == 0:
                reasons.append(f"{row['actual']} chunks stored, {row['chunk_count']} expected")
            if row["missing_embeddings"]:
                reasons.append(f"{row['missing_embeddings']} chunks without an embedding")
            if row["wrong_dimension"]:
                reasons.append(f"{row['wrong_dimension']} embeddings of the wrong dimension")
            if row["wrong_base"]:
                reasons.append(f"{row['wrong_base']} chunks filed under another knowledge base")
            problem("chunks_mismatch", "; ".join(reasons), "re-indexed", kb_id=row["kb_id"],
                    kb=names.get(row["kb_id"]), document_id=row["id"], document=row["filename"])
            reindex.setdefault(row["kb_id"], []).append(row["id"])

        failed = repo.failed_with_chunks(session=session, kb_id=kb_id)
        for row in failed:
            problem("failed_with_chunks", f"failed, yet {row['actual']} chunks are still searchable",
                    "chunks removed", kb_id=row["kb_id"], kb=names.get(row["kb_id"]), document_id=row["id"],
                    document=row["filename"])
        for orphan_kb, count in repo.orphan_chunks(session=session, kb_id=kb_id).items():
            problem("orphan_chunks", f"{count} chunks belong to no document", "removed", kb_id=orphan_kb,
                    kb=names.get(orphan_kb))
        orphan_blobs = repo.orphan_blobs(session=session) if kb_id is None else 0
        if orphan_blobs:
            problem("orphan_blobs", f"{orphan_blobs} stored files belong to no document", "removed")
        for row in repo.missing_blobs(session=session, kb_id=kb_id):
            problems.append({"kind": "missing_blob", "kb_id": row["kb_id"], "kb": names.get(row["kb_id"]),
                             "document_id": row["id"], "document": row["filename"],
                             "detail": "the original file is gone, so it cannot be re-indexed",
                             "action": "none: delete the document and upload the file again"})
        stuck = [
            d for d in document_repo.list_stuck(session=session, older_than=timedelta(seconds=settings.stuck_after_seconds))
            if kb_id is None or d.kb_id == kb_id
        ]
        stuck = [d for d in stuck if not moved_recently(d.task_id, task_record)]
        stuck_ids = [d.id for d in stuck]
        if not fix:
            for d in stuck:
                problem("stuck", f"{d.status} since {d.updated_at:%Y-%m-%d %H:%M} UTC", "re-enqueued",
                        kb_id=d.kb_id, kb=names.get(d.kb_id), document_id=d.id, document=d.filename)

        if fix:
            repo.delete_chunks_of(session=session, document_ids=[row["id"] for row in failed])
            repo.delete_orphan_chunks(session=session, kb_id=kb_id)
            if kb_id is None:
                repo.delete_orphan_blobs(session=session)
            for base_id, ids in reindex.items():
                reindex[base_id] = requeue_documents(session=session, kb_id=base_id, document_ids=sorted(set(ids)))
            for base_id in {row["kb_id"] for row in failed} | set(reindex):
                kb_repo.bump_version(session=session, kb_id=base_id)

    if fix:
        for ids in reindex.values():
            for document_id in ids:
                enqueue_ingest(document_id)
        if stuck_ids:
            outcome = reconcile_stuck_documents(enqueue=enqueue_ingest, task_record=task_record,
                                                waiting_runs=waiting_runs, kb_id=kb_id)
            with session_scope() as session:
                documents = {d.id: d for d in document_repo.list_by_ids(session=session, document_ids=stuck_ids)}
            for document_id in outcome["requeued"] + outcome["failed"]:
                d = documents[document_id]
                problem("stuck", "not moving past the timeout",
                        "re-enqueued" if document_id in outcome["requeued"] else "failed: out of attempts",
                        kb_id=d.kb_id, kb=names.get(d.kb_id), document_id=d.id, document=d.filename)
    if problems:
        log.warning("consistency check%s: %d problem(s): %s", " (fixed)" if fix else "", len(problems),
                    ", ".join(sorted({p["kind"] for p in problems})))
    return {
        "kb_id": kb_id,
        "knowledge_bases": len(bases),
        "fixed": fix,
        "problems": problems,
        "counts": dict(Counter(p["kind"] for p in problems)),
    }
