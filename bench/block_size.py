"""What MatMulNBits' block size buys and costs on SmolLM2-135M's real weights (8 bits, accuracy level 4).

    python bench/block_size.py                           # the shipped 32 and 64 in the MLP / everywhere
    python bench/block_size.py --variants gate_up=64 head=64 --rounds 9
    python bench/block_size.py --variants attn=row,gate_up=row,down=row,head=row

Each variant names the block size of some parts of the graph (attn: q/k/v and o; gate_up; down; head);
the rest keep quantize.BLOCK_SIZE (32). Its activations are quantized in blocks of the same size (the
kernel's accuracy level 4), so a larger block means coarser activations too. `row` is the coarsest: one
scale per row of activations and per output column of weights, the layout of ONNX Runtime's integer
GEMM (MatMulInteger on unsigned 8-bit activations: eight nodes quantize an input, four more make
each product, devtools/integer_gemm.py).
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
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.bench_models import prepare  # noqa: E402
from devtools.integer_gemm import per_row  # noqa: E402
from devtools.quality import PASSAGE, PROMPTS, greedy, load_graph, perplexity, step_ms  # noqa: E402
from textgen.model.onnx_backend import quantize  # noqa: E402

PARTS = ("attn", "gate_up", "down", "head")
ROW = "row"  # a part's "block size" for per_row's integer GEMM


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


def load(model, quantize_name: str, cache_dir: str, blocks: dict = None):
    return load_graph(model.directory, model.service_env, quantize_name, cache_dir, blocked_quantizer(blocks) if blocks else None)


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
