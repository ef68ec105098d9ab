"""Where a built graph's files are: their names, the directory inside a model directory that holds a
graph built ahead of time, and the cache entry under CACHE_DIR of one built on first use. Imports
neither onnx nor onnxruntime at import time, so the loader can look before it chooses a backend, and a
graph already built is served without importing the builder (onnx and ml_dtypes: ~18 MB of a worker's
memory and 0.1-0.4 s of its start)."""

from __future__ import annotations

import hashlib
import json
import os
from typing import Optional

from ..build_cache import cached_build
from ..config import read_config
from ..safetensors import weight_files
from .schemes import SCHEMES

GRAPH_FILE = "model.onnx"  # the graph (onnx_graph.build_graph)
DATA_FILE = "model.onnx.data"  # its weights, beside it
GRAPH_VERSION = 9  # bump whenever the graph built for the same inputs changes (onnx_graph.py)


def prebuilt_dir(model_dir: str, quantize: str) -> str:
    """Where a graph built ahead of time (scripts/build_graph.py, at image build time) sits inside the
    model directory it serves; such a directory needs no weights."""
    return os.path.join(model_dir, f"onnx-{quantize}")


def prebuilt_graph(model_dir: str, quantize: str) -> Optional[str]:
    path = os.path.join(prebuilt_dir(model_dir, quantize), GRAPH_FILE)
    return path if os.path.exists(path) else None


def graph_key(source_dir: str, quantize: str) -> str:
    """Changes whenever the graph built from this directory would: config, weight files (names, sizes,
    mtimes), architecture, quantization (its name and its scheme's bits), onnxruntime version, GRAPH_VERSION."""
    import onnxruntime

    with open(os.path.join(source_dir, "config.json"), "rb") as f:
        parts = [f.read().decode("utf-8", "replace")]
    for path in weight_files(source_dir):
        stat = os.stat(path)
        parts.append(f"{os.path.basename(path)}:{stat.st_size}:{stat.st_mtime_ns}")
    parts += [str(read_config(source_dir).get("model_type")), quantize, repr(SCHEMES.get(quantize)), onnxruntime.__version__, str(GRAPH_VERSION)]
    return hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:16]


def graph_path(source_dir: str, cache_dir: str, quantize: str) -> str:
    """The cached graph for this checkpoint and quantization, built on first use into
    `cache_dir/onnx-<key>/` (build_cache.py: built once, stale builds of the same checkpoint removed)."""
    source = {"path": os.path.abspath(source_dir), "quantize": quantize}
    key = graph_key(source_dir, quantize)
    entry = cached_build(cache_dir, "onnx", key, source, lambda out: _build(source_dir, out, quantize), GRAPH_FILE)
    return os.path.join(entry, GRAPH_FILE)


def _build(source_dir: str, out_dir: str, quantize: str) -> str:
    from .onnx_graph import build_graph  # imports onnx: only building needs it

    return build_graph(source_dir, out_dir, quantize)
