"""Prefill must not freeze the batch: the gaps between tokens of running streams while long prompts arrive.

    python bench/prefill_gap.py                      # int8 and fp32, before and after, 3 bursts each
    python bench/prefill_gap.py --modes int8 --bursts 5

For each weight mode the service is started twice: "before" with PREFILL_CHUNK_TOKENS=100000 (a prompt
is prefilled in one forward pass, as before chunked prefill) and "after" with the default chunk (256).
Each burst: 4 clients stream tokens from short prompts (POST /generate_stream); once they all flow,
4 other clients send ~900-token prompts at once, each asking for a few tokens. The window runs from the
first long prompt sent to the last one answered; every gap between two consecutive tokens of a running
stream that overlaps the window counts. Reports p50/p99/max of those gaps (and the gaps before the
window, for scale) and the long prompts' own time to first token, which chunking may lengthen.
Writes bench/results/prefill_gap.json and prints a markdown table.
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
    PROMPTS,
    RESULTS,
    Server,
    code_version,
    cpu_snapshot,
    launch,
    machine,
    others_cpu_share,
    percentile,
    prepare_model,
    service_cmd,
    service_env,
    token_gaps,
    wait_until_quiet,
)
from devtools.servers import free_port  # noqa: E402

MODES = {"int8": "int8", "fp32": "none"}  # label -> QUANTIZE
# "before": a chunk larger than any prompt, so each prompt (and a group of them) is one forward pass.
ONE_PASS = 100000
TEXT = (
    "The history of the printing press shows how a single machine changed the way people shared ideas. "
    "Before it, books were copied by hand, slowly and at great cost, and few people could read them. "
    "Within fifty years presses were working in hundreds of towns, and pamphlets, maps and newspapers "
    "spread news and arguments faster than any ruler could control. "
)


def long_prompt(tokenizer, tokens: int, index: int) -> str:
    """English text cut to exactly `tokens` tokens; each client's differs at the start."""
    text = f"Report {index}. " + TEXT * (tokens // 40 + 2)
    return tokenizer.decode(tokenizer(text)["input_ids"][:tokens])


def stream(url: str, prompt: str, max_new_tokens: int, stop: threading.Event, arrivals: list) -> dict:
    """Stream one generation, appending each token event's arrival time; hang up once `stop` is set
    (the service then cancels the request) so the streams last exactly as long as the experiment."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "details": True}}
    started = time.perf_counter()
    details = None
    with requests.post(url + "/generate_stream", json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data:"):
                continue
            arrivals.append(time.perf_counter())
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event)
            details = event.get("details") or details
            if stop.is_set():
                break
    return {"started": started, "finished": time.perf_counter(), "details": details}


def burst(url: str, prompts: list, args) -> dict:
    """Streams flowing, then the long prompts at once; the arrival times and the window's bounds."""
    stop = threading.Event()
    arrivals = [[] for _ in range(args.streams)]
    with ThreadPoolExecutor(args.streams + len(prompts)) as pool:
        runs = [
            pool.submit(stream, url, PROMPTS[i % len(PROMPTS)], args.stream_tokens, stop, arrivals[i])
            for i in range(args.streams)
        ]
        _wait_flowing(arrivals, runs, args.flowing_tokens)
        window_start = time.perf_counter()
        long_arrivals = [[] for _ in prompts]
        longs = [
            pool.submit(stream, url, p, args.long_new_tokens, threading.Event(), a)
            for p, a in zip(prompts, long_arrivals)
        ]
        long_results = [f.result() for f in longs]
        window_end = max(r["finished"] for r in long_results)
        time.sleep(args.tail)  # a little steady decoding after the window, then hang up
        stop.set()
        stream_results = [f.result() for f in runs]
    cut_short = sum(r["details"] is not None for r in stream_results)  # finished on their own: too few tokens
    return {
        "arrivals": arrivals,
        "window": (window_start, window_end),
        "long_ttft": [a[0] - r["started"] for a, r in zip(long_arrivals, long_results)],
        "long_prompt_tokens": [r["details"]["prompt_tokens"] for r in long_results],
        "streams_finished_early": cut_short,
    }


def _wait_flowing(arrivals, runs, tokens: int, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while any(len(a) < tokens for a in arrivals):
        for f in runs:
            if f.done():
                f.result()  # raises the stream's error; a clean end this early means too few tokens
                raise RuntimeError("a stream ended before the long prompts were sent")
        if time.monotonic() > deadline:
            raise TimeoutError("streams did not start")
        time.sleep(0.005)


def measure(model_dir: str, quantize: str, chunk: int, args) -> dict:
    port = free_port()
    settings = {"QUANTIZE": quantize, "PREFILL_CHUNK_TOKENS": str(chunk)}  # the default backend, as served
    server = launch(service_cmd(), port, service_env(model_dir, port, **settings))
    try:
        return _bursts(server, args)
    finally:
        server.stop()


def _bursts(server: Server, args) -> dict:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model_dir)
    prompts = [long_prompt(tokenizer, args.long_tokens, i) for i in range(args.long_clients)]
    # Warm-up: the first pass at a new width allocates; neither side of the comparison should pay it.
    stream(server.url, prompts[0], 2, threading.Event(), [])
    stream(server.url, PROMPTS[0], 8, threading.Event(), [])
    inside, before, long_ttft, prompt_tokens, early, windows = [], [], [], set(), 0, []
    ours = server.rss.pids() | {os.getpid()}
    cpu_before, started = cpu_snapshot(ours), time.perf_counter()
    for _ in range(args.bursts):
        b = burst(server.url, prompts, args)
        i, s = token_gaps(b["arrivals"], b["window"])
        inside += i
        before += s
        long_ttft += b["long_ttft"]
        prompt_tokens.update(b["long_prompt_tokens"])
        early += b["streams_finished_early"]
        windows.append(b["window"][1] - b["window"][0])
        time.sleep(args.pause)  # let the cancelled streams leave the batch
    others = others_cpu_share(cpu_before, cpu_snapshot(ours), time.perf_counter() - started)
    return {
        "gaps_in_window": len(inside),
        "p50_gap_ms": round(statistics.median(inside) * 1000, 1),
        "p99_gap_ms": round(percentile(inside, 99) * 1000, 1),
        "max_gap_ms": round(max(inside) * 1000, 1),
        "p50_gap_before_window_ms": round(statistics.median(before) * 1000, 1),
        "p50_window_s": round(statistics.median(windows), 2),
        "p50_long_prompt_first_token_s": round(statistics.median(long_ttft), 2),
        "max_long_prompt_first_token_s": round(max(long_ttft), 2),
        "long_prompt_tokens": sorted(prompt_tokens),
        "streams_finished_before_hang_up": early,
        # The machine is shared: the share of its CPU time other processes took meanwhile.
        "others_cpu_share": round(others, 2),
    }


def table(rows) -> str:
    lines = [
        "| weights | prefill | p50 gap (ms) | p99 gap (ms) | max gap (ms) | p50 gap before (ms) | "
        "long prompts' first token p50 / max (s) | CPU used by other processes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['weights']} | {r['prefill']} | {r['p50_gap_ms']} | {r['p99_gap_ms']} | {r['max_gap_ms']} | "
            f"{r['p50_gap_before_window_ms']} | {r['p50_long_prompt_first_token_s']} / "
            f"{r['max_long_prompt_first_token_s']} | {r['others_cpu_share']:.0%} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random", help="auto | random | a model directory")
    parser.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    parser.add_argument("--bursts", type=int, default=3, help="bursts of long prompts per server")
    parser.add_argument("--streams", type=int, default=4, help="running streams whose gaps are measured")
    parser.add_argument("--stream-tokens", type=int, default=500,
                        help="ceiling only: the streams are hung up on once the long prompts are answered")
    parser.add_argument("--flowing-tokens", type=int, default=10, help="tokens each stream has before the burst")
    parser.add_argument("--long-clients", type=int, default=4)
    parser.add_argument("--long-tokens", type=int, default=900, help="prompt length in tokens")
    parser.add_argument("--long-new-tokens", type=int, default=4)
    parser.add_argument("--chunk-tokens", type=int, default=256, help="PREFILL_CHUNK_TOKENS after (the default)")
    parser.add_argument("--tail", type=float, default=0.3, help="seconds of streaming after the window")
    parser.add_argument("--pause", type=float, default=1.0, help="seconds between bursts")
    parser.add_argument("--quiet-below", type=float, default=0.15,
                        help="before each server, wait until other processes use less than this share of the CPUs")
    parser.add_argument("--quiet-timeout", type=float, default=600, help="seconds to wait for that (0: do not wait)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "prefill_gap.json"))
    args = parser.parse_args(argv)
    args.model_dir, origin = prepare_model(args.model)

    rows = []
    for weights in args.modes:
        for label, chunk in (("before: one pass", ONE_PASS), (f"after: chunks of {args.chunk_tokens}", args.chunk_tokens)):
            if args.quiet_timeout > 0:
                wait_until_quiet(args.quiet_below, args.quiet_timeout)
            # What this server runs (the working tree may change during a run), read just before it starts.
            row = {"weights": weights, "prefill": label, "prefill_chunk_tokens": chunk, "code": code_version(),
                   **measure(args.model_dir, MODES[weights], chunk, args)}
            print(json.dumps(row), flush=True)
            rows.append(row)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": origin,
        "machine": machine(),
        "setup": {k: getattr(args, k) for k in ("bursts", "streams", "long_clients", "long_tokens", "long_new_tokens")},
        "rows": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print()
    print(table(rows))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
