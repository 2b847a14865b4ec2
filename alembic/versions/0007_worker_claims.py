"""Worker claims: which worker (its heartbeat identity) runs a document or a part of a split document, since when,
so the reconciler can restart the work of a worker whose heartbeat lapsed; attempts per part; the worker a
document lost (the pages say "worker lost — retrying").

Revision ID: 0007
Revises: 0010 (the head of main when this was merged: 0006 → 0009 → 0010)
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0007"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("worker", sa.String(255), nullable=True))
    op.add_column("documents", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("documents", sa.Column("lost_worker", sa.String(255), nullable=True))
    op.add_column("ingest_parts", sa.Column("worker", sa.String(255), nullable=True))
    op.add_column("ingest_parts", sa.Column("task_id", sa.String(64), nullable=True))
    op.add_column("ingest_parts", sa.Column("claimed_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("ingest_parts", sa.Column("attempts", sa.Integer, nullable=False, server_default=sa.text("0")))


def downgrade() -> None:
    for column in ("attempts", "claimed_at", "task_id", "worker"):
        op.drop_column("ingest_parts", column)
    for column in ("lost_worker", "claimed_at", "worker"):
        op.drop_column("documents", column)
