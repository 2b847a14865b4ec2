"""The embedding model as ONNX with dynamic int8 quantisation, exported locally from the configured model.

sentence-transformers' own ONNX backend needs ``optimum``, whose ONNX package pins ``transformers<4.58``; this
exports the same graph with ``torch.onnx`` and quantises it with onnxruntime, so it runs beside transformers 5.
Pooling (mean, as all-MiniLM and most sentence-transformers models; or CLS, as BGE) and normalisation happen here;
a model pooled any other way raises ``UnsupportedModel`` and the caller uses torch.

Only the export needs torch. Running the exported model needs onnxruntime and the ``tokenizers`` library (the model's
``tokenizer.json``), opened on first use: a ``kbchat search`` embeds its question in well under a second.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import threading
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer  # the Rust tokenizer alone: 40 ms to import, no torch

log = logging.getLogger(__name__)

_OPSET = 17


class UnsupportedModel(RuntimeError):
    """The model cannot run through this encoder (its pooling); use sentence-transformers on torch instead."""


def pooling_mode(model_path: str) -> str:
    """``mean`` or ``cls`` from the model's sentence-transformers pooling config (mean when it has none)."""
    config = Path(model_path) / "1_Pooling" / "config.json"
    if not config.exists():
        return "mean"
    settings = json.loads(config.read_text())
    modes = [name for name, on in settings.items() if name.startswith("pooling_mode_") and on]
    if modes == ["pooling_mode_mean_tokens"]:
        return "mean"
    if modes == ["pooling_mode_cls_token"]:
        return "cls"
    raise UnsupportedModel(f"{model_path} pools with {', '.join(modes) or 'nothing'}; onnx-int8 does mean or CLS only")


def export_dir(model_path: str, cache_dir: Path) -> Path:
    """Where the exported model of ``model_path`` lives in the model cache (one folder per source model)."""
    key = hashlib.sha256(str(Path(model_path).resolve()).encode()).hexdigest()[:12]
    return cache_dir / f"{Path(model_path).name}-{key}-onnx-int8"


def exported_file(model_path: str, cache_dir: Path) -> Path:
    """The int8 ONNX file of ``model_path`` in the model cache (it exists once the export is done)."""
    return export_dir(model_path, cache_dir) / "model_int8.onnx"


def ensure_exported(model_path: str, cache_dir: Path) -> Path:
    """The int8 ONNX file for ``model_path``, exported once (under a file lock, so workers never race)."""
    model_file = exported_file(model_path, cache_dir)
    target = model_file.parent
    if model_file.exists():
        return model_file
    target.mkdir(parents=True, exist_ok=True)
    with open(target / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not model_file.exists():
            _export(model_path, target)
    return model_file


def _export(model_path: str, target: Path) -> None:
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime's quantiser advises pre-processing on the root logger; it is optional
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on data-dependent shapes are expected here
            _export_quiet(model_path, target)
    finally:
        root.setLevel(level)


def _export_quiet(model_path: str, target: Path) -> None:
    # torch, transformers and onnxruntime's quantizer are imported by the one process that exports (seconds).
    import torch
    import transformers

    transformers.logging.disable_progress_bar()  # "Loading weights" would land in make run's console
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from transformers import AutoModel, AutoTokenizer

    log.info("exporting %s to ONNX int8 in %s (once)", model_path, target)
    tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
    model = AutoModel.from_pretrained(model_path, attn_implementation="eager", local_files_only=True).eval()
    sample = tokenizer(["an example sentence", "another"], padding=True, return_tensors="pt")
    names = [name for name in ("input_ids", "attention_mask", "token_type_ids") if name in sample]
    fp32 = target / "model_fp32.onnx"

    class Encoder(torch.nn.Module):  # positional inputs in a fixed order, one output
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(**dict(zip(names, inputs, strict=True))).last_hidden_state

    with torch.no_grad():
        torch.onnx.export(
            Encoder().eval(),
            tuple(sample[name] for name in names),
            str(fp32),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_axes={**{name: {0: "batch", 1: "sequence"} for name in names},
                          "last_hidden_state": {0: "batch", 1: "sequence"}},
            opset_version=_OPSET,
            dynamo=False,
        )
    partial = target / "model_int8.onnx.partial"
    # Per-channel weights on the MatMuls only: per-tensor scales (the default) cost ~5 % cosine to the float
    # vectors; per-channel keeps them at ~0.99. The embedding lookup stays float.
    quantize_dynamic(str(fp32), str(partial), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"],
                     per_channel=True)
    os.replace(partial, target / "model_int8.onnx")
    fp32.unlink(missing_ok=True)
    for extra in target.glob("*.data"):
        extra.unlink()


class _Tokenizer:
    """The model's fast tokenizer, straight from its ``tokenizer.json`` with the ``tokenizers`` library: the same
    ids as transformers' ``AutoTokenizer`` (the unit tests compare them) without importing transformers, which
    imports torch (three seconds at every ``kbchat search``)."""

    def __init__(self, model_path: str, max_length: int) -> None:
        path = Path(model_path) / "tokenizer.json"
        config_file = Path(model_path) / "tokenizer_config.json"
        config = json.loads(config_file.read_text()) if config_file.exists() else {}
        pad_token = config.get("pad_token") or "[PAD]"
        pad_token = pad_token.get("content", "[PAD]") if isinstance(pad_token, dict) else pad_token
        self._batch = Tokenizer.from_file(str(path))  # padded to the longest of a batch, cut at max_length
        pad_id = self._batch.token_to_id(pad_token)
        self._batch.enable_truncation(max_length=max_length)
        self._batch.enable_padding(direction=config.get("padding_side", "right"), pad_id=pad_id or 0,
                                   pad_token=pad_token)
        self._path = path
        self._count: Tokenizer | None = None  # whole texts, no special tokens (chunk sizes): made on first count

    def batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        encoded = self._batch.encode_batch(texts)
        return {
            "input_ids": np.array([e.ids for e in encoded], dtype=np.int64),
            "attention_mask": np.array([e.attention_mask for e in encoded], dtype=np.int64),
            "token_type_ids": np.array([e.type_ids for e in encoded], dtype=np.int64),
        }

    def count(self, texts: list[str]) -> list[int]:
        if self._count is None:
            counter = Tokenizer.from_file(str(self._path))
            counter.no_truncation()
            counter.no_padding()
            self._count = counter
        return [len(e.ids) for e in self._count.encode_batch(texts, add_special_tokens=False)]


class _TransformersTokenizer:
    """A model without a ``tokenizer.json`` (a slow, Python-only tokenizer): transformers' AutoTokenizer."""

    def __init__(self, model_path: str, max_length: int) -> None:
        import transformers
        from transformers import AutoTokenizer

        transformers.logging.set_verbosity_error()  # counting whole texts longer than the window is on purpose
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        self.max_length = max_length

    def batch(self, texts: list[str]) -> dict[str, np.ndarray]:
        encoded = self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length, return_tensors="np")
        return {k: v.astype(np.int64) for k, v in encoded.items()}

    def count(self, texts: list[str]) -> list[int]:
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False, truncation=False)["input_ids"]]


class OnnxEncoder:
    """The subset of SentenceTransformer that kbchat uses: ``encode``, ``count_tokens``, the dimension.

    Nothing heavy at construction: the tokenizer is read on the first text it sees and the ONNX session is opened
    on the first ``encode`` (a process that only counts tokens never opens it); neither imports torch.
    """

    def __init__(self, model_path: str, cache_dir: Path, max_seq_length: int | None = None, threads: int = 0) -> None:
        self.model_path = model_path
        self.pooling = pooling_mode(model_path)
        self.model_file = ensure_exported(model_path, cache_dir)
        config = Path(model_path) / "sentence_bert_config.json"
        configured = json.loads(config.read_text()).get("max_seq_length") if config.exists() else None
        self.max_seq_length = max_seq_length or configured or 256
        self.threads = threads
        self._tokenizer: _Tokenizer | _TransformersTokenizer | None = None
        self._sessions: dict[int, object] = {}
        self._inputs: set[str] = set()
        self._dimension: int | None = None
        self._lock = threading.Lock()

    @property
    def tokenizer(self) -> _Tokenizer | _TransformersTokenizer:
        if self._tokenizer is None:
            with self._lock:
                if self._tokenizer is None:
                    fast = (Path(self.model_path) / "tokenizer.json").exists()
                    self._tokenizer = (_Tokenizer if fast else _TransformersTokenizer)(self.model_path,
                                                                                      self.max_seq_length)
        return self._tokenizer

    @property
    def session(self):
        """The ONNX session on the configured threads (all cores when 0), opened on first use."""
        return self.session_for(self.threads)

    def session_for(self, threads: int):
        """An ONNX session whose batches run on ``threads`` CPU threads (0: all cores); one per thread count, each
        opened on first use (an int8 MiniLM session is about 25 MB)."""
        threads = threads or os.cpu_count() or 1
        session = self._sessions.get(threads)
        if session is None:
            with self._lock:
                session = self._sessions.get(threads)
                if session is None:
                    import onnxruntime as ort  # 0.2 s: only a process that embeds pays it

                    options = ort.SessionOptions()
                    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
                    options.intra_op_num_threads = threads
                    # Idle threads sleep instead of spinning: workers share the cores with other processes.
                    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
                    session = ort.InferenceSession(str(self.model_file), options, providers=["CPUExecutionProvider"])
                    self._inputs = {i.name for i in session.get_inputs()}
                    self._sessions[threads] = session
        return session

    def get_embedding_dimension(self) -> int:
        """The pooled vector's size: the model's hidden size (CLS and mean pooling keep it), else a probe."""
        if self._dimension is None:
            config = Path(self.model_path) / "config.json"
            hidden = json.loads(config.read_text()).get("hidden_size") if config.exists() else None
            self._dimension = int(hidden) if hidden else int(self.encode(["dimension probe"])[0].shape[0])
        return self._dimension

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Model tokens per text, without special tokens and without truncation."""
        return self.tokenizer.count(list(texts))

    def encode(self, texts: Sequence[str], batch_size: int = 32, normalize_embeddings: bool = True,
               threads: int | None = None, **_: object) -> np.ndarray:
        """Mean-pooled, optionally unit-length float32 vectors; batches sorted by length to pad little.
        ``threads`` overrides the configured CPU threads for this call."""
        texts = list(texts)
        session, tokenizer = self.session_for(self.threads if threads is None else threads), self.tokenizer
        order = np.argsort([-len(t) for t in texts], kind="stable")
        results: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        for start in range(0, len(texts), batch_size):
            index = order[start : start + batch_size]
            encoded = tokenizer.batch([texts[i] for i in index])
            feeds = {k: v for k, v in encoded.items() if k in self._inputs}
            hidden = session.run(None, feeds)[0]
            if self.pooling == "cls":
                pooled = hidden[:, 0, :].copy()
            else:
                mask = encoded["attention_mask"][..., None].astype(np.float32)
                pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            if normalize_embeddings:
                pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
            for row, i in enumerate(index):
                results[i] = pooled[row]
        return np.vstack(results).astype(np.float32) if texts else np.zeros((0, 0), dtype=np.float32)
