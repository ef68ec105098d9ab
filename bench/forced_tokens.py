"""Benchmark: a JSON schema with fixed keys, constrained against free text, on one server (issue 27's
"forced tokens in one step"). What the grammar leaves one way to write (keys, quotes, colons, commas,
an enum's rest) is taken without a decode step of its own, so constrained tokens/s can pass free ones.

    python bench/forced_tokens.py                              # DistilGPT2's shape (random weights), 1 and 8 clients
    python bench/forced_tokens.py --baseline /tmp/base         # the same against an older checkout (git worktree add /tmp/base COMMIT)

Free: /generate, greedy, `--max-new-tokens` tokens of text. Constrained: /generate, greedy, the schema
below (enums, bounded integers, booleans: every answer ends when its object closes). Tokens are those
the server reports it generated (`details.generated_tokens`), forced ones included. The two kinds take
turns within each pass; medians over `--passes`. Writes bench/results/forced_tokens.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.bench_models import prepare  # noqa: E402
from devtools.benchmark import CACHE, PROMPTS, RESULTS, code_version, launch, machine, service_cmd, service_env  # noqa: E402
from devtools.servers import free_port  # noqa: E402

# A record with fixed keys, as an API's structured output or a tool's arguments look.
SCHEMA = {
    "type": "object",
    "properties": {
        "species": {"enum": ["cat", "dog", "rabbit", "parrot"]},
        "age_years": {"type": "integer", "minimum": 0, "maximum": 30},
        "is_vaccinated": {"type": "boolean"},
        "temperament": {"enum": ["calm", "playful", "shy", "curious"]},
        "weight_kg": {"type": "integer", "minimum": 1, "maximum": 90},
        "indoor_only": {"type": "boolean"},
    },
    "required": ["species", "age_years", "is_vaccinated", "temperament", "weight_kg", "indoor_only"],
}


def generate(url: str, prompt: str, max_new_tokens: int, constrained: bool) -> int:
    parameters = {"max_new_tokens": max_new_tokens, "do_sample": False, "details": True}
    if constrained:
        parameters["grammar"] = {"type": "json", "value": SCHEMA}
    response = requests.post(url + "/generate", json={"inputs": prompt, "parameters": parameters}, timeout=600)
    response.raise_for_status()
    return response.json()["details"]["generated_tokens"]


def level(url: str, clients: int, rounds: int, max_new_tokens: int, constrained: bool) -> float:
    def client(i: int) -> int:
        return sum(generate(url, PROMPTS[(i + r) % len(PROMPTS)], max_new_tokens, constrained) for r in range(rounds))

    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        tokens = sum(pool.map(client, range(clients)))
        return tokens / (time.perf_counter() - started)


def measure(root: str, cache: str, args) -> dict:
    """Tokens/s of each kind at each level, medians over the passes, on a server run from `root`."""
    model = prepare("random")
    port = free_port()
    server = launch(service_cmd(), port, service_env(model.directory, port, MODEL_BACKEND="onnx", QUANTIZE="int8",
                                                     CACHE_DIR=cache), 1200, cwd=root)
    kinds = ("free", "constrained")
    measured = {(kind, c): [] for kind in kinds for c in args.clients}
    try:
        for kind in kinds:  # warm-up (the grammar compiler's tokenizer is built on the first grammar)
            generate(server.url, PROMPTS[0], 4, kind == "constrained")
        for index in range(args.passes):
            for clients in args.clients:
                for kind in kinds if index % 2 == 0 else kinds[::-1]:
                    rate = level(server.url, clients, args.rounds, args.max_new_tokens, kind == "constrained")
                    measured[(kind, clients)].append(rate)
            print(f"{root}: pass {index + 1}/{args.passes} done", flush=True)
    finally:
        server.stop()
    return {key: statistics.median(values) for key, values in measured.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3, help="requests per client per level")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="free text's length; the schema's answers end by themselves")
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--baseline", metavar="CHECKOUT", help="also measure this checkout (its own graph cache)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "forced_tokens.json"))
    args = parser.parse_args(argv)

    runs = {"current": measure(ROOT, CACHE, args)}
    if args.baseline:
        runs["baseline"] = measure(args.baseline, os.path.join(CACHE, "baseline"), args)
    rows = []
    for name, rates in runs.items():
        for clients in args.clients:
            free, constrained = rates[("free", clients)], rates[("constrained", clients)]
            rows.append({"code": name, "clients": clients, "free_tokens_per_s": round(free, 1),
                         "constrained_tokens_per_s": round(constrained, 1), "constrained_vs_free": round(constrained / free, 2)})
    print(f"\n{'code':9} {'clients':>7} {'free tok/s':>11} {'schema tok/s':>13} {'schema/free':>12}")
    for row in rows:
        print(f"{row['code']:9} {row['clients']:>7} {row['free_tokens_per_s']:>11} {row['constrained_tokens_per_s']:>13}"
              f" {row['constrained_vs_free']:>12}")
    with open(args.out, "w") as f:
        json.dump({"machine": machine(), "code": code_version(), "schema": SCHEMA, "args": vars(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
