"""Benchmark: the same server's protocols side by side. Tokens/s of Ollama's and Anthropic's routes (and
OpenAI's chat) against /v1/completions, at the same concurrency, on one server, in one run.

    python bench/routes.py                          # DistilGPT2's shape (random weights), 8 clients
    python bench/routes.py --clients 1 8 --passes 5 --max-new-tokens 64

Every route streams (as its clients do) the same tokens: /v1/chat/completions, /api/chat and
/v1/messages send each prompt as a user turn, which the server renders with ChatML (the model, which has
no template, gets one); /v1/completions and /api/generate (`raw`) send that rendered text as their
prompt, so that every route prefills the same tokens (GPT-2's tokenizer spells ChatML's tags in ~20
tokens: without this the chat routes would prefill three times as much). Random weights
almost never sample end-of-text, so every request generates its `--max-new-tokens`; tokens are what
each route reports. The routes take turns within each pass (each pass in a new order); a route's
figure against /v1/completions is the median over the passes of its ratio within each pass, so that
the machine's drift between passes falls on all of them alike. Writes
bench/results/routes.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.bench_models import prepare  # noqa: E402
from devtools.benchmark import CACHE, PROMPTS, RESULTS, code_version, launch, machine, service_cmd, service_env  # noqa: E402
from devtools.models import CHATML, add_chat_template  # noqa: E402
from devtools.servers import free_port  # noqa: E402


def _lines(response, prefix: bytes = b"data: "):
    for line in response.iter_lines():
        if line.startswith(prefix) and line != b"data: [DONE]":
            yield json.loads(line[len(prefix):])


def as_chatml(prompt: str) -> str:
    """The prompt as a user turn, rendered as the server renders it with CHATML."""
    return f"<|im_start|>user\n{prompt}<|im_end|>\n<|im_start|>assistant\n"


def completions(url, prompt, n):
    body = {"model": "m", "prompt": as_chatml(prompt), "max_tokens": n, "stream": True, "stream_options": {"include_usage": True}}
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=600) as response:
        return [e for e in _lines(response) if e.get("usage")][-1]["usage"]["completion_tokens"]


def chat(url, prompt, n):
    body = {"model": "m", "messages": [{"role": "user", "content": prompt}], "max_tokens": n, "stream": True,
            "stream_options": {"include_usage": True}}
    with requests.post(url + "/v1/chat/completions", json=body, stream=True, timeout=600) as response:
        return [e for e in _lines(response) if e.get("usage")][-1]["usage"]["completion_tokens"]


def ollama_generate(url, prompt, n):
    body = {"model": "model", "prompt": as_chatml(prompt), "raw": True, "options": {"num_predict": n}}
    with requests.post(url + "/api/generate", json=body, stream=True, timeout=600) as response:
        return [e for e in _lines(response, b"") if e.get("done")][-1]["eval_count"]


def ollama_chat(url, prompt, n):
    body = {"model": "model", "messages": [{"role": "user", "content": prompt}], "options": {"num_predict": n}}
    with requests.post(url + "/api/chat", json=body, stream=True, timeout=600) as response:
        return [e for e in _lines(response, b"") if e.get("done")][-1]["eval_count"]


def anthropic_messages(url, prompt, n):
    body = {"model": "m", "max_tokens": n, "messages": [{"role": "user", "content": prompt}], "stream": True}
    with requests.post(url + "/v1/messages", json=body, stream=True, timeout=600) as response:
        return [e for e in _lines(response) if e["type"] == "message_delta"][-1]["usage"]["output_tokens"]


ROUTES = {"/v1/completions": completions, "/api/generate": ollama_generate, "/v1/messages": anthropic_messages,
          "/api/chat": ollama_chat, "/v1/chat/completions": chat}


def level(url: str, route, clients: int, rounds: int, n: int) -> float:
    """Aggregate tokens/s of `clients` clients each sending `rounds` requests back to back."""
    def client(i: int) -> int:
        return sum(route(url, PROMPTS[(i + r) % len(PROMPTS)], n) for r in range(rounds))

    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        tokens = sum(pool.map(client, range(clients)))
        return tokens / (time.perf_counter() - started)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, nargs="+", default=[8])
    parser.add_argument("--rounds", type=int, default=3, help="requests per client per level")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--passes", type=int, default=5)
    parser.add_argument("--out", default=os.path.join(RESULTS, "routes.json"))
    args = parser.parse_args(argv)

    model = prepare("random")
    chat_dir = os.path.join(CACHE, "random-chatml")
    if not os.path.isdir(chat_dir):
        shutil.copytree(model.directory, chat_dir)
        add_chat_template(chat_dir, CHATML)
    port = free_port()
    server = launch(service_cmd(), port, service_env(chat_dir, port, MODEL_BACKEND="onnx", QUANTIZE="int8",
                                                     SERVED_MODEL_NAME="model", CACHE_DIR=CACHE), 1200)
    measured = {(route, c): [] for route in ROUTES for c in args.clients}
    try:
        for name, route in ROUTES.items():  # warm-up: each route's first requests (imports, grammar-free paths)
            route(server.url, PROMPTS[0], 4)
        for index in range(args.passes):
            order = list(ROUTES)[index % len(ROUTES):] + list(ROUTES)[: index % len(ROUTES)]
            for clients in args.clients:
                for name in order:
                    measured[(name, clients)].append(level(server.url, ROUTES[name], clients, args.rounds, args.max_new_tokens))
            print(f"pass {index + 1}/{args.passes} done", flush=True)
    finally:
        server.stop()

    rows = []
    for clients in args.clients:
        base = measured[("/v1/completions", clients)]
        for name in ROUTES:
            rates = measured[(name, clients)]
            # Each pass's ratio to /v1/completions in the same pass, then their median: the machine's
            # drift between passes cancels out.
            ratio = statistics.median(rate / b for rate, b in zip(rates, base))
            rows.append({"route": name, "clients": clients, "tokens_per_s": round(statistics.median(rates), 1),
                         "vs_completions": round(ratio, 3), "passes": [round(x, 1) for x in rates]})
    print(f"\n{'route':24} {'clients':>7} {'tokens/s':>9} {'vs /v1/completions':>19}")
    for row in rows:
        print(f"{row['route']:24} {row['clients']:>7} {row['tokens_per_s']:>9} {row['vs_completions']:>19}")
    with open(args.out, "w") as f:
        json.dump({"machine": machine(), "code": code_version(), "model": model.origin + ", ChatML template added",
                   "args": vars(args), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
