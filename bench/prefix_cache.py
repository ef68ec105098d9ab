"""The prefix cache: time to first token of requests sharing a 900-token prefix, cache on and off, in one run.

    python bench/prefix_cache.py                        # DistilGPT2's exact shape, random weights, int8
    python bench/prefix_cache.py --rounds 8 --burst 4 --quantize none

Two engines in this process on one loaded model (ONNX Runtime, QUANTIZE, THREADS): PREFIX_CACHE_TOKENS=0
(off) and the budget given (on). Every request is the same 900-token English prefix followed by a short
question of its own (so no two prompts are equal: only the prefix can be reused), streaming, a few new
tokens; time to first token is measured from `submit` to the first token event, as a client in the same
process would see it (no HTTP).

1. sequential: `--rounds` requests to each engine in turn (off, on; then on, off; ...), one at a time, after
   one warm-up request each (the "on" engine's warm-up is its miss: it stores the prefix). Median time to
   first token of each and their ratio, off / on.
2. burst: `--burst` requests submitted at once to each engine in turn; each 900-token prompt is prefilled
   alone (one prefill chunk holds no two), so without the cache the last waits for every prefill before
   its own. Median and slowest first token.
3. the copy alone: keys and values of an 896-token prefix copied from the store into a slot (what a hit
   costs), and copied from a slot into the store (what a miss adds), DistilGPT2's shape, median of 20.
4. memory: the blocks the cache holds after the run, in tokens and bytes (tokens x layers x 2 x kv_heads x
   head_dim x 4), and the budget's bytes.

The machine is shared: the load average before and after and the share of the CPUs other processes used
during 1 and 2 are recorded; the ratios within this one run are the result. Writes
bench/results/prefix_cache.json and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.benchmark import RESULTS, code_version, cpu_snapshot, machine, others_cpu_share, prepare_model  # noqa: E402
from textgen.engine import Engine, TokenEvent  # noqa: E402
from textgen.engine.prefix_cache import PrefixCache  # noqa: E402
from textgen.model.kv_cache import KVCache  # noqa: E402
from textgen.model.loader import load_model  # noqa: E402
from textgen.settings import Settings  # noqa: E402
from textgen.validation import validate_generate  # noqa: E402

TEXT = (
    "The history of the printing press shows how a single machine changed the way people shared ideas. "
    "Before it, books were copied by hand, slowly and at great cost, and few people could read them. "
    "Within fifty years presses were working in hundreds of towns, and pamphlets, maps and newspapers "
    "spread news and arguments faster than any ruler could control. "
)
CITIES = ["Lisbon", "Porto", "Recife", "Manaus", "Luanda", "Maputo", "Goa", "Macau", "Dili", "Praia", "Bissau", "Braga"]


def shared_prefix(tokenizer, tokens: int) -> str:
    """English text cut to exactly `tokens` tokens (checked again once the question is appended)."""
    ids = tokenizer(TEXT * (tokens // 60 + 2))["input_ids"][:tokens]
    return tokenizer.decode(ids)


def question(n: int) -> str:
    return f"\n\nQuestion {n}: what did this change for readers in {CITIES[n % len(CITIES)]}?\nAnswer:"


def first_token_seconds(engine: Engine, prompt: str, new_tokens: int) -> float:
    """Seconds from submit to the first token event of a streamed request (the rest is then drained)."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": new_tokens, "do_sample": False}}
    request = validate_generate(body, engine.settings, stream=True)
    started = time.perf_counter()
    first = None
    for event in engine.submit(request).events():
        if first is None and isinstance(event, TokenEvent):
            first = time.perf_counter() - started
    assert first is not None, "no token event"
    return first


def sequential(engines: dict, prefix: str, rounds: int, new_tokens: int, counter) -> dict:
    times = {name: [] for name in engines}
    warm = {name: first_token_seconds(engine, prefix + question(next(counter)), new_tokens) for name, engine in engines.items()}
    for r in range(rounds):
        for name in (list(engines) if r % 2 == 0 else list(reversed(engines))):
            times[name].append(first_token_seconds(engines[name], prefix + question(next(counter)), new_tokens))
            print(json.dumps({"sequential": name, "round": r, "ttft_s": round(times[name][-1], 4)}), flush=True)
    out = {name: {"warm_up_s": round(warm[name], 4), "ttft_s": [round(t, 4) for t in times[name]],
                  "median_s": round(statistics.median(times[name]), 4)} for name in engines}
    out["off_over_on"] = round(out["off"]["median_s"] / out["on"]["median_s"], 2)
    return out


def burst(engines: dict, prefix: str, clients: int, new_tokens: int, counter) -> dict:
    out = {}
    for name, engine in engines.items():
        prompts = [prefix + question(next(counter)) for _ in range(clients)]
        with ThreadPoolExecutor(clients) as pool:
            times = list(pool.map(lambda p: first_token_seconds(engine, p, new_tokens), prompts))
        out[name] = {"ttft_s": [round(t, 4) for t in sorted(times)], "median_s": round(statistics.median(times), 4),
                     "max_s": round(max(times), 4)}
        print(json.dumps({"burst": name, **out[name]}), flush=True)
    out["off_over_on_median"] = round(out["off"]["median_s"] / out["on"]["median_s"], 2)
    out["off_over_on_max"] = round(out["off"]["max_s"] / out["on"]["max_s"], 2)
    return out


def copy_cost(model, tokens: int = 896, repeats: int = 20) -> dict:
    """Milliseconds to copy a `tokens`-token prefix out of the store into a slot, and into the store."""
    cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
    cache.reserve(2, tokens + 16)
    for array in cache.keys + cache.values:
        array[...] = np.random.default_rng(0).standard_normal(array.shape, dtype=np.float32)
    store = PrefixCache(model.n_layers, model.n_kv_heads, model.head_dim, 4 * tokens)
    loads, stores = [], []
    for i in range(repeats + 2):
        prompt = [i] + [7] * tokens  # a new first token: every block is new, stored again (old ones evicted)
        started = time.perf_counter()
        store.store(prompt, cache, 0)
        stores.append(time.perf_counter() - started)
        blocks = store.match(prompt)
        started = time.perf_counter()
        store.load(blocks, cache, 1)
        loads.append(time.perf_counter() - started)
        assert len(blocks) * store.block_tokens == tokens
    return {"tokens": tokens, "load_ms": round(statistics.median(loads[2:]) * 1e3, 2),
            "store_ms": round(statistics.median(stores[2:]) * 1e3, 2)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random", help="'random' (DistilGPT2's shape), 'auto' or a directory")
    parser.add_argument("--quantize", default="int8", choices=["int8", "none"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prefix-tokens", type=int, default=900)
    parser.add_argument("--budget", type=int, default=Settings.prefix_cache_tokens, help="PREFIX_CACHE_TOKENS when on")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--burst", type=int, default=4, help="requests at once in the burst (0: none)")
    parser.add_argument("--new-tokens", type=int, default=4)
    parser.add_argument("--output", default=os.path.join(RESULTS, "prefix_cache.json"))
    args = parser.parse_args(argv)

    model_dir, origin = prepare_model(args.model)
    load_before = os.getloadavg()
    print(f"model: {model_dir} ({origin}); load average {load_before[0]:.2f}", flush=True)
    base = Settings.from_env(environ={}, model_id=model_dir, quantize=args.quantize, threads=args.threads,
                             max_batch_size=max(args.burst, 1), max_concurrent_requests=max(2 * args.burst, 4))
    model, tokenizer = load_model(base)
    prefix = shared_prefix(tokenizer, args.prefix_tokens)
    prompt_tokens = len(tokenizer(prefix + question(0))["input_ids"])
    assert tokenizer(prefix + question(0))["input_ids"][: args.prefix_tokens] == tokenizer(prefix)["input_ids"]
    engines = {
        "off": Engine(model, tokenizer, base.replace(prefix_cache_tokens=0)).start(),
        "on": Engine(model, tokenizer, base.replace(prefix_cache_tokens=args.budget)).start(),
    }
    counter = iter(range(10**6))
    try:
        before = cpu_snapshot({os.getpid()})
        started = time.monotonic()
        seq = sequential(engines, prefix, args.rounds, args.new_tokens, counter)
        bursts = burst(engines, prefix, args.burst, args.new_tokens, counter) if args.burst else {}
        others = others_cpu_share(before, cpu_snapshot({os.getpid()}), time.monotonic() - started)
        stats = engines["on"].prefix_cache_stats()
    finally:
        for engine in engines.values():
            engine.stop()
    copy = copy_cost(model, args.prefix_tokens // 16 * 16)
    per_token = model.n_layers * 2 * model.n_kv_heads * model.head_dim * 4
    memory = {"bytes_per_token": per_token, "held_tokens": stats["tokens"], "held_mib": round(stats["tokens"] * per_token / 2**20, 1),
              "budget_tokens": stats["capacity_tokens"], "budget_mib": round(stats["capacity_tokens"] * per_token / 2**20, 1)}
    load_after = os.getloadavg()
    result = {
        "model": origin, "quantize": args.quantize, "threads": args.threads, "prefix_tokens": args.prefix_tokens,
        "prompt_tokens": prompt_tokens, "new_tokens": args.new_tokens, "budget_tokens": args.budget,
        "load_average_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        "others_cpu_share": round(others, 3), "sequential": seq, "burst": bursts, "copy": copy,
        "prefix_cache_stats": stats, "memory": memory, "machine": machine(), "code": code_version(),
    }
    with open(args.output, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps({k: result[k] for k in ("sequential", "burst", "copy", "memory")}, indent=1))
    print(f"\nload average {load_before[0]:.2f} before, {load_after[0]:.2f} after; other processes used "
          f"{others:.0%} of the CPUs meanwhile")
    print("\n| requests sharing a 900-token prefix | cache off | cache on | off / on |\n|---|---|---|---|")
    print(f"| one at a time, median first token (s) | {seq['off']['median_s']} | {seq['on']['median_s']} | **{seq['off_over_on']}** |")
    if bursts:
        print(f"| {args.burst} at once, median / slowest first token (s) | {bursts['off']['median_s']} / {bursts['off']['max_s']} "
              f"| {bursts['on']['median_s']} / {bursts['on']['max_s']} | {bursts['off_over_on_median']} / {bursts['off_over_on_max']} |")
    print(f"\ncopy of {copy['tokens']} tokens: {copy['load_ms']} ms into a slot, {copy['store_ms']} ms into the store; "
          f"held {memory['held_tokens']} tokens = {memory['held_mib']} MiB of a {memory['budget_mib']} MiB budget")
    return 0


if __name__ == "__main__":
    sys.exit(main())
