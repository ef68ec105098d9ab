"""Can 8-bit activations per row keep q8_0's quality once the hidden states are rotated? SmolLM2-135M's real
weights, in torch (transformers' own Llama), with fake quantization: each product's input and weight are
rounded to 8 bits and back to float32 (needs torch and transformers; nothing of the service runs).

    python bench/rotation.py                    # three rotations (seeds 0 1 2)
    python bench/rotation.py --seeds 0 1 2 3 4
    python bench/rotation.py --onnx --rounds 5  # then the real kernels, in ONNX Runtime

Why: ONNX Runtime's integer GEMM (one scale per row of activations, one per output column of weights)
makes SmolLM2's 16-row step 23% shorter than MatMulNBits in blocks of 32, but per-row activations cost
+3% perplexity (bench/block_size.py, docs/performance.md). Rotating the residual stream by an orthogonal
matrix Q spreads each row's large channels over all of them (QuaRot, SpinQuant), and costs nothing at run
time once folded into the weights:
1. each RMSNorm's weight is folded into the products that read it (the norms keep weight 1), the final
   norm's into the head, which is untied from the embedding;
2. the embedding and every product reading the residual stream take Q (W Q), every product writing it
   (o_proj, down_proj) Q^T (Q^T W): float32 perplexity stays the same (printed first);
3. down_proj's input comes out of SiLU(gate) * up, which no weight can rotate, so variants rotate it at
   run time by a block-diagonal orthogonal matrix R (blocks of 64, or the whole 1,536), W R beforehand.
Rotations are random (QR of a Gaussian, seeded); each variant's perplexity is reported for every seed.
Reference: blocks of 32 for activations and weights, q8_0's grain and MatMulNBits' (the shipped int8).
Perplexity over tests/data/passage.txt, one forward pass.

With --onnx, each seed's rotated weights are saved as a checkpoint and built into an ONNX graph whose
products are integer GEMMs (devtools/integer_gemm.py: per row, down's input rotated in blocks of 64 in
the graph), beside the shipped int8 graph of the original weights: perplexity (chunked prefill), greedy
continuations of 20 prompts against float32's, and the decode step at 1 and 16 rows, alternating.
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from devtools import quality  # noqa: E402
from devtools.bench_models import SMOLLM2_GGUF, smollm2_dir  # noqa: E402
from devtools.integer_gemm import per_row, rotate_input_blocks  # noqa: E402


def load():
    """SmolLM2 in float32 from the GGUF file (dequantized: a few seconds; variants take copies)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF, dtype=torch.float32).eval()


def perplexity(model, ids) -> float:
    with torch.no_grad():
        logits = model(ids).logits[0, :-1].double()
    return math.exp(torch.nn.functional.cross_entropy(logits, ids[0, 1:]).item())


def fake_8bit(x: torch.Tensor, block: int = 0) -> torch.Tensor:
    """x rounded to 8 bits, symmetric, one scale per row of its last axis (block 0) or per `block` of it."""
    shape = x.shape
    if block:
        x = x.reshape(*shape[:-1], shape[-1] // block, block)
    scale = x.abs().amax(dim=-1, keepdim=True).clamp_min(1e-30) / 127
    return (torch.round(x / scale).clamp(-127, 127) * scale).reshape(shape)


def quantize(model, block: int = 0):
    """Every product: its weight rounded per output channel (block 0) or per block of its inputs, and its
    input likewise per row or per block, at run time."""
    for module in model.modules():
        if isinstance(module, torch.nn.Linear):
            module.weight.data = fake_8bit(module.weight.data, block)
            module.register_forward_pre_hook(lambda _, args: (fake_8bit(args[0], block),))
    return model


def orthogonal(n: int, generator: torch.Generator) -> torch.Tensor:
    return torch.linalg.qr(torch.randn(n, n, dtype=torch.float64, generator=generator))[0]


def rotate(model, generator: torch.Generator):
    """Steps 1 and 2 of the docstring, in float64 and back."""
    q = orthogonal(model.config.hidden_size, generator)

    def reads(linear, norm_weight):  # W x, x normed with weight g: (W diag(g) Q) (Q^T x)
        linear.weight.data = ((linear.weight.data.double() * norm_weight[None, :]) @ q).float()

    def writes(linear):
        linear.weight.data = (q.T @ linear.weight.data.double()).float()

    model.lm_head.weight = torch.nn.Parameter(model.lm_head.weight.data.clone())  # untied
    for layer in model.model.layers:
        for norm, readers in ((layer.input_layernorm, (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj)),
                              (layer.post_attention_layernorm, (layer.mlp.gate_proj, layer.mlp.up_proj))):
            for linear in readers:
                reads(linear, norm.weight.data.double())
            norm.weight.data.fill_(1.0)
        writes(layer.self_attn.o_proj)
        writes(layer.mlp.down_proj)
    reads(model.lm_head, model.model.norm.weight.data.double())
    model.model.norm.weight.data.fill_(1.0)
    embedding = model.model.embed_tokens.weight
    embedding.data = (embedding.data.double() @ q).float()
    return model


def rotate_down_input(model, block: int, generator: torch.Generator):
    """Step 3: down_proj's input times a block-diagonal orthogonal R at run time, its weight W R."""
    for layer in model.model.layers:
        down = layer.mlp.down_proj
        blocks = [orthogonal(block, generator) for _ in range(down.in_features // block)]
        r = torch.block_diag(*blocks).float()
        down.weight.data = down.weight.data @ r
        down.register_forward_pre_hook(lambda _, args, r=r: (args[0] @ r,))
    return model


def rotated_integer_gemm(down_rotation):
    """A quantizer for quality.load_graph: down's input rotated by `down_rotation` in blocks, then every
    product an integer GEMM per row."""

    def quantize_weights(model, scheme, head_output):
        weights = {init.name for init in model.graph.initializer}
        products = {n.name for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in weights}
        down = {n.name for n in model.graph.node if n.name in products and "down_proj" in n.input[1]}
        return per_row(rotate_input_blocks(model, down, down_rotation), products)

    return quantize_weights


def onnx_table(original, hf_tokenizer, seeds, rounds: int) -> None:
    """The --onnx part of the docstring (`original`: the float32 model, left as it is)."""
    with tempfile.TemporaryDirectory(prefix="rotation-") as tmp:
        env = {"MODEL_GGUF_FILE": SMOLLM2_GGUF}
        exact, tokenizer = quality.load_graph(smollm2_dir(), env, "none", os.path.join(tmp, "float32"))
        with open(quality.PASSAGE, encoding="utf-8") as f:
            ids = tokenizer(f.read())["input_ids"]
        prompts = [tokenizer(p)["input_ids"] for p in quality.PROMPTS]
        reference, reference_ppl = quality.greedy(exact, prompts), quality.perplexity(exact, ids)
        del exact
        models = {"MatMulNBits, blocks of 32 (shipped)": quality.load_graph(smollm2_dir(), env, "int8", os.path.join(tmp, "shipped"))[0]}
        for seed in seeds:
            generator = torch.Generator().manual_seed(seed)
            checkpoint = os.path.join(tmp, f"rotated-{seed}")
            model = rotate(copy.deepcopy(original), generator)
            model.config.tie_word_embeddings = False
            model.hf_quantizer, model.is_quantized = None, False  # loaded from GGUF; saved as plain float32
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            model.save_pretrained(checkpoint)
            hf_tokenizer.save_pretrained(checkpoint)
            down_rotation = orthogonal(64, generator).numpy()
            models[f"integer GEMM per row, rotated (seed {seed})"] = quality.load_graph(
                checkpoint, {}, "int8", os.path.join(tmp, f"graph-{seed}"), rotated_integer_gemm(down_rotation))[0]
        rows = {}
        for name, model in models.items():
            ppl = quality.perplexity(model, ids)
            rows[name] = [f"{ppl:.3f} ({100 * (ppl / reference_ppl - 1):+.2f}%)",
                          str(sum(a == b for a, b in zip(quality.greedy(model, prompts), reference)))]
            print(name, rows[name], flush=True)
        for batch in (1, 16):
            times = {name: [] for name in models}
            for _ in range(rounds):
                for name, model in models.items():
                    times[name].append(quality.step_ms(model, batch))
            for name in models:
                rows[name].append(f"{statistics.median(times[name]):.2f} ms")
    print(f"\n| ONNX Runtime, 8 bits | perplexity (float32 {reference_ppl:.3f}) | greedy = float32 (of 20) | step, 1 row | step, 16 rows |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {' | '.join(row)} |")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--onnx", action="store_true", help="then the real kernels (see above)")
    parser.add_argument("--rounds", type=int, default=5, help="--onnx: alternations of the step timings")
    args = parser.parse_args(argv)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir(), gguf_file=SMOLLM2_GGUF)
    with open(quality.PASSAGE, encoding="utf-8") as f:
        ids = tokenizer(f.read(), return_tensors="pt")["input_ids"]
    original = load()
    base = perplexity(original, ids)
    print(f"float32: {base:.3f} over {ids.shape[1]} tokens", flush=True)

    def rotated(seed: int, down_block: int = 0):
        generator = torch.Generator().manual_seed(seed)
        model = rotate(copy.deepcopy(original), generator)
        return rotate_down_input(model, down_block, generator) if down_block else model

    print(f"float32, rotated (seed {args.seeds[0]}): {perplexity(rotated(args.seeds[0]), ids):.3f}", flush=True)
    down = original.config.intermediate_size
    variants = {
        "blocks of 32 (q8_0's and MatMulNBits' grain)": lambda s: quantize(copy.deepcopy(original), 32),
        "per row": lambda s: quantize(copy.deepcopy(original)),
        "per row, rotated": lambda s: quantize(rotated(s)),
        "per row, rotated, down's input in blocks of 64": lambda s: quantize(rotated(s, 64)),
        f"per row, rotated, down's input whole ({down})": lambda s: quantize(rotated(s, down)),
    }
    print("\n| 8-bit products | perplexity vs float32, per seed | median |")
    print("|---|---|---|")
    for name, make in variants.items():
        seeds = args.seeds if "rotated" in name else args.seeds[:1]  # nothing random without a rotation
        changes = [100 * (perplexity(make(seed), ids) / base - 1) for seed in seeds]
        print(f"| {name} | {' / '.join(f'{c:+.2f}%' for c in changes)} | {statistics.median(changes):+.2f}% |", flush=True)
    if args.onnx:
        onnx_table(original, tokenizer, args.seeds, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
