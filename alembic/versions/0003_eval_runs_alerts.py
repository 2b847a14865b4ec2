"""Retrieval evaluation runs and alerts: the nightly quality check's results and what was sent to the webhook.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("kb_id", sa.BigInteger, sa.ForeignKey("knowledge_bases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("trigger", sa.String(20), nullable=False),  # scheduled | cli | page
        sa.Column("status", sa.String(20), nullable=False, server_default="running"),  # running | succeeded | failed
        sa.Column("seed", sa.BigInteger, nullable=False),
        sa.Column("sample_size", sa.Integer, nullable=False),
        sa.Column("questions", sa.Integer, nullable=False, server_default="0"),
        sa.Column("question_mode", sa.String(20)),  # llm | extractive | mixed
        sa.Column("hit_at_1", sa.Float),
        sa.Column("hit_at_5", sa.Float),
        sa.Column("hit_at_10", sa.Float),
        sa.Column("mrr", sa.Float),
        # One entry per question (chunk, question, rank, top hits); dropped after the retention period, metrics kept.
        sa.Column("details", JSONB),
        sa.Column("error", sa.Text),
        sa.Column("started_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True)),
    )
    op.create_index("ix_eval_runs_kb_started", "eval_runs", ["kb_id", "started_at"])

    op.create_table(
        "alerts",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("kind", sa.String(40), nullable=False),  # empty_retrievals | retrieval_drop
        sa.Column("kb_id", sa.BigInteger, sa.ForeignKey("knowledge_bases.id", ondelete="SET NULL")),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("payload", JSONB, nullable=False),
        sa.Column("delivery", sa.String(20), nullable=False),  # sent | failed | not_configured
        sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
        sa.Column("delivery_error", sa.Text),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
    )
    op.create_index("ix_alerts_created_at", "alerts", ["created_at"])


def downgrade() -> None:
    op.drop_table("alerts")
    op.drop_table("eval_runs")
