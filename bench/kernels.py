"""One decode step of DistilGPT2's shape (native GPT-2 module) with each kind of weights.

    python bench/kernels.py [--batches 1 2 4 8 16] [--threads N]

For each batch size it prints milliseconds per decode step (median of 15, the KV cache holding a
40-token prompt): float32 with `F.linear`, float32 with the skinny-matmul rewrite
(model/torch_backend/skinny.py), and int8 (model/torch_backend/int8.py); same process, same weights. The
model forward only: no sampling, no HTTP.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.benchmark import prepare_model  # noqa: E402
from devtools.step_timing import decode_step_times  # noqa: E402
from textgen.model.loader import load_model  # noqa: E402
from textgen.settings import Settings  # noqa: E402

KINDS = {
    "float32 F.linear": dict(quantize="none", skinny_matmul=False),
    "float32 skinny": dict(quantize="none", skinny_matmul=True),
    "int8": dict(quantize="int8"),
}


def step_ms(model, batch: int) -> float:
    return statistics.median(decode_step_times(model, batch, prompt=40, steps=15))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: usable CPUs)")
    args = parser.parse_args(argv)
    model_dir, origin = prepare_model(args.model)
    models = {
        name: load_model(
            Settings.from_env(environ={}, model_id=model_dir, model_backend="torch", threads=args.threads, **kind)
        )[0]
        for name, kind in KINDS.items()
    }
    threads = next(iter(models.values())).threads
    print(f"model: {origin}; torch threads: {threads}")
    print("| batch | " + " | ".join(f"{name} (ms/step)" for name in KINDS) + " | int8 speed-up |")
    print("|---|" + "---|" * (len(KINDS) + 1))
    for batch in args.batches:
        ms = [step_ms(model, batch) for model in models.values()]
        print(f"| {batch} | " + " | ".join(f"{m:.1f}" for m in ms) + f" | {ms[0] / ms[-1]:.1f}x |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
