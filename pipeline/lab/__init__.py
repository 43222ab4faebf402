"""What runs on the bench, not in the pipeline: fitting and evaluating detector heads on labelled
data, exporting and quantising the embedding model to ONNX, importing public attack sets as probe
suites, and driving headless Chromium for screenshots. The running paths (probes, stream, drift)
import nothing from here, except the ONNX export an onnx backend makes on first use when the
export is not cached yet.
"""
