"""The embedding model as ONNX with dynamic int8 quantisation, exported locally from the configured model.

sentence-transformers' own ONNX backend needs ``optimum``, whose ONNX package pins ``transformers<4.58``; this
exports the same graph with ``torch.onnx`` and quantises it with onnxruntime, so it runs beside transformers 5.
Pooling (mean, as all-MiniLM and most sentence-transformers models; or CLS, as BGE) and normalisation happen here;
a model pooled any other way raises ``UnsupportedModel`` and the caller uses torch.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

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


class OnnxEncoder:
    """The subset of SentenceTransformer that kbchat uses: ``tokenizer``, ``encode``, the dimension."""

    def __init__(self, model_path: str, cache_dir: Path, max_seq_length: int | None = None, threads: int = 0) -> None:
        import onnxruntime as ort  # heavy: imported by the processes that embed, not by every one that imports rag
        from transformers import AutoTokenizer

        self.pooling = pooling_mode(model_path)
        model_file = ensure_exported(model_path, cache_dir)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path, local_files_only=True)
        config = Path(model_path) / "sentence_bert_config.json"
        configured = json.loads(config.read_text()).get("max_seq_length") if config.exists() else None
        self.max_seq_length = max_seq_length or configured or 256
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = threads or os.cpu_count() or 1
        # Idle threads sleep instead of spinning: workers share the cores with other processes.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_file), options, providers=["CPUExecutionProvider"])
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.dimension = int(self.encode(["dimension probe"])[0].shape[0])

    def get_embedding_dimension(self) -> int:
        return self.dimension

    def encode(self, texts: Sequence[str], batch_size: int = 32, normalize_embeddings: bool = True,
               **_: object) -> np.ndarray:
        """Mean-pooled, optionally unit-length float32 vectors; batches sorted by length to pad little."""
        texts = list(texts)
        order = np.argsort([-len(t) for t in texts], kind="stable")
        results: list[np.ndarray] = [None] * len(texts)  # type: ignore[list-item]
        for start in range(0, len(texts), batch_size):
            index = order[start : start + batch_size]
            encoded = self.tokenizer([texts[i] for i in index], padding=True, truncation=True,
                                     max_length=self.max_seq_length, return_tensors="np")
            feeds = {k: v.astype(np.int64) for k, v in encoded.items() if k in self._inputs}
            hidden = self.session.run(None, feeds)[0]
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
