"""One forward pass for the decoding rows and a joining prompt's chunk, against two (the decode step,
then the chunk alone): what `engine/batch.py`'s TOGETHER_MAX_TOKENS is chosen from.

    python bench/merged_pass.py --model random --chunks 16 32 64 128 256 --past 300

`--model`: random | smollm2 | llama-3.2-1b | a model directory (devtools/bench_models.py), served as
the service serves it at QUANTIZE=int8 (its graph built and cached on first use); 8 decoding rows
`--past` positions in, one prompt of each chunk width. Medians of `--repeats` alternations,
milliseconds, one process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devtools.bench_models import prepare  # noqa: E402
from devtools.benchmark import CACHE  # noqa: E402
from textgen.model.kv_cache import KVCache  # noqa: E402
from textgen.model.loader import load_model  # noqa: E402
from textgen.settings import Settings  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random")
    parser.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    parser.add_argument("--past", type=int, default=300)
    parser.add_argument("--rows", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    chosen = prepare(args.model)
    settings = Settings.from_env(environ={"CACHE_DIR": CACHE, **chosen.service_env}, model_id=chosen.directory,
                                 model_backend="onnx", quantize="int8", threads=2)
    model = load_model(settings)[0]
    rng = np.random.default_rng(0)
    rows, past = args.rows, args.past
    for chunk in args.chunks:
        cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        cache.reserve(rows + 1, past + chunk + 8)
        model.forward(rng.integers(0, model.vocab_size, (rows, past)), np.zeros(rows, np.int64), np.full(rows, past), cache, 0, False)
        prompt = rng.integers(0, model.vocab_size, chunk)

        def merged():
            tokens = np.zeros((rows + 1, chunk), np.int64)
            tokens[:rows, 0], tokens[rows] = 5, prompt
            index = np.array([i * chunk for i in range(rows)] + [rows * chunk + chunk - 1])
            model.forward(tokens, np.array([past] * rows + [0]), np.array([1] * rows + [chunk]), cache, 0, True, index)

        def apart():
            model.forward(np.full((rows, 1), 5), np.full(rows, past), np.ones(rows, np.int64), cache, 0, True)
            model.forward(prompt[None, :], np.zeros(1, np.int64), np.array([chunk]), cache, rows, True)

        times = {"one pass": [], "two passes": []}
        for _ in range(args.repeats + 1):
            for name, run in (("one pass", merged), ("two passes", apart)):
                began = time.perf_counter()
                run()
                times[name].append(time.perf_counter() - began)
        one, two = (statistics.median(times[name][1:]) * 1e3 for name in times)
        print(f"chunk {chunk:4d}: one pass {one:6.1f} ms, two passes {two:6.1f} ms ({one / two:.2f}x); load {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
