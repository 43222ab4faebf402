"""The ONNX embedding backends against sentence-transformers on torch: same vectors, same order, cached export."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline.detectors import onnx_model
from pipeline.detectors.embedder import Embedder, get_embedder, model_folder
from pipeline.detectors.onnx_model import ModelLayout, export_path, length_batches
from pipeline.settings import ConfigError, get_settings, load_settings

LONG = " ".join(f"token{i} and more words" for i in range(400))  # far past 256 tokens
TEXTS = [
    "",
    "How do I reset my password?",
    "I'm sorry, but I can't help with that request.",
    "Wie kann ich mein Passwort zurücksetzen? Ça ne marche pas.",
    "如何重置我的密码？ Как сбросить пароль? كيف أعيد تعيين كلمة المرور؟",
    "  leading and trailing whitespace\tand tabs\n",
    "Step 1: open the settings page. Step 2: choose security. Step 3: press reset. " * 5,
    LONG,
]


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(axis=1)


@pytest.fixture(scope="session")
def onnx_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


@pytest.fixture(scope="session")
def torch_vecs():
    return get_embedder(backend="torch").encode(TEXTS)


@pytest.fixture(scope="session")
def onnx_fp32(onnx_dir):
    return Embedder(backend="onnx", onnx_dir=onnx_dir, cache_size=0, batch_size=3)


@pytest.fixture(scope="session")
def onnx_int8(onnx_dir):
    return Embedder(backend="onnx-int8", onnx_dir=onnx_dir, cache_size=0)


def test_onnx_fp32_matches_torch(onnx_fp32, torch_vecs):
    vecs = onnx_fp32.encode(TEXTS)
    assert vecs.shape == (len(TEXTS), 384) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert cosines(vecs, torch_vecs).min() >= 0.999


def test_onnx_int8_stays_close_to_torch(onnx_int8, torch_vecs):
    cos = cosines(onnx_int8.encode(TEXTS), torch_vecs)
    # The empty text (two special tokens) agrees least: about 0.967 on this model; real texts 0.98-0.997.
    assert cos.mean() >= 0.98 and cos.min() >= 0.95, cos.round(4)


def test_tokenization_is_the_models_own(onnx_fp32):
    from transformers import AutoTokenizer

    reference = AutoTokenizer.from_pretrained(str(model_folder("")))(TEXTS, truncation=True, max_length=256)["input_ids"]
    assert [e.ids for e in onnx_fp32.model.tokenize(TEXTS)] == reference
    assert len(onnx_fp32.model.tokenize([LONG])[0].ids) == 256


def test_long_texts_are_truncated_at_the_max_length(onnx_dir):
    # Past the first 16 tokens nothing counts, on either backend.
    a = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen"
    b = a + " and then a tail that differs completely"
    for backend in ("torch", "onnx"):
        emb = Embedder(backend=backend, onnx_dir=onnx_dir, max_seq_length=16, cache_size=0)
        va, vb = emb.encode([a, b])
        assert float(va @ vb) >= 0.9999, backend
        assert float(va @ emb.encode([a + " x"])[0]) >= 0.9999


def test_length_bucketing_keeps_the_callers_order(onnx_fp32):
    texts = [TEXTS[6], "short", LONG, "a medium length sentence about nothing in particular", ""]
    together = onnx_fp32.encode(texts)  # batch_size 3: long and short texts land in different batches
    alone = np.stack([onnx_fp32.encode([t])[0] for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_length_batches_cover_every_row_once_longest_first_with_less_padding():
    rng = np.random.default_rng(0)
    # A stream batch's shape: mostly short texts, a sparse long tail, many at the 256 cap.
    lengths = np.r_[rng.integers(5, 40, 900), rng.integers(40, 256, 300), np.full(150, 256)]
    rng.shuffle(lengths)
    batches = list(length_batches(lengths.tolist(), 16))
    rows = np.concatenate(batches)
    assert sorted(rows.tolist()) == list(range(len(lengths)))
    assert all(1 <= len(b) <= 16 for b in batches)
    widest = [lengths[b].max() for b in batches]
    assert widest == sorted(widest, reverse=True), "longest batches first"
    padded = sum(lengths[b].max() * len(b) for b in batches)
    fixed = np.sort(lengths)[::-1]
    fixed_padded = sum(fixed[i : i + 16].max() * len(fixed[i : i + 16]) for i in range(0, len(fixed), 16))
    assert padded < fixed_padded
    assert len(batches) <= 1.1 * -(-len(lengths) // 16), "not many more model calls than fixed runs"
    # Equal lengths are never split below batch_size: nothing to save.
    assert [len(b) for b in length_batches([7] * 40, 16)] == [16, 16, 8]


def test_export_is_reused_and_keyed_on_versions(onnx_dir, onnx_fp32, monkeypatch):
    onnx_fp32.encode(["load"])
    layout = ModelLayout.read(model_folder(""))
    path = export_path(layout, "all-MiniLM-L6-v2", "onnx", onnx_dir)
    mtime = path.stat().st_mtime_ns
    again = Embedder(backend="onnx", onnx_dir=onnx_dir)
    again.encode(["load again"])
    assert again.exported is False and path.stat().st_mtime_ns == mtime
    assert not list(path.parent.glob(".*tmp*")), "no temporary files are left behind"
    monkeypatch.setattr(onnx_model, "library_version", lambda lib: "9.9" if lib == "torch" else "1.0")
    assert export_path(layout, "all-MiniLM-L6-v2", "onnx", onnx_dir) != path, "another torch version must not reuse the export"


EXPORT_AND_ENCODE = """
import sys
from pathlib import Path
from pipeline.detectors.embedder import Embedder
embedder = Embedder(backend="onnx-int8", onnx_dir=Path(sys.argv[1]), cache_size=0)
embedder.encode(["load"])
print("exported" if embedder.exported else "reused")
"""


def test_processes_starting_together_export_once(tmp_path):
    """Workers started at once on a fresh host share the export folder: one exports, the others
    wait for it (the quantizer's scratch file beside the fp32 model is not shared)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    runs = [
        subprocess.Popen([sys.executable, "-c", EXPORT_AND_ENCODE, str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(2)
    ]
    outputs = [run.communicate(timeout=600) for run in runs]
    assert [run.returncode for run in runs] == [0, 0], [err[-2000:] for _, err in outputs]
    assert sorted(out.split()[-1] for out, _ in outputs) == ["exported", "reused"]


def test_cli_export_reports_the_cached_file(onnx_dir, onnx_int8, monkeypatch):
    from pipeline.cli import app

    onnx_int8.encode(["load"])
    monkeypatch.setenv("SAFEMON_EMBEDDING_ONNX_DIR", str(onnx_dir))
    get_settings.cache_clear()
    try:
        result = CliRunner().invoke(app, ["embeddings", "export", "--backend", "onnx-int8"])
    finally:
        get_settings.cache_clear()
    assert result.exit_code == 0, result.output
    assert "model_int8.onnx (" in result.output and "already exported" in result.output


def test_bad_settings_fail_naming_the_key():
    with pytest.raises(ConfigError, match="SAFEMON_EMBEDDING_BACKEND"):
        load_settings(embedding_backend="onnx8")
    with pytest.raises(ConfigError, match="SAFEMON_EMBEDDING_MAX_SEQ_LENGTH"):
        load_settings(embedding_max_seq_length=0)
    with pytest.raises(ConfigError, match="SAFEMON_EMBEDDING_CACHE_SIZE"):
        load_settings(embedding_cache_size=-1)
    with pytest.raises(ValueError, match="valid: torch, onnx, onnx-int8"):
        Embedder(backend="tensorrt")
    with pytest.raises(ValueError, match="SAFEMON_EMBEDDING_MAX_SEQ_LENGTH=1000"):
        Embedder(backend="onnx", max_seq_length=1000).encode(["x"])
