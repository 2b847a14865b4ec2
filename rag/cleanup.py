"""Cleanup: what kbchat keeps only for a while, removed once its time is up.

- answer streams and stop flags that lost their expiry (a crash between writing and setting it);
- task events, empty-retrieval records and queue-depth history older than ``events_retention_days``;
- per-question evaluation details older than ``eval_details_retention_days`` (the metrics stay), evaluation
  runs left "running" by a worker that died, and alerts older than ``alert_retention_days``;
- stale uploads: there is no upload staging area (an upload is one PostgreSQL transaction), so what an
  interrupted upload can leave is a stored file without a document, which is removed here; and the parts and
  staged chunks of a split ingest whose run was abandoned (a newer run took the document over).
"""

from __future__ import annotations

import logging
import time
from datetime import timedelta

from db.repositories import alerts as alert_repo
from db.repositories import consistency as consistency_repo
from db.repositories import evaluations as eval_repo
from db.repositories import ingest_parts as ingest_parts_repo
from infra.database import session_scope
from infra.settings import get_settings
from telemetry import answer_streams, events, queue_history, retrievals

log = logging.getLogger(__name__)


def cleanup(now: float | None = None) -> dict:
    """Remove what is past its retention; returns what was removed."""
    settings = get_settings()
    now = time.time() if now is None else now
    removed: dict[str, int] = {}

    removed["answer_streams"] = answer_streams.repair_expiry(now)

    # Capped streams also trimmed by age, each by the module that owns it.
    cutoff = now - settings.events_retention_days * 86400
    removed["events"] = events.trim(cutoff)
    removed["empty_retrievals"] = retrievals.trim(cutoff)
    removed["queue_history"] = queue_history.trim(cutoff)

    with session_scope() as session:
        removed["eval_details"] = eval_repo.drop_old_details(session=session, days=settings.eval_details_retention_days)
        removed["abandoned_eval_runs"] = eval_repo.fail_abandoned(session=session, older_than=timedelta(hours=6))
        removed["alerts"] = alert_repo.delete_older_than(session=session, days=settings.alert_retention_days)
        removed["stale_upload_files"] = consistency_repo.delete_orphan_blobs(session=session)
        removed["abandoned_split_ingest_rows"] = ingest_parts_repo.delete_stale(
            session=session, older_than_seconds=settings.stuck_after_seconds)
    if any(removed.values()):
        log.info("cleanup: %s", ", ".join(f"{k} {v}" for k, v in removed.items() if v))
    return {"removed": removed}
