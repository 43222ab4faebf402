"""A sentence-transformers model on onnxruntime: where its export lives, and encode.

The export (`pipeline.lab.onnx_export`, made on first use when it is not cached) sits in a
cache folder keyed on the model's files and the exporting libraries' versions, and is reused
until one of them changes. At run time only onnxruntime and `tokenizers` are needed:
tokenization with the model's own fast tokenizer, mean pooling over the attention mask and L2
normalisation, as sentence-transformers' Transformer + Pooling + Normalize do.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import structlog
from filelock import FileLock

from pipeline.settings import DEFAULT_EMBEDDING_BATCH

log = structlog.get_logger(__name__)

# Bump when the exported graph changes for the same model and libraries (inputs, outputs, opset).
EXPORT_FORMAT = 2
OPSET = 18
ONNX_FILES = {"onnx": "model.onnx", "onnx-int8": "model_int8.onnx"}
EXPORT_LIBRARIES = ("torch", "transformers", "onnx", "onnxscript", "onnxruntime")
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "config.json", "tokenizer.json")

_export_lock = threading.Lock()


@dataclass(frozen=True)
class ModelLayout:
    """What the ONNX path needs to know about a sentence-transformers model folder."""

    root: Path
    transformer_dir: Path
    max_seq_length: int
    max_positions: int
    do_lower_case: bool

    @classmethod
    def read(cls, root: Path) -> ModelLayout:
        """Read modules.json and the module configs; refuse models the ONNX path would embed differently."""
        modules_file = root / "modules.json"
        if not modules_file.exists():
            raise ValueError(f"{root} is not a sentence-transformers model folder (no modules.json)")
        modules = json.loads(modules_file.read_text())
        kinds = [m["type"].rsplit(".", 1)[-1] for m in modules]
        if kinds[:2] != ["Transformer", "Pooling"] or any(k != "Normalize" for k in kinds[2:]):
            raise ValueError(f"the onnx backends support Transformer + Pooling (+ Normalize) models; {root} has {kinds}")
        pooling = json.loads((root / modules[1]["path"] / "config.json").read_text())
        modes = {k.removeprefix("pooling_mode_") for k, v in pooling.items() if k.startswith("pooling_mode_") and v is True}
        if pooling.get("pooling_mode", "mean") != "mean" or modes - {"mean_tokens"}:
            raise ValueError(f"the onnx backends support mean pooling only; {root} pools with {pooling}")
        transformer_dir = root / modules[0]["path"]
        st_config_file = transformer_dir / "sentence_bert_config.json"
        st_config = json.loads(st_config_file.read_text()) if st_config_file.exists() else {}
        config = json.loads((transformer_dir / "config.json").read_text())
        max_positions = int(config.get("max_position_embeddings", 512))
        return cls(
            root=root,
            transformer_dir=transformer_dir,
            max_seq_length=int(st_config.get("max_seq_length") or max_positions),
            max_positions=max_positions,
            do_lower_case=bool(st_config.get("do_lower_case", False)),
        )

    def export_key(self) -> str:
        """Digest of what an export depends on: the model's path and files, and the libraries' versions."""
        files = []
        for name in WEIGHT_FILES:
            path = self.transformer_dir / name
            if path.exists():
                stat = path.stat()
                files.append((name, stat.st_size, stat.st_mtime_ns))
        versions = {lib: library_version(lib) for lib in EXPORT_LIBRARIES}
        blob = json.dumps({"format": EXPORT_FORMAT, "opset": OPSET, "path": str(self.root.resolve()), "files": files, "versions": versions})
        return hashlib.blake2b(blob.encode(), digest_size=8).hexdigest()


def library_version(lib: str) -> str:
    try:
        return metadata.version(lib)
    except metadata.PackageNotFoundError:
        return "absent"


def export_path(layout: ModelLayout, model_name: str, backend: str, onnx_dir: Path) -> Path:
    """Where the export of `layout` for `backend` lives (whether or not it exists yet)."""
    if backend not in ONNX_FILES:
        raise ValueError(f"unknown onnx backend {backend!r}; valid: {', '.join(ONNX_FILES)}")
    safe_name = model_name.replace("/", "__")
    return onnx_dir.expanduser() / safe_name / layout.export_key() / ONNX_FILES[backend]


def ensure_export(layout: ModelLayout, model_name: str, backend: str, onnx_dir: Path) -> tuple[Path, bool]:
    """The ONNX file for `backend`, exported (and quantized) now unless already cached; True if made now."""
    path = export_path(layout, model_name, backend, onnx_dir)
    if path.exists():
        return path, False
    path.parent.mkdir(parents=True, exist_ok=True)
    # Workers started together on a fresh host export into the same folder, and the quantizer
    # writes a scratch file beside its source: one process exports, the others wait and reuse it.
    with _export_lock, FileLock(path.parent / ".export.lock"):
        if path.exists():
            return path, False
        from pipeline.lab.onnx_export import export

        export(layout, model_name, backend, path)
        return path, True


class OnnxEncoder:
    """Embeds texts with an exported model: sorted by token length, batched, mean-pooled, normalised."""

    def __init__(self, onnx_path: Path, layout: ModelLayout, max_seq_length: int, threads: int | None = None) -> None:
        import onnxruntime as ort
        from tokenizers import Tokenizer

        self.path = onnx_path
        self.layout = layout
        self.max_seq_length = max_seq_length
        self.tokenizer = Tokenizer.from_file(str(layout.transformer_dir / "tokenizer.json"))
        self.pad_id = _pad_id(self.tokenizer, layout.transformer_dir)
        self.tokenizer.no_padding()  # padded per batch below, to the batch's longest text
        self.tokenizer.enable_truncation(max_length=max_seq_length)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or 0
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Idle pool threads sleep instead of spinning: a spinning pool takes the cores the
        # stream worker's own threads (Kafka I/O, the contract check, the store) need.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(onnx_path), options, providers=["CPUExecutionProvider"])
        self.input_names = [i.name for i in self.session.get_inputs()]
        self._dim = int(self.session.get_outputs()[0].shape[-1])

    def get_sentence_embedding_dimension(self) -> int:
        return self._dim

    def tokenize(self, texts: Sequence[str]) -> list[Any]:
        """The model's own tokenizer, truncated at max_seq_length (special tokens included)."""
        if self.layout.do_lower_case:
            texts = [t.lower() for t in texts]
        return self.tokenizer.encode_batch(list(texts))

    def encode(self, texts: Sequence[str], batch_size: int = DEFAULT_EMBEDDING_BATCH, **_: Any) -> np.ndarray:
        """(n, dim) float32 unit vectors, in the order of `texts`; keywords of SentenceTransformer.encode are accepted."""
        encodings = self.tokenize(texts)
        out = np.zeros((len(encodings), self._dim), dtype=np.float32)
        for rows in length_batches([len(e.ids) for e in encodings], batch_size):
            out[rows] = self._run([encodings[i] for i in rows])
        return out

    def _run(self, encodings: list[Any]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        arrays = {
            "input_ids": np.full((len(encodings), width), self.pad_id, dtype=np.int64),
            "attention_mask": np.zeros((len(encodings), width), dtype=np.int64),
            "token_type_ids": np.zeros((len(encodings), width), dtype=np.int64),
        }
        for i, enc in enumerate(encodings):
            n = len(enc.ids)
            arrays["input_ids"][i, :n] = enc.ids
            arrays["attention_mask"][i, :n] = 1
            arrays["token_type_ids"][i, :n] = enc.type_ids
        (hidden,) = self.session.run(None, {name: arrays[name] for name in self.input_names})
        return mean_pool_normalise(hidden, arrays["attention_mask"])


# The cost model `length_batches` minimises, in token units: a row of width w costs
# w * (1 + w / ATTENTION_TOKENS) (projections grow with w, attention with w squared; MiniLM's
# attention matches its projections near 2,300 tokens), and each model call RUN_OVERHEAD_TOKENS.
ATTENTION_TOKENS = 2300.0
RUN_OVERHEAD_TOKENS = 64.0


def length_batches(lengths: Sequence[int], batch_size: int) -> Iterator[np.ndarray]:
    """Row indices in batches of at most `batch_size` similar lengths (longest first), cut where
    padding would cost more than another model call.

    Fixed runs of `batch_size` down the sorted lengths pad a lot wherever lengths are sparse (the
    long tail of a stream batch); the cuts are chosen by dynamic programming over the sorted
    lengths, in O(n * batch_size).
    """
    order = np.argsort(-np.asarray(lengths), kind="stable")
    widths = [float(lengths[i]) for i in order]
    n = len(widths)
    best = [0.0] * (n + 1)  # best[i]: the cheapest cost of rows i.. (sorted)
    cut = [n] * n
    for i in range(n - 1, -1, -1):
        row = widths[i] * (1.0 + widths[i] / ATTENTION_TOKENS)  # row i is its batch's widest
        best[i] = float("inf")
        for j in range(min(n, i + batch_size), i, -1):  # on a tie, the fuller batch
            cost = (j - i) * row + RUN_OVERHEAD_TOKENS + best[j]
            if cost < best[i]:
                best[i], cut[i] = cost, j
    i = 0
    while i < n:
        yield order[i : cut[i]]
        i = cut[i]


def mean_pool_normalise(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the unmasked tokens, then L2 normalisation (sentence-transformers' Pooling + Normalize)."""
    weights = mask[..., None].astype(np.float32)
    summed = (hidden * weights).sum(axis=1)
    pooled = summed / np.clip(weights.sum(axis=1), 1e-9, None)
    norms = np.linalg.norm(pooled, axis=1, keepdims=True)
    return (pooled / np.clip(norms, 1e-12, None)).astype(np.float32)


def _pad_id(tokenizer: Any, folder: Path) -> int:
    if tokenizer.padding and "pad_id" in tokenizer.padding:
        return int(tokenizer.padding["pad_id"])
    config_file = folder / "tokenizer_config.json"
    token = json.loads(config_file.read_text()).get("pad_token") if config_file.exists() else None
    token_id = tokenizer.token_to_id(token) if isinstance(token, str) else None
    return int(token_id or 0)  # padded positions are masked, so the id only has to be valid
