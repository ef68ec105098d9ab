"""The engine loop's own cost, beside the model step it wraps and the service over HTTP, in one run.

    python bench/engine_overhead.py                       # DistilGPT2's exact shape, random weights, int8
    python bench/engine_overhead.py --rows 1 8 --tokens 100 --skip-http

1. loop: the engine in this process with the model replaced by one that returns fixed logits at once
   (`InstantModel`), so everything measured is the loop: scheduling, sampling, detokenizing, stop
   checks, events and the request threads that consume them (one per request, as HTTP threads are).
   Variants: blocking and streaming consumers, with stop sequences, with penalties, greedy, with a JSON
   schema (structured output: llguidance's mask per row and step). Reported per decode step and per
   token: wall microseconds and the engine thread's own CPU microseconds.
2. model: the real model's decode step alone (ONNX Runtime, QUANTIZE), at each batch size, with the
   average past of the generations below.
3. engine: the engine in this process with the real model, N streaming consumers: tokens/s; then, per N,
   free and JSON-schema-constrained generations in turn (`--grammar-rounds` pairs, one engine, so a
   change in the machine's load meanwhile hits both alike): the median tokens/s of each and their ratio,
   the cost per token of a constrained row over a free one (`--grammar-rounds 0` leaves it out).
4. http: the same over HTTP (gunicorn app:app, /generate_stream and /generate), N clients: tokens/s.
Then the issue's targets as ratios from this one run: loop cost / model step (<= 10% at 8 rows, <= 15% at
1), HTTP / in-process (>= 90% at 8 clients, >= 85% at 1), HTTP / (B / model step) (>= 75%), and the cost
per token of a constrained row over a free one with the real model (issue 19: <= 1.3 at 8 clients).
The machine is shared and noisy: the ratios within one run are the result, not the absolute figures.
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
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.benchmark import prepare_model  # noqa: E402
from devtools.servers import gunicorn_server  # noqa: E402
from textgen.engine import Engine  # noqa: E402
from textgen.engine.batch import Batch  # noqa: E402
from textgen.model.kv_cache import KVCache  # noqa: E402
from textgen.model.loader import load_model, load_tokenizer  # noqa: E402
from textgen.settings import Settings  # noqa: E402
from textgen.validation import validate_generate  # noqa: E402

PROMPT = "The history of the printing press shows"
# Structured output's variant: an array of at least 50 objects (with an enum, a number, a bounded string,
# an integer range), so that no request is complete before its `--tokens`, and every step of the JSON
# (keys, values, separators) comes round again and again.
ITEM = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 20},
        "kind": {"enum": ["cat", "dog", "bird", "fish"]},
        "score": {"type": "number"},
        "legs": {"type": "integer", "minimum": 0, "maximum": 8},
    },
    "required": ["name", "kind", "score", "legs"],
}
JSON_SCHEMA = {"type": "array", "items": ITEM, "minItems": 50}
GRAMMAR = {"grammar": {"type": "json", "value": JSON_SCHEMA}}
# Loop variants: (name, streaming consumers, extra request parameters).
VARIANTS = [
    ("blocking", False, {}),
    ("streaming", True, {}),
    ("streaming+stop", True, {"stop": ["\n\nQ:", "###", "THE END"]}),
    ("streaming+penalties", True, {"repetition_penalty": 1.2, "frequency_penalty": 0.5}),
    ("greedy blocking", False, {"do_sample": False}),
    ("streaming+json schema", True, GRAMMAR),
]


class InstantModel:
    """A `CausalLM` (textgen/model/contract.py) of the real model's shape whose forward costs nothing:
    fixed logits, random, so that top-k and sampling do their real work."""

    backend, dtype_name, threads = "instant", "float32", 1

    def __init__(self, shape_from, max_rows: int):
        self.n_layers, self.n_kv_heads, self.head_dim = 1, 1, 1  # the cache is never read: keep it tiny
        self.context, self.vocab_size = shape_from.context, shape_from.vocab_size
        self.eos_token_ids = set(shape_from.eos_token_ids)
        # A row of its own per slot, in one contiguous array as a runtime returns them: rows sharing
        # one vector would let sampling read the same cached 200 KB for every row and look cheaper.
        logits = np.random.default_rng(0).standard_normal((max_rows, self.vocab_size)).astype(np.float32) * 3
        logits[:, list(self.eos_token_ids)] = -np.inf  # every request runs to max_new_tokens
        self._logits = logits

    def forward(self, tokens, starts, counts, cache: KVCache, first_slot, want_logits, logit_index=None):
        if not want_logits:
            return None
        return self._logits[: len(tokens)] if logit_index is None else self._logits[np.asarray(logit_index) % len(self._logits)]


class StepCounter:
    """Engine listener: decode steps, their rows, and the engine thread's CPU time across them."""

    def __init__(self) -> None:
        self.steps = self.rows = 0
        self.first_cpu = self.last_cpu = None

    def on_decode_step(self, rows: int) -> None:
        cpu = time.thread_time()  # called on the engine thread: its own CPU time
        self.first_cpu = cpu if self.first_cpu is None else self.first_cpu
        self.last_cpu = cpu
        self.steps += 1
        self.rows += rows


def run_engine(engine: Engine, settings: Settings, rows: int, tokens: int, stream: bool, params: dict) -> dict:
    """`rows` requests at once, each consumed by its own thread; wall and engine-CPU time per step."""
    counter = StepCounter()
    engine.add_listener(counter)
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": tokens, "seed": 1, **params}}
    request = validate_generate(body, settings, stream=stream)

    def consume(handle) -> int:
        if not stream:
            return handle.result().generated_tokens
        for event in handle.events():
            if not hasattr(event, "id"):
                return event.generated_tokens
        raise AssertionError("no result")

    started = time.perf_counter()
    handles = [engine.submit(request) for _ in range(rows)]
    with ThreadPoolExecutor(rows) as pool:
        generated = sum(pool.map(consume, handles))
    wall = time.perf_counter() - started
    engine.remove_listener(counter)
    steps = max(counter.steps, 1)
    cpu = (counter.last_cpu - counter.first_cpu) / max(steps - 1, 1) if counter.first_cpu is not None else 0.0
    return {
        "rows": rows,
        "steps": counter.steps,
        "mean_rows": round(counter.rows / steps, 2),
        "tokens": generated,
        "us_per_step": round(wall / steps * 1e6, 1),
        "engine_cpu_us_per_step": round(cpu * 1e6, 1),
        "us_per_token": round(wall / max(generated, 1) * 1e6, 1),
        "tokens_per_s": round(generated / wall, 1),
    }


def loop_cost(model, tokenizer, settings: Settings, args) -> list:
    instant = InstantModel(model, settings.max_batch_size)  # as many rows as the engine may batch
    engine = Engine(instant, tokenizer, settings).start()
    results = []
    try:
        run_engine(engine, settings, 2, 20, True, {})  # warm-up
        run_engine(engine, settings, 2, 20, True, GRAMMAR)  # and llguidance's tokenizer, built on the first grammar
        for name, stream, params in VARIANTS:
            for rows in args.rows:
                row = {"variant": name, **run_engine(engine, settings, rows, args.tokens, stream, params)}
                print(json.dumps({"loop": row}), flush=True)
                results.append(row)
    finally:
        engine.stop()
    return results


def model_step(model, tokenizer, args, repeats: int = 40) -> dict:
    """The real model's decode step alone: median milliseconds at each batch size, with as many tokens
    cached as a request of this run has on average (its prompt and half its new tokens), so that
    `rows / step` is what the generations below could reach at most."""
    past = len(tokenizer(PROMPT)["input_ids"]) + args.tokens // 2
    figures = {}
    for rows in args.rows:
        batch = Batch(model, chunk_tokens=256)
        batch.add(list(range(rows)), [[100 + i] * past for i in range(rows)])
        while batch.prefill_step() is None:
            pass
        times = []
        for _ in range(repeats + 3):
            started = time.perf_counter()
            batch.step([200] * rows)
            times.append(time.perf_counter() - started)
        figures[rows] = round(statistics.median(times[3:]) * 1e3, 3)
        del batch
        print(json.dumps({"model_step_ms": {rows: figures[rows]}}), flush=True)
    return figures


def in_process(model, tokenizer, settings: Settings, args) -> dict:
    engine = Engine(model, tokenizer, settings).start()
    figures = {}
    try:
        run_engine(engine, settings, 1, 10, True, {})  # warm-up
        for clients in args.clients:
            row = run_engine(engine, settings, clients, args.tokens, True, {})
            figures[clients] = row
            print(json.dumps({"in_process": row}), flush=True)
    finally:
        engine.stop()
    return figures


def over_http(model_dir: str, args) -> dict:
    env = {"QUANTIZE": args.quantize, "THREADS": str(args.threads), "MAX_BATCH_SIZE": str(max(args.clients))}
    figures = {}
    with gunicorn_server(model_dir, **env) as (url, _):
        _http_level(url, 1, 10, True)  # warm-up
        for clients in args.clients:
            for stream in (True, False):
                row = _http_level(url, clients, args.tokens, stream)
                figures[(clients, stream)] = row
                print(json.dumps({"http": row}), flush=True)
    return figures


def _http_level(url: str, clients: int, tokens: int, stream: bool) -> dict:
    body = {"inputs": PROMPT, "parameters": {"max_new_tokens": tokens, "details": True}}

    def one(_) -> int:
        if not stream:
            answer = requests.post(url + "/generate", json=body, timeout=600)
            answer.raise_for_status()
            return answer.json()["details"]["generated_tokens"]
        with requests.post(url + "/generate_stream", json=body, stream=True, timeout=600) as answer:
            answer.raise_for_status()
            for line in answer.iter_lines():
                if line.startswith(b"data:"):
                    event = json.loads(line[5:])
                    if event.get("details"):
                        return event["details"]["generated_tokens"]
        raise AssertionError("stream ended without details")

    started = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        generated = sum(pool.map(one, range(clients)))
    wall = time.perf_counter() - started
    return {"clients": clients, "stream": stream, "tokens": generated, "tokens_per_s": round(generated / wall, 1)}


def grammar_cost(model, tokenizer, settings: Settings, args) -> dict:
    """Free and constrained runs alternated on one engine: the median of each, per number of clients."""
    engine = Engine(model, tokenizer, settings).start()
    figures = {}
    try:
        run_engine(engine, settings, 1, 10, True, GRAMMAR)  # warm-up (builds the grammar's tokenizer once)
        for clients in args.clients:
            free, constrained = [], []
            for _ in range(args.grammar_rounds):
                free.append(run_engine(engine, settings, clients, args.tokens, True, {}))
                constrained.append(run_engine(engine, settings, clients, args.tokens, True, GRAMMAR))
            row = {
                "clients": clients,
                "free_tokens_per_s": [r["tokens_per_s"] for r in free],
                "json_schema_tokens_per_s": [r["tokens_per_s"] for r in constrained],
                "json_schema_mean_rows": [r["mean_rows"] for r in constrained],
            }
            row["cost_per_token_ratio"] = round(
                statistics.median(row["free_tokens_per_s"]) / statistics.median(row["json_schema_tokens_per_s"]), 3
            )
            figures[clients] = row
            print(json.dumps({"grammar_cost": row}), flush=True)
    finally:
        engine.stop()
    return figures


def report(loop: list, steps: dict, engine: dict, http: dict, args, grammar: dict = None) -> dict:
    """The issue's targets as ratios of this run's figures."""
    default = {r["rows"]: r for r in loop if r["variant"] == "streaming"}
    targets = {}
    for clients, row in (grammar or {}).items():  # a constrained row's cost per token over a free one's
        targets[f"grammar_cost_per_token_{clients}_clients"] = row["cost_per_token_ratio"]
    constrained = {r["rows"]: r for r in loop if r["variant"] == "streaming+json schema"}
    for rows in args.rows:
        if rows in constrained and rows in default:
            targets[f"grammar_loop_us_per_step_{rows}_rows"] = round(
                constrained[rows]["us_per_step"] - default[rows]["us_per_step"], 1
            )
    for rows in args.rows:
        if rows in default and rows in steps:
            targets[f"loop_cost_share_{rows}_rows"] = round(default[rows]["us_per_step"] / (steps[rows] * 1e3), 3)
    for clients in args.clients:
        if clients in engine and (clients, True) in http:
            targets[f"http_over_in_process_{clients}_clients"] = round(
                http[(clients, True)]["tokens_per_s"] / engine[clients]["tokens_per_s"], 3
            )
        if clients in steps and (clients, True) in http:
            allowed = clients / (steps[clients] / 1e3)
            targets[f"http_over_model_bound_{clients}_clients"] = round(http[(clients, True)]["tokens_per_s"] / allowed, 3)
    return targets


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="random", help="'random' (DistilGPT2's shape) or a model directory")
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 8, 16], help="rows of the loop and model figures")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8], help="clients of the engine and HTTP figures")
    parser.add_argument("--tokens", type=int, default=200, help="tokens generated per request")
    parser.add_argument("--quantize", default="int8", choices=("int8", "none"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--grammar-rounds", type=int, default=3, help="free/constrained pairs per client count (0: none)")
    parser.add_argument("--output", help="write the figures as JSON here")
    args = parser.parse_args(argv)

    model_dir, origin = prepare_model(args.model)
    print(f"model: {model_dir} ({origin}); load average {os.getloadavg()[0]:.2f}", flush=True)
    settings = Settings.from_env(
        model_id=model_dir, quantize=args.quantize, threads=args.threads, max_batch_size=max(args.rows + args.clients),
        max_concurrent_requests=64, max_new_tokens_limit=max(512, args.tokens),
    )
    model, tokenizer = load_model(settings)
    loop = loop_cost(model, load_tokenizer(model_dir), settings, args)
    before = model_step(model, tokenizer, args)
    engine = in_process(model, tokenizer, settings, args)
    grammar = grammar_cost(model, tokenizer, settings, args) if args.grammar_rounds else {}
    http = {} if args.skip_http else over_http(model_dir, args)
    # Measured again after the engine and HTTP levels: the mean of both is the model's figure, and how far
    # they differ says how steady the machine was meanwhile.
    after = model_step(model, tokenizer, args)
    steps = {rows: round((before[rows] + after[rows]) / 2, 3) for rows in before}
    targets = report(loop, steps, engine, http, args, grammar)
    print(json.dumps({"targets": targets}, indent=1))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.output:
        with open(args.output, "w") as f:
            json.dump({"loop": loop, "model_step_ms": steps, "model_step_ms_before_after": [before, after],
                       "in_process": engine, "grammar_cost": grammar,
                       "http": [v for v in http.values()], "targets": targets}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
