"""Answer feedback: thumbs up/down and a comment per user and answer, with the question, answer, mode, model and
the chunks retrieved.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "answer_feedback",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="SET NULL")),
        sa.Column("username", sa.String(64), nullable=False, server_default=""),
        sa.Column("kb_id", sa.BigInteger, sa.ForeignKey("knowledge_bases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("conversation_id", sa.BigInteger, sa.ForeignKey("conversations.id", ondelete="SET NULL")),
        sa.Column("task_id", sa.String(64), nullable=False),
        sa.Column("rating", sa.Integer, nullable=False),
        sa.Column("comment", sa.Text, nullable=False, server_default=""),
        sa.Column("question", sa.Text, nullable=False, server_default=""),
        sa.Column("answer", sa.Text, nullable=False, server_default=""),
        sa.Column("mode", sa.String(20)),
        sa.Column("model", sa.String(200)),
        sa.Column("retrieved", JSONB, nullable=False, server_default="[]"),
        sa.UniqueConstraint("task_id", "user_id", name="uq_answer_feedback_task_user"),
        sa.CheckConstraint("rating IN (-1, 1)", name="ck_answer_feedback_rating"),
    )
    op.create_index("ix_answer_feedback_kb_created", "answer_feedback", ["kb_id", "created_at"])


def downgrade() -> None:
    op.drop_table("answer_feedback")
