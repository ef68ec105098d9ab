"""One decode step of DistilGPT2's shape, with and without the skinny-matmul rewrite (engine/skinny.py).

    python bench/kernels.py [--batches 1 2 4 8 16]

Prints milliseconds per step (median of 15) for each batch size; same process, same weights.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import torch
from transformers import AutoModelForCausalLM

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench.run import prepare_model  # noqa: E402
from textgen.model.loader import configure_threads  # noqa: E402
from textgen.engine.skinny import use_skinny_matmuls  # noqa: E402


def step_ms(model, batch: int, prompt_len: int = 40, steps: int = 15) -> float:
    with torch.inference_mode():
        ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len))
        cache = model(input_ids=ids, use_cache=True).past_key_values
        times = []
        for i in range(steps):
            mask = torch.ones(batch, prompt_len + i + 1, dtype=torch.long)
            started = time.perf_counter()
            model(input_ids=ids[:, :1], attention_mask=mask, past_key_values=cache, use_cache=True)
            times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="random")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    args = parser.parse_args(argv)
    model_dir, origin = prepare_model(args.model)
    threads = configure_threads(None)
    plain = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    skinny = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    use_skinny_matmuls(skinny)
    print(f"model: {origin}; torch threads: {threads}")
    print("| batch | F.linear (ms/step) | skinny (ms/step) | speed-up |")
    print("|---|---|---|---|")
    for batch in args.batches:
        a, b = step_ms(plain, batch), step_ms(skinny, batch)
        print(f"| {batch} | {a:.1f} | {b:.1f} | {a / b:.2f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
