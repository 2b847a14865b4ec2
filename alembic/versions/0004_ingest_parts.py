"""Page-range parts of split PDF ingests and their staged chunks.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-24
"""

from __future__ import annotations

import sqlalchemy as sa
from pgvector.sqlalchemy import Vector

from alembic import op
from infra.settings import get_settings

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    dim = get_settings().embedding_dim
    op.create_table(
        "ingest_parts",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("document_id", sa.BigInteger, sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("run", sa.String(64), nullable=False),  # the ingest.document task id that split the document
        sa.Column("first_page", sa.Integer, nullable=False),
        sa.Column("last_page", sa.Integer, nullable=False),
        sa.Column("pages_done", sa.Integer, nullable=False, server_default="0"),
        sa.Column("chunk_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("done", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.UniqueConstraint("document_id", "run", "first_page", name="uq_ingest_parts_document_run_first"),
    )
    op.create_index("ix_ingest_parts_document_id", "ingest_parts", ["document_id"])

    # No vector or text index: rows live only until their run's last part moves them into chunks.
    op.create_table(
        "staged_chunks",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("document_id", sa.BigInteger, sa.ForeignKey("documents.id", ondelete="CASCADE"), nullable=False),
        sa.Column("run", sa.String(64), nullable=False),
        sa.Column("first_page", sa.Integer, nullable=False),
        sa.Column("ordinal", sa.Integer, nullable=False),
        sa.Column("page", sa.Integer),
        sa.Column("locator", sa.String(200)),
        sa.Column("heading", sa.Text),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("embedding", Vector(dim), nullable=False),
    )
    op.create_index(
        "ix_staged_chunks_document_run_first", "staged_chunks", ["document_id", "run", "first_page", "ordinal"]
    )


def downgrade() -> None:
    op.drop_table("staged_chunks")
    op.drop_table("ingest_parts")
