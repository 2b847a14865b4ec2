"""SQLAlchemy 2 models: PostgreSQL is the source of truth for everything kbchat knows."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pgvector.sqlalchemy import Vector
from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, TSVECTOR
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from infra.settings import get_settings

EMBEDDING_DIM = get_settings().embedding_dim

# Document states, in pipeline order; ready and failed are final.
QUEUED, PARSING, CHUNKING, EMBEDDING, STORING, READY, FAILED = (
    "queued",
    "parsing",
    "chunking",
    "embedding",
    "storing",
    "ready",
    "failed",
)
OCR = "ocr"  # between parsing and chunking: pages without a text layer being read by OCR
FINAL_STATES = (READY, FAILED)
ACTIVE_STATES = (QUEUED, PARSING, OCR, CHUNKING, EMBEDDING, STORING)


class Base(DeclarativeBase):
    pass


def _created() -> Mapped[datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class KnowledgeBase(Base):
    __tablename__ = "knowledge_bases"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    embedding_model: Mapped[str] = mapped_column(String(500))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    chunk_tokens: Mapped[int] = mapped_column(Integer)
    chunk_overlap_tokens: Mapped[int] = mapped_column(Integer)
    # What the chunks' embedded and indexed text was built by (rag.context.CHUNK_RECIPE): an older one is re-indexed.
    chunk_recipe: Mapped[int] = mapped_column(Integer, default=1)
    # Bumped by every ingest or delete so caches keyed by it go stale.
    version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = _created()


class Document(Base):
    __tablename__ = "documents"
    __table_args__ = (
        UniqueConstraint("kb_id", "sha256", name="uq_documents_kb_sha256"),
        Index("ix_documents_status", "status"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kb_id: Mapped[int] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True)
    filename: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    mime: Mapped[str | None] = mapped_column(String(100))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    pages: Mapped[int | None] = mapped_column(Integer)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(20), default=QUEUED)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    error: Mapped[str | None] = mapped_column(Text)
    # The context header (title · file name · date) put before each chunk's text where it is embedded and indexed.
    context: Mapped[str | None] = mapped_column(Text)
    task_id: Mapped[str | None] = mapped_column(String(64))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    # The worker (its heartbeat identity) running the current task, since when: when its heartbeat lapses the
    # reconciler starts the document over as a new run. Cleared when the document is split into parts (those carry
    # their own) and when it is queued again.
    worker: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The worker whose loss last sent the document back to the queue ("worker lost — retrying (attempt N)").
    lost_worker: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )
    started_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class DocumentBlob(Base):
    """The original bytes, so any worker on any host can read them and a base can be re-indexed."""

    __tablename__ = "document_blobs"

    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class Chunk(Base):
    __tablename__ = "chunks"
    __table_args__ = (
        UniqueConstraint("document_id", "ordinal", name="uq_chunks_document_ordinal"),
        Index(
            "ix_chunks_embedding_hnsw",
            "embedding",
            postgresql_using="hnsw",
            postgresql_with={"m": 16, "ef_construction": 64},
            postgresql_ops={"embedding": "vector_cosine_ops"},
        ),
        # No pending list: every search would read it in full until merged (migration 0011).
        Index("ix_chunks_tsv", "tsv", postgresql_using="gin", postgresql_with={"fastupdate": "off"}),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kb_id: Mapped[int] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    page: Mapped[int | None] = mapped_column(Integer)
    # Where the chunk sits for formats without pages ("lines 10-24") and its heading path.
    locator: Mapped[str | None] = mapped_column(String(200))
    heading: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    tsv: Mapped[Any] = mapped_column(TSVECTOR)
    embedding: Mapped[Any] = mapped_column(Vector(EMBEDDING_DIM))


class DocumentLexeme(Base):
    """How many of a document's chunks hold a word (a lexeme of the text search configuration): summed over a
    base, the document frequencies that the full-text ranking weighs a question's words by."""

    __tablename__ = "document_lexemes"
    __table_args__ = (Index("ix_document_lexemes_kb_lexeme", "kb_id", "lexeme"),)

    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), primary_key=True)
    lexeme: Mapped[str] = mapped_column(Text, primary_key=True)
    kb_id: Mapped[int] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    chunks: Mapped[int] = mapped_column(Integer)


class Conversation(Base):
    __tablename__ = "conversations"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kb_id: Mapped[int] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True)
    title: Mapped[str] = mapped_column(String(200))
    # Who started it: only they (and admins) read it. None for conversations from before accounts.
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = _created()
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class Message(Base):
    __tablename__ = "messages"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    role: Mapped[str] = mapped_column(String(20))
    content: Mapped[str] = mapped_column(Text)
    mode: Mapped[str | None] = mapped_column(String(20))
    citations: Mapped[list] = mapped_column(JSONB, default=list)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    task_id: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created()


class ConversationSummary(Base):
    """Older turns of a conversation condensed (by ``chat.summarize``); the newest one is used in prompts."""

    __tablename__ = "conversation_summaries"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    conversation_id: Mapped[int] = mapped_column(
        ForeignKey("conversations.id", ondelete="CASCADE"), index=True
    )
    up_to_message_id: Mapped[int] = mapped_column(BigInteger)
    content: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer, default=0)
    mode: Mapped[str | None] = mapped_column(String(20))  # llm | extractive
    created_at: Mapped[datetime] = _created()


class EvalRun(Base):
    """One retrieval evaluation of a knowledge base: sampled chunks, a question for each, where retrieval ranked them."""

    __tablename__ = "eval_runs"
    __table_args__ = (Index("ix_eval_runs_kb_started", "kb_id", "started_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kb_id: Mapped[int] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    trigger: Mapped[str] = mapped_column(String(20))  # scheduled | cli | page
    status: Mapped[str] = mapped_column(String(20), default="running")  # running | succeeded | failed
    seed: Mapped[int] = mapped_column(BigInteger)
    sample_size: Mapped[int] = mapped_column(Integer)
    questions: Mapped[int] = mapped_column(Integer, default=0)
    question_mode: Mapped[str | None] = mapped_column(String(20))  # llm | extractive | mixed | golden
    # Sampled runs: the sampled chunk among the top k; golden runs: the question's document among the top k.
    hit_at_1: Mapped[float | None] = mapped_column(Float)
    hit_at_5: Mapped[float | None] = mapped_column(Float)
    hit_at_10: Mapped[float | None] = mapped_column(Float)
    mrr: Mapped[float | None] = mapped_column(Float)
    # Golden runs whose questions give pages: the evidence page of the right document among the top k.
    page_hit_at_1: Mapped[float | None] = mapped_column(Float)
    page_hit_at_5: Mapped[float | None] = mapped_column(Float)
    page_hit_at_10: Mapped[float | None] = mapped_column(Float)
    details: Mapped[list | None] = mapped_column(JSONB)
    error: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Alert(Base):
    """An alert raised by a scheduled job, and whether the webhook took it."""

    __tablename__ = "alerts"
    __table_args__ = (Index("ix_alerts_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kind: Mapped[str] = mapped_column(String(40))  # empty_retrievals | retrieval_drop
    kb_id: Mapped[int | None] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="SET NULL"))
    message: Mapped[str] = mapped_column(Text)
    payload: Mapped[dict] = mapped_column(JSONB)
    delivery: Mapped[str] = mapped_column(String(20))  # sending | sent | failed | not_configured
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    delivery_error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = _created()


class IngestPart(Base):
    """One page range of a split document's ingest run (the run is the ``ingest.document`` task id); the part
    that finds every part of its run done stores the document's chunks."""

    __tablename__ = "ingest_parts"
    __table_args__ = (UniqueConstraint("document_id", "run", "first_page", name="uq_ingest_parts_document_run_first"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"), index=True)
    run: Mapped[str] = mapped_column(String(64))
    first_page: Mapped[int] = mapped_column(Integer)
    last_page: Mapped[int] = mapped_column(Integer)
    pages_done: Mapped[int] = mapped_column(Integer, default=0)
    chunk_count: Mapped[int] = mapped_column(Integer, default=0)
    done: Mapped[bool] = mapped_column(Boolean, default=False)
    # The delivery running the part (task id, worker, since when) and how many deliveries started it.
    task_id: Mapped[str | None] = mapped_column(String(64))
    worker: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[datetime] = mapped_column(
        DateTime(timezone=True), server_default=func.now(), onupdate=func.now()
    )


class StagedChunk(Base):
    """A chunk of one part of a split document, embedded and waiting for the run's last part to store it."""

    __tablename__ = "staged_chunks"
    __table_args__ = (Index("ix_staged_chunks_document_run_first", "document_id", "run", "first_page", "ordinal"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    document_id: Mapped[int] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    run: Mapped[str] = mapped_column(String(64))
    first_page: Mapped[int] = mapped_column(Integer)  # the part it belongs to
    ordinal: Mapped[int] = mapped_column(Integer)  # within the part
    page: Mapped[int | None] = mapped_column(Integer)
    locator: Mapped[str | None] = mapped_column(String(200))
    heading: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    token_count: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[Any] = mapped_column(Vector(EMBEDDING_DIM))


# Roles and grant levels. An admin may do everything; an analyst what their grants (and their groups') allow.
ADMIN, ANALYST = "admin", "analyst"
ROLES = (ADMIN, ANALYST)
VIEWER, EDITOR, OWNER = "viewer", "editor", "owner"
LEVELS = (VIEWER, EDITOR, OWNER)  # each includes the ones before it


class User(Base):
    __tablename__ = "users"
    __table_args__ = (
        Index("uq_users_username_lower", text("lower(username)"), unique=True),
        CheckConstraint("role IN ('admin', 'analyst')", name="ck_users_role"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    username: Mapped[str] = mapped_column(String(64))
    display_name: Mapped[str] = mapped_column(String(200), default="")
    password_hash: Mapped[str | None] = mapped_column(Text)  # Argon2id; None = single sign-on only
    role: Mapped[str] = mapped_column(String(20), default=ANALYST)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    # Single sign-on: the issuer's subject this account was made for.
    external_subject: Mapped[str | None] = mapped_column(String(500), unique=True)
    # Set when the password changes: the initial-admin-password file is removed once the admin picked their own.
    password_changed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = _created()
    last_login_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class Group(Base):
    __tablename__ = "groups"
    __table_args__ = (Index("uq_groups_name_lower", text("lower(name)"), unique=True),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    name: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime] = _created()


class GroupMember(Base):
    __tablename__ = "group_members"

    group_id: Mapped[int] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), primary_key=True, index=True)


class Grant(Base):
    """A knowledge base shared with one user or one group, at a level; levels add up, there is no deny."""

    __tablename__ = "kb_grants"
    __table_args__ = (
        CheckConstraint("(user_id IS NULL) <> (group_id IS NULL)", name="ck_kb_grants_one_grantee"),
        CheckConstraint("level IN ('viewer', 'editor', 'owner')", name="ck_kb_grants_level"),
        Index("uq_kb_grants_kb_user", "kb_id", "user_id", unique=True, postgresql_where=text("user_id IS NOT NULL")),
        Index("uq_kb_grants_kb_group", "kb_id", "group_id", unique=True,
              postgresql_where=text("group_id IS NOT NULL")),
        Index("ix_kb_grants_user", "user_id"),
        Index("ix_kb_grants_group", "group_id"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    kb_id: Mapped[int] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"), index=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    group_id: Mapped[int | None] = mapped_column(ForeignKey("groups.id", ondelete="CASCADE"))
    level: Mapped[str] = mapped_column(String(10))
    created_at: Mapped[datetime] = _created()


class WebSession(Base):
    """A signed-in browser: only the token's SHA-256 is kept; any web instance accepts it."""

    __tablename__ = "web_sessions"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = _created()
    last_seen_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))  # the absolute lifetime
    client_addr: Mapped[str] = mapped_column(String(64), default="")
    user_agent: Mapped[str] = mapped_column(String(300), default="")


class AuditEvent(Base):
    """Who did what, kept ``audit_retention_days``; names are copied so an entry outlives its user or base."""

    __tablename__ = "audit_events"
    __table_args__ = (
        Index("ix_audit_events_at", "at"),
        Index("ix_audit_events_action_at", "action", "at"),
        Index("ix_audit_events_user_at", "user_id", "at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    at: Mapped[datetime] = _created()
    user_id: Mapped[int | None] = mapped_column(BigInteger)
    username: Mapped[str] = mapped_column(String(64), default="")
    action: Mapped[str] = mapped_column(String(40))
    kb_id: Mapped[int | None] = mapped_column(BigInteger)
    target: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    client_addr: Mapped[str] = mapped_column(String(64), default="")


class ApiKey(Base):
    """A key for the HTTP API: acts as its user, optionally limited to some bases; only its SHA-256 is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), unique=True)  # shown in lists; the key starts with it
    key_hash: Mapped[str] = mapped_column(String(64))
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    kb_ids: Mapped[list[int] | None] = mapped_column(ARRAY(BigInteger))  # None: every base the user may use
    created_at: Mapped[datetime] = _created()
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class AnswerFeedback(Base):
    """A thumbs up or down (and an optional comment) on one answer, with what it was about: the question, the answer,
    its mode and model, and the chunks retrieved with their scores. One per user and answer (changed in place)."""

    __tablename__ = "answer_feedback"
    __table_args__ = (
        UniqueConstraint("task_id", "user_id", name="uq_answer_feedback_task_user"),
        Index("ix_answer_feedback_kb_created", "kb_id", "created_at"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    created_at: Mapped[datetime] = _created()
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="SET NULL"))
    username: Mapped[str] = mapped_column(String(64), default="")
    kb_id: Mapped[int] = mapped_column(ForeignKey("knowledge_bases.id", ondelete="CASCADE"))
    conversation_id: Mapped[int | None] = mapped_column(ForeignKey("conversations.id", ondelete="SET NULL"))
    task_id: Mapped[str] = mapped_column(String(64))
    rating: Mapped[int] = mapped_column(Integer)  # 1 = helpful, -1 = not
    comment: Mapped[str] = mapped_column(Text, default="")
    question: Mapped[str] = mapped_column(Text, default="")
    answer: Mapped[str] = mapped_column(Text, default="")
    mode: Mapped[str | None] = mapped_column(String(20))
    model: Mapped[str | None] = mapped_column(String(200))
    retrieved: Mapped[list] = mapped_column(JSONB, default=list)  # [{"chunk_id", "document", "page", "score"}]
