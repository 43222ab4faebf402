"""Exporting a sentence-transformers model to ONNX, fused for onnxruntime, and quantizing it to int8.

The export is made from the model folder on disk (never from a hub) with torch's ONNX exporter
and written atomically, so a crash never leaves a half-written file in the cache.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import structlog

from pipeline.detectors.onnx_model import EXPORT_FORMAT, EXPORT_LIBRARIES, ONNX_FILES, OPSET, ModelLayout, library_version

log = structlog.get_logger(__name__)


def export(layout: ModelLayout, model_name: str, backend: str, path: Path) -> None:
    """Write the fp32 export beside `path` (unless there) and, for int8, its quantized copy at `path`."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fp32 = path.with_name(ONNX_FILES["onnx"])
    if not fp32.exists():
        log.info("embedder.onnx_export", model=model_name, path=str(fp32))
        with _atomic(fp32) as tmp, _quiet():
            export_fp32(layout, tmp)
    if backend == "onnx-int8":
        log.info("embedder.onnx_quantize", model=model_name, path=str(path))
        with _atomic(path) as tmp, _quiet():
            quantize_int8(fp32, tmp)
    _write_meta(path.parent, layout, model_name)


@contextlib.contextmanager
def _atomic(dest: Path) -> Iterator[Path]:
    """A temporary path beside `dest`, renamed onto it only if the block succeeds."""
    fd, name = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.stem}.", suffix=".tmp.onnx")
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        tmp.chmod(0o644)  # mkstemp makes it private; other workers on the host read the same cache
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence the exporter's and quantizer's advice (missing torchvision ops, pre-processing hints)."""
    logging.disable(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logging.disable(logging.NOTSET)


def _write_meta(folder: Path, layout: ModelLayout, model_name: str) -> None:
    meta = {
        "model": model_name,
        "path": str(layout.root),
        "format": EXPORT_FORMAT,
        "opset": OPSET,
        "versions": {lib: library_version(lib) for lib in EXPORT_LIBRARIES},
    }
    fd, name = tempfile.mkstemp(dir=folder, prefix=".meta.", suffix=".tmp")
    with os.fdopen(fd, "w") as fh:
        json.dump(meta, fh, indent=2)
    os.chmod(name, 0o644)
    os.replace(name, folder / "meta.json")


def export_fp32(layout: ModelLayout, dest: Path) -> None:
    """Export the transformer to ONNX (last hidden state; dynamic batch and sequence axes), fused for onnxruntime.

    The export runs the embeddings and the encoder with eager attention and an additive mask
    built here, not through transformers' mask code: the legacy TorchScript tracer bakes
    transformers 5's shape-dependent mask code into the graph (wrong outputs at other lengths),
    and the SDPA graph spends a third of its time guarding fully masked rows against NaN. The
    plain graph is then fused by onnxruntime's transformer optimizer (`fuse_for_onnxruntime`).
    """
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import torch
    from transformers import AutoModel, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()

    class LastHiddenState(torch.nn.Module):
        def __init__(self, model: Any) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            hidden = self.model.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)
            additive = (1.0 - attention_mask[:, None, None, :].to(hidden.dtype)) * torch.finfo(hidden.dtype).min
            return self.model.encoder(hidden, attention_mask=additive).last_hidden_state

    tokenizer = AutoTokenizer.from_pretrained(str(layout.transformer_dir))
    model = AutoModel.from_pretrained(str(layout.transformer_dir), attn_implementation="eager").eval()
    names = ["input_ids", "attention_mask", "token_type_ids"]
    sample = tokenizer(["a short text", "a somewhat longer text to give the sample two lengths"], padding=True, return_tensors="pt")
    sample.setdefault("token_type_ids", torch.zeros_like(sample["input_ids"]))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence", max=layout.max_positions)
    with torch.no_grad():
        program = torch.onnx.export(
            LastHiddenState(model),
            tuple(sample[n] for n in names),
            input_names=names,
            output_names=["last_hidden_state"],
            dynamic_shapes={n: {0: batch, 1: seq} for n in names},
            opset_version=OPSET,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    fuse_for_onnxruntime(program.model_proto, model.config).save_model_to_file(str(dest))


def fuse_for_onnxruntime(model: Any, config: Any) -> Any:
    """`model` (an ONNX ModelProto, changed in place) fused into onnxruntime's BERT operators (an OnnxModel to save).

    `config` is the exported transformer's config (its layer count, heads and hidden size).

    onnxruntime's optimizer turns each layer's attention into one Attention operator (and the
    layer norms and GELU into SkipLayerNormalization and BiasGelu), which runs in ~0.8 of the
    plain graph's time in fp32 and lets int8 quantize the attention projections too. Its
    pattern matcher wants the mask unsqueezed one axis at a time and the score scaling as a
    Div; the exporter writes one two-axis Unsqueeze and a Mul, so those are rewritten first.
    The fused Attention reads the mask as each row's length, so padding must be on the right,
    as `OnnxEncoder` pads. Raises if a layer's attention did not fuse (the graph would still be
    right, but slow).
    """
    from onnx import helper, numpy_helper
    from onnxruntime.transformers.optimizer import optimize_by_fusion

    graph = model.graph
    initializers = {init.name: init for init in graph.initializer}
    producer = {out: node for node in graph.node for out in node.output}
    for node in list(graph.node):
        if node.op_type == "Unsqueeze" and node.input[0] == "attention_mask" and node.input[1] in initializers:
            axes = numpy_helper.to_array(initializers[node.input[1]]).tolist()
            source, position = node.input[0], list(graph.node).index(node)
            graph.node.remove(node)
            for i, axis in enumerate(axes):
                axis_name, out = f"mask_axis_{i}", node.output[0] if i == len(axes) - 1 else f"mask_unsqueezed_{i}"
                graph.initializer.append(numpy_helper.from_array(np.array([axis], dtype=np.int64), axis_name))
                graph.node.insert(position + i, helper.make_node("Unsqueeze", [source, axis_name], [out], name=f"mask_unsqueeze_{i}"))
                source = out
        elif node.op_type == "Mul" and getattr(producer.get(node.input[0]), "op_type", "") == "MatMul" and node.input[1] in initializers:
            scale = numpy_helper.to_array(initializers[node.input[1]])
            if scale.size == 1:  # attention scores * 1/sqrt(head_dim): the same as / sqrt(head_dim)
                divisor = f"{node.input[1]}_reciprocal"
                graph.initializer.append(numpy_helper.from_array((1.0 / scale).astype(scale.dtype), divisor))
                node.op_type, node.input[1] = "Div", divisor

    fused = optimize_by_fusion(model, model_type="bert", num_heads=config.num_attention_heads, hidden_size=config.hidden_size)
    attention = sum(node.op_type == "Attention" for node in fused.model.graph.node)
    if attention != config.num_hidden_layers:
        raise RuntimeError(f"onnxruntime fused {attention} of {config.num_hidden_layers} attention layers; the exported graph's pattern changed")
    return fused


def quantize_int8(src: Path, dest: Path) -> None:
    """Dynamic int8 quantization of `src`'s MatMul and Attention weights, per channel (activations per batch at run time).

    Every projection is quantized, the feed-forward down-projections included: keeping those in
    fp32 costs much of int8's speed on long texts for little cosine to fp32. Per-tensor weights
    lose far more accuracy; quantizing the embedding Gathers too saves only file size
    (`bench/embedding.py` measures speed and cosine).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dest), weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Attention"])
