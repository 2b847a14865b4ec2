"""Accounts, groups, per-knowledge-base grants, web sessions and the audit log; conversations get their user.

Existing knowledge bases get no grant here: the first admin created (``kbchat run`` on first start, or
``kbchat users add --role admin``) becomes the owner of every base that has none.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def _created(name: str = "created_at") -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False)


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("username", sa.String(64), nullable=False),
        sa.Column("display_name", sa.String(200), nullable=False, server_default=""),
        sa.Column("password_hash", sa.Text),
        sa.Column("role", sa.String(20), nullable=False, server_default="analyst"),
        sa.Column("disabled", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("external_subject", sa.String(500), unique=True),
        sa.Column("password_changed_at", sa.DateTime(timezone=True)),
        _created(),
        sa.Column("last_login_at", sa.DateTime(timezone=True)),
        sa.CheckConstraint("role IN ('admin', 'analyst')", name="ck_users_role"),
    )
    op.create_index("uq_users_username_lower", "users", [sa.text("lower(username)")], unique=True)

    op.create_table(
        "groups",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("name", sa.String(64), nullable=False),
        _created(),
    )
    op.create_index("uq_groups_name_lower", "groups", [sa.text("lower(name)")], unique=True)

    op.create_table(
        "group_members",
        sa.Column("group_id", sa.BigInteger, sa.ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), primary_key=True),
    )
    op.create_index("ix_group_members_user_id", "group_members", ["user_id"])

    op.create_table(
        "kb_grants",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("kb_id", sa.BigInteger, sa.ForeignKey("knowledge_bases.id", ondelete="CASCADE"), nullable=False),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE")),
        sa.Column("group_id", sa.BigInteger, sa.ForeignKey("groups.id", ondelete="CASCADE")),
        sa.Column("level", sa.String(10), nullable=False),
        _created(),
        sa.CheckConstraint("(user_id IS NULL) <> (group_id IS NULL)", name="ck_kb_grants_one_grantee"),
        sa.CheckConstraint("level IN ('viewer', 'editor', 'owner')", name="ck_kb_grants_level"),
    )
    op.create_index("ix_kb_grants_kb_id", "kb_grants", ["kb_id"])
    op.create_index("ix_kb_grants_user", "kb_grants", ["user_id"])
    op.create_index("ix_kb_grants_group", "kb_grants", ["group_id"])
    op.create_index("uq_kb_grants_kb_user", "kb_grants", ["kb_id", "user_id"], unique=True,
                    postgresql_where=sa.text("user_id IS NOT NULL"))
    op.create_index("uq_kb_grants_kb_group", "kb_grants", ["kb_id", "group_id"], unique=True,
                    postgresql_where=sa.text("group_id IS NOT NULL"))

    op.create_table(
        "web_sessions",
        sa.Column("id", sa.BigInteger, primary_key=True),
        sa.Column("token_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("user_id", sa.BigInteger, sa.ForeignKey("users.id", ondelete="CASCADE"), nullable=False),
        _created(),
        _created("last_seen_at"),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("client_addr", sa.String(64), nullable=False, server_default=""),
        sa.Column("user_agent", sa.String(300), nullable=False, server_default=""),
    )
    op.create_index("ix_web_sessions_user_id", "web_sessions", ["user_id"])

    op.create_table(
        "audit_events",
        sa.Column("id", sa.BigInteger, primary_key=True),
        _created("at"),
        sa.Column("user_id", sa.BigInteger),
        sa.Column("username", sa.String(64), nullable=False, server_default=""),
        sa.Column("action", sa.String(40), nullable=False),
        sa.Column("kb_id", sa.BigInteger),
        sa.Column("target", sa.Text, nullable=False, server_default=""),
        sa.Column("details", JSONB, nullable=False, server_default="{}"),
        sa.Column("client_addr", sa.String(64), nullable=False, server_default=""),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])
    op.create_index("ix_audit_events_action_at", "audit_events", ["action", "at"])
    op.create_index("ix_audit_events_user_at", "audit_events", ["user_id", "at"])

    op.add_column("conversations", sa.Column("user_id", sa.BigInteger,
                                             sa.ForeignKey("users.id", ondelete="CASCADE")))
    op.create_index("ix_conversations_user_id", "conversations", ["user_id"])


def downgrade() -> None:
    op.drop_index("ix_conversations_user_id", table_name="conversations")
    op.drop_column("conversations", "user_id")
    for table in ("audit_events", "web_sessions", "kb_grants", "group_members", "groups", "users"):
        op.drop_table(table)
