"""Where a built graph's files are: their names, and the directory inside a model directory that holds
a graph built ahead of time. Imports neither onnx nor onnxruntime, so the loader can look before it
chooses a backend."""

from __future__ import annotations

import os
from typing import Optional

GRAPH_FILE = "model.onnx"  # the graph (onnx_graph.build_graph)
DATA_FILE = "model.onnx.data"  # its weights, beside it


def prebuilt_dir(model_dir: str, quantize: str) -> str:
    """Where a graph built ahead of time (scripts/build_graph.py, at image build time) sits inside the
    model directory it serves; such a directory needs no weights."""
    return os.path.join(model_dir, f"onnx-{quantize}")


def prebuilt_graph(model_dir: str, quantize: str) -> Optional[str]:
    path = os.path.join(prebuilt_dir(model_dir, quantize), GRAPH_FILE)
    return path if os.path.exists(path) else None
