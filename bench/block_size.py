"""What MatMulNBits' block size buys and costs on SmolLM2-135M's real weights (8 bits, accuracy level 4).

    python bench/block_size.py                           # the shipped 32 and 64 in the MLP / everywhere
    python bench/block_size.py --variants gate_up=64 head=64 --rounds 9
    python bench/block_size.py --variants attn=row,gate_up=row,down=row,head=row

Each variant names the block size of some parts of the graph (attn: q/k/v and o; gate_up; down; head);
the rest keep quantize.BLOCK_SIZE (32). Its activations are quantized in blocks of the same size (the
kernel's accuracy level 4), so a larger block means coarser activations too. `row` is the coarsest: one
scale per row of activations and per output column of weights, the layout of ONNX Runtime's integer
GEMM (MatMulInteger on unsigned 8-bit activations: eight nodes quantize an input, four more make
each product, see `per_row`).
For each variant, one graph built into a temporary cache, then:
- perplexity over tests/data/passage.txt (a prefill in chunks of 256 positions, the logits at every
  position), against the float32 graph's. Quick, but not the figure of decoding token by token, which
  tests/test_real_weights_quality.py measures: the shipped graph gave +0.31% here against +0.54% there
  (float32: 23.666 both ways);
- greedy: for how many of 20 prompts the first 16 greedy tokens equal float32's;
- the decode step at 1 and 16 rows (40 tokens cached), medians of `--rounds` alternations of all the
  variants in this one process.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import tempfile

import numpy as np
from onnx import TensorProto, helper, numpy_helper

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.bench_models import prepare  # noqa: E402
from devtools.step_timing import decode_step_times  # noqa: E402
from textgen.engine.batch import Batch  # noqa: E402
from textgen.engine.sampling import log_softmax  # noqa: E402
from textgen.model.kv_cache import KVCache  # noqa: E402
from textgen.model.loader import load_model  # noqa: E402
from textgen.model.onnx_backend import onnx_graph, quantize  # noqa: E402
from textgen.settings import Settings  # noqa: E402

PASSAGE = os.path.join(ROOT, "tests", "data", "passage.txt")
PARTS = ("attn", "gate_up", "down", "head")
ROW = "row"  # a part's "block size" for per_row's integer GEMM
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


def blocked_quantizer(blocks: dict):
    """quantize_weights with each part's MatMuls in its own block size (8 bits, as int8 has them), or
    per row (`per_row`)."""

    def quantize_weights(model, scheme, head_output):
        matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
        head = {next(n.name for n in matmuls if head_output in n.output)}
        attn = {n.name for n in matmuls if "attn." in n.input[1]}
        down = {n.name for n in matmuls if "down_proj" in n.input[1]}
        parts = {"attn": attn, "down": down, "head": head, "gate_up": {n.name for n in matmuls} - attn - down - head}
        for block in sorted({blocks.get(p, quantize.BLOCK_SIZE) for p in PARTS}, key=str):
            names = set().union(*(parts[p] for p in PARTS if blocks.get(p, quantize.BLOCK_SIZE) == block))
            model = per_row(model, names) if block == ROW else quantize._quantize_nodes(model, names, 8, True, block)
        return model

    return quantize_weights


def per_row(model, names):
    """The named MatMuls as integer GEMMs: weights int8 with a scale per output column; activations
    quantized per row at run time (max |x| / 127, shifted to uint8 around 128, the zero point),
    once per input that several products share. The int32 result times both scales is the product.
    Exact integer sums: a row's result cannot depend on the other rows."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in [
        ("row_q.inv127", np.array(1 / 127, np.float32)), ("row_q.tiny", np.array(1e-30, np.float32)),
        ("row_q.128", np.array(128, np.float32)), ("row_q.zero_point", np.array(128, np.uint8))])
    nodes, quantized = [], {}
    for node in graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        x, weight_name = node.input
        if x not in quantized:  # |x| -> row max -> scale; x / scale rounded, + 128, as uint8
            p = f"row_q.{len(quantized)}."
            nodes += [
                helper.make_node("Abs", [x], [p + "abs"]),
                helper.make_node("ReduceMax", [p + "abs"], [p + "max"], axes=[-1], keepdims=1),
                helper.make_node("Max", [p + "max", "row_q.tiny"], [p + "max_or_tiny"]),  # an all-zero row
                helper.make_node("Mul", [p + "max_or_tiny", "row_q.inv127"], [p + "scale"]),
                helper.make_node("Div", [x, p + "scale"], [p + "scaled"]),
                helper.make_node("Round", [p + "scaled"], [p + "rounded"]),
                helper.make_node("Add", [p + "rounded", "row_q.128"], [p + "shifted"]),
                helper.make_node("Cast", [p + "shifted"], [p + "uint8"], to=TensorProto.UINT8),
            ]
            quantized[x] = (p + "uint8", p + "scale")
        x_q, x_scale = quantized[x]
        w = numpy_helper.to_array(weights[weight_name]).astype(np.float32)
        w_scale = np.abs(w).max(axis=0) / 127
        w_scale = np.where(w_scale == 0, 1, w_scale).astype(np.float32)
        graph.initializer.remove(weights[weight_name])
        graph.initializer.extend([numpy_helper.from_array(np.rint(w / w_scale).astype(np.int8), weight_name + ".q"),
                                  numpy_helper.from_array(w_scale, weight_name + ".scale")])
        out = node.output[0]
        nodes += [helper.make_node("MatMulInteger", [x_q, weight_name + ".q", "row_q.zero_point"], [out + ".int"]),
                  helper.make_node("Cast", [out + ".int"], [out + ".float"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [out + ".float", x_scale], [out + ".row"]),
                  helper.make_node("Mul", [out + ".row", weight_name + ".scale"], [out])]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def load(model, quantize_name: str, cache_dir: str, blocks: dict = None):
    settings = Settings.from_env(environ={"CACHE_DIR": cache_dir, **model.service_env}, model_id=model.directory,
                                 model_backend="onnx", quantize=quantize_name, threads=2)
    shipped = onnx_graph.quantize_weights
    onnx_graph.quantize_weights = blocked_quantizer(blocks) if blocks else shipped
    try:
        return load_model(settings)
    finally:
        onnx_graph.quantize_weights = shipped


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


def step_ms(model, batch: int) -> float:
    return statistics.median(decode_step_times(model, batch, prompt=40, steps=30))


def parse(variant: str) -> dict:
    blocks = dict(part.split("=") for part in variant.split(",") if part)
    unknown = set(blocks) - set(PARTS)
    if unknown:
        raise SystemExit(f"unknown part(s) {sorted(unknown)}: parts are {', '.join(PARTS)}")
    return {part: size if size == ROW else int(size) for part, size in blocks.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", default=["gate_up=64", "gate_up=64,down=64", "attn=64,gate_up=64,down=64,head=64"],
                        help="part=block,... (the shipped graph, all 32, is always measured first)")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    model = prepare("smollm2")
    with tempfile.TemporaryDirectory(prefix="block-size-") as cache_dir:
        fp32, tokenizer = load(model, "none", cache_dir)
        with open(PASSAGE, encoding="utf-8") as f:
            ids = tokenizer(f.read())["input_ids"]
        prompts = [tokenizer(p)["input_ids"] for p in PROMPTS]
        reference, reference_ppl = greedy(fp32, prompts), perplexity(fp32, ids)
        del fp32
        print(f"float32 perplexity over {len(ids)} tokens: {reference_ppl:.3f}", flush=True)
        variants = {"all 32 (shipped)": {}, **{v: parse(v) for v in args.variants}}
        models, rows = {}, {}
        for name, blocks in variants.items():
            # Each variant's graph in its own directory: the cache key does not know the block sizes.
            models[name] = load(model, "int8", os.path.join(cache_dir, f"v{len(models)}"), blocks)[0]
            ppl = perplexity(models[name], ids)
            matches = sum(a == b for a, b in zip(greedy(models[name], prompts), reference))
            rows[name] = {"perplexity": round(ppl, 3), "vs_float32_percent": round(100 * (ppl / reference_ppl - 1), 2),
                          "greedy_equal": matches}
            print(name, rows[name], flush=True)
        for batch in (1, 16):
            times = {name: [] for name in models}
            for _ in range(args.rounds):
                for name, m in models.items():
                    times[name].append(step_ms(m, batch))
            for name in models:
                rows[name][f"step_ms_{batch}"] = round(statistics.median(times[name]), 2)
    print("\n| blocks | perplexity (vs float32) | greedy = float32 (of 20) | step, 1 row (ms) | step, 16 rows (ms) |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['perplexity']} ({row['vs_float32_percent']:+.2f}%) | {row['greedy_equal']} | "
              f"{row['step_ms_1']} | {row['step_ms_16']} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
