"""How far a quantized graph's outputs are from float32's on real text, for the benchmarks that weigh a
faster kernel against its quality (bench/block_size.py, bench/rotation.py): a model's ONNX graph built with
a benchmark's own quantizer, perplexity over tests/data/passage.txt, greedy continuations of 20 prompts,
and the decode step's time."""

from __future__ import annotations

import math
import os
import statistics
from typing import Callable, Optional

import numpy as np

from textgen.engine.batch import Batch
from textgen.engine.sampling import log_softmax
from devtools.step_timing import decode_step_times
from textgen.model.kv_cache import KVCache
from textgen.model.loader import load_model
from textgen.model.onnx_backend import onnx_graph
from textgen.settings import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PASSAGE = os.path.join(ROOT, "tests", "data", "passage.txt")
PROMPTS = [
    "The capital of France is", "Water boils at a temperature of", "The largest planet in the solar system is",
    "Photosynthesis is the process by which plants", "The first man to walk on the Moon was",
    "Monday, Tuesday, Wednesday,", "1, 2, 3, 4, 5,", "A list of primary colours: red,",
    "Ingredients for pancakes:\n- flour\n-", "def add(a, b):\n    return", "import numpy as np\n\nx = np.",
    "for i in range(10):\n    print(", "SELECT name, age FROM users WHERE", "To make a cup of tea, first",
    "Instructions: write a short poem about the sea.\nPoem:", "Translate to French: 'Good morning' ->",
    "Once upon a time, in a small village,", "The main causes of the First World War were",
    "The best way to learn a new programming language is", "Scientists announced today that",
]


def perplexity(model, ids, chunk: int = 256) -> float:
    cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
    cache.reserve(1, len(ids))
    nll = 0.0
    for start in range(0, len(ids) - 1, chunk):
        part = ids[start : start + chunk]
        targets = np.array(ids[start + 1 : start + 1 + len(part)])
        logits = model.forward(np.array([part]), np.array([start]), np.array([len(part)]), cache, 0, True,
                               np.arange(len(targets), dtype=np.int64))
        nll -= float(log_softmax(logits.astype(np.float64))[np.arange(len(targets)), targets].sum())
    return math.exp(nll / (len(ids) - 1))


def greedy(model, prompts, n: int = 16) -> list:
    out = []
    for ids in prompts:
        rows = Batch(model)
        rows.add([0], [ids])
        joined = None
        while joined is None:
            joined = rows.prefill_step()
        tokens = [int(joined.logits[0].argmax())]
        while len(tokens) < n:
            tokens.append(int(rows.step([tokens[-1]])[0].argmax()))
        out.append(tokens)
    return out


def load_graph(directory: str, env: dict, quantize_name: str, cache_dir: str, quantize_weights: Optional[Callable] = None):
    """(model, tokenizer) from an ONNX graph built into `cache_dir`, its products quantized by
    `quantize_weights(model, scheme, head_output)` in place of the shipped quantizer when given (the
    cache key does not know it: one directory per quantizer)."""
    settings = Settings.from_env(environ={"CACHE_DIR": cache_dir, **env}, model_id=directory, model_backend="onnx",
                                 quantize=quantize_name, threads=2)
    shipped = onnx_graph.quantize_weights
    onnx_graph.quantize_weights = quantize_weights or shipped
    try:
        return load_model(settings)
    finally:
        onnx_graph.quantize_weights = shipped


def step_ms(model, batch: int) -> float:
    """The decode step's median time at `batch` rows, 40 tokens cached."""
    return statistics.median(decode_step_times(model, batch, prompt=40, steps=30))
