"""Embeddings must not stall generation: the gaps between tokens of running streams while embedding
requests arrive, and what the embeddings themselves cost.

    python bench/embedding_gap.py                    # DistilGPT2's shape (random weights offline), int8
    python bench/embedding_gap.py --quantize none --rounds 5

The service is started once (the default backend). Each round: `--streams` clients stream tokens from
short prompts (POST /generate_stream); once they flow, `--clients` other clients each send
`--requests` POST /v1/embeddings of `--inputs` texts of about `--tokens` tokens. The window runs from
the first embedding request sent to the last one answered; every gap between two consecutive tokens of a
stream that overlaps it counts, against the gaps before it (the streams alone). Prints one JSON object:
p50 / p99 / max gaps in and before the window, their ratio, and the embedded tokens per second.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.benchmark import (  # noqa: E402
    PROMPTS, cpu_snapshot, launch, others_cpu_share, percentile, prepare_model, service_cmd, service_env, token_gaps,
)
from devtools.servers import free_port  # noqa: E402

TEXT = ("The history of the printing press shows how a single machine changed the way people shared ideas. "
        "Before it, books were copied by hand, slowly and at great cost, and few people could read them. ")


def stream(url: str, prompt: str, stop: threading.Event, arrivals: list) -> None:
    """One long greedy stream (as many tokens as the server allows), each token's arrival time appended;
    hangs up once `stop` is set."""
    longest = requests.get(url + "/info", timeout=10).json()["max_new_tokens_limit"]
    body = {"inputs": prompt, "parameters": {"max_new_tokens": longest, "do_sample": False}}
    with requests.post(url + "/generate_stream", json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if line.startswith(b"data:"):
                arrivals.append(time.perf_counter())
                if stop.is_set():
                    return


def embed(url: str, texts: list, requests_: int) -> int:
    tokens = 0
    for _ in range(requests_):
        answer = requests.post(url + "/v1/embeddings", json={"input": texts}, timeout=600)
        answer.raise_for_status()
        tokens += answer.json()["usage"]["prompt_tokens"]
    return tokens


def one_round(url: str, texts: list, args) -> dict:
    stop, arrivals = threading.Event(), [[] for _ in range(args.streams)]
    with ThreadPoolExecutor(args.streams + args.clients) as pool:
        runs = [pool.submit(stream, url, PROMPTS[i % len(PROMPTS)], stop, arrivals[i]) for i in range(args.streams)]
        while any(len(a) < 20 for a in arrivals):
            for f in runs:
                if f.done():
                    f.result()  # its error; a clean end this early: too few tokens
                    raise RuntimeError("a stream ended before the embeddings were sent")
            time.sleep(0.005)
        start = time.perf_counter()
        tokens = sum(f.result() for f in [pool.submit(embed, url, texts, args.requests) for _ in range(args.clients)])
        end = time.perf_counter()
        time.sleep(1.0)
        stop.set()
        for f in runs:
            f.result()
    inside, before = token_gaps(arrivals, (start, end))
    return {"inside": inside, "before": before, "tokens": tokens, "seconds": end - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random", help="a model directory, 'auto' or 'random' (DistilGPT2's shape)")
    parser.add_argument("--quantize", default="int8")
    parser.add_argument("--streams", type=int, default=4)
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--requests", type=int, default=4)
    parser.add_argument("--inputs", type=int, default=16)
    parser.add_argument("--tokens", type=int, default=120)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    model_dir, origin = prepare_model(args.model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    ids = tokenizer(TEXT * (args.tokens // 30 + 2))["input_ids"]
    texts = [f"{i}. " + tokenizer.decode(ids[: args.tokens - 3]) for i in range(args.inputs)]
    port = free_port()
    server = launch(service_cmd(), port, service_env(model_dir, port, QUANTIZE=args.quantize))
    try:
        embed(server.url, texts[:2], 1)  # warm-up
        ours = server.rss.pids() | {os.getpid()}
        cpu, started = cpu_snapshot(ours), time.perf_counter()
        rounds = [one_round(server.url, texts, args) for _ in range(args.rounds)]
        others = others_cpu_share(cpu, cpu_snapshot(ours), time.perf_counter() - started)
    finally:
        server.stop()
    inside = [g for r in rounds for g in r["inside"]]
    before = [g for r in rounds for g in r["before"]]
    print(json.dumps({
        "model": origin, "quantize": args.quantize, "streams": args.streams,
        "embedding_clients": args.clients, "inputs_per_request": args.inputs, "tokens_per_input": args.tokens,
        "p50_gap_before_ms": round(statistics.median(before) * 1000, 1),
        "p50_gap_in_window_ms": round(statistics.median(inside) * 1000, 1),
        "p99_gap_in_window_ms": round(percentile(inside, 99) * 1000, 1),
        "max_gap_in_window_ms": round(max(inside) * 1000, 1),
        "max_gap_before_ms": round(max(before) * 1000, 1),
        "p50_gap_ratio": round(statistics.median(inside) / statistics.median(before), 2),
        "embedded_tokens_per_s": round(sum(r["tokens"] for r in rounds) / sum(r["seconds"] for r in rounds)),
        "others_cpu_share": round(others, 2),
    }, indent=1))


if __name__ == "__main__":
    main()
