"""Retrieval context: each document's context header, each base's chunk recipe, per-document lexeme counts
(how many of a document's chunks hold each word) that the full-text ranking weighs question words by, and the page
hit rates of golden-question evaluation runs.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("context", sa.Text, nullable=True))
    # Bases built before this revision used recipe 1 (no context header): the consistency check re-indexes them.
    op.add_column(
        "knowledge_bases", sa.Column("chunk_recipe", sa.Integer, nullable=False, server_default=sa.text("1"))
    )
    for k in (1, 5, 10):  # golden-question runs: the evidence page among the top k
        op.add_column("eval_runs", sa.Column(f"page_hit_at_{k}", sa.Float, nullable=True))
    op.create_table(
        "document_lexemes",
        sa.Column("document_id", sa.BigInteger, sa.ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("lexeme", sa.Text, primary_key=True),
        sa.Column("kb_id", sa.BigInteger, sa.ForeignKey("knowledge_bases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("chunks", sa.Integer, nullable=False),
    )
    op.create_index("ix_document_lexemes_kb_lexeme", "document_lexemes", ["kb_id", "lexeme"])
    op.execute(
        "INSERT INTO document_lexemes (document_id, lexeme, kb_id, chunks) "
        "SELECT c.document_id, u.lexeme, min(c.kb_id), count(*) FROM chunks c, unnest(c.tsv) AS u "
        "GROUP BY c.document_id, u.lexeme"
    )


def downgrade() -> None:
    op.drop_table("document_lexemes")
    for k in (1, 5, 10):
        op.drop_column("eval_runs", f"page_hit_at_{k}")
    op.drop_column("knowledge_bases", "chunk_recipe")
    op.drop_column("documents", "context")
