"""Benchmark: this service against the seed's design (one `model.generate` per request), same model, one run.

    python bench/run.py                       # DistilGPT2 (real if the Hub answers, else its exact shape)
    python bench/run.py --clients 1 8 --rounds 3 --max-new-tokens 64

For 1, 4, 8 and 16 concurrent clients (each sending `--rounds` requests back to back) it measures
aggregate tokens/s, p50/p95 latency, time to first token (streaming; the naive design cannot stream, so
its first token arrives with the last) and the peak RSS of the server's process tree. Both servers run
under gunicorn, one after the other. Writes bench/results/latest.json and latest.png, prints a table.
The machine is shared and noisy: compare the ratios within one run, not absolute numbers across runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from scripts.make_model import fetch_gpt2_vocab, make_distilgpt2  # noqa: E402
from tests.servers import free_port, wait_healthy  # noqa: E402

SYSTEMS = ["service", "naive", "naive-threads"]
RESULTS = os.path.join(ROOT, "bench", "results")
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "textgen")
PROMPTS = [
    "Once upon a time",
    "The future of artificial intelligence is",
    "In a small village by the sea, an old fisherman",
    "Technology and finance meet where",
    "The best way to learn a new programming language is to",
    "Scientists announced today that",
    "My favourite recipe for a rainy afternoon",
    "The history of the printing press shows",
]


def prepare_model(choice: str) -> tuple[str, str]:
    """The model directory and how it was obtained: real DistilGPT2 when it can be downloaded."""
    if choice not in ("auto", "random"):
        return choice, "given"
    if choice == "auto":
        try:
            from huggingface_hub import snapshot_download

            return snapshot_download("distilbert/distilgpt2", allow_patterns=["*.json", "*.safetensors", "*.txt"]), "real"
        except Exception as exc:  # offline: no Hub here
            print(f"distilbert/distilgpt2 not downloadable ({type(exc).__name__}); using its exact shape, random weights")
    target = os.path.join(CACHE, "distilgpt2-random")
    if not os.path.exists(os.path.join(target, "model.safetensors")):
        try:
            vocab = fetch_gpt2_vocab(os.path.join(CACHE, "gpt2-vocab"))
        except Exception:
            vocab = None  # no npm: a trained tokenizer; the cost per token is the same
        make_distilgpt2(target, vocab)
    return target, "random weights, DistilGPT2 config"


class RssSampler:
    """Peak resident memory of a process and its children, sampled every 20 ms."""

    def __init__(self, pid: int):
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                procs = [self.process] + self.process.children(recursive=True)
                self.peak = max(self.peak, sum(p.memory_info().rss for p in procs))
            except psutil.Error:
                pass
            time.sleep(0.02)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def one_request(url: str, prompt: str, max_new_tokens: int, streaming: bool) -> dict:
    started = time.perf_counter()
    if not streaming:
        body = {"prompt": prompt, "max_new_tokens": max_new_tokens}
        response = requests.post(url + "/generate", json=body, timeout=600)
        response.raise_for_status()
        latency = time.perf_counter() - started
        return {"latency": latency, "ttft": latency, "tokens": response.json()["generated_tokens"]}
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "details": True}}
    ttft, tokens = None, 0
    with requests.post(url + "/generate_stream", json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data:"):
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event)
            if ttft is None:
                ttft = time.perf_counter() - started
            if event.get("details"):
                tokens = event["details"]["generated_tokens"]
    return {"latency": time.perf_counter() - started, "ttft": ttft, "tokens": tokens}


def run_level(url: str, pid: int, clients: int, rounds: int, max_new_tokens: int, streaming: bool) -> dict:
    def client(i: int) -> list:
        return [
            one_request(url, PROMPTS[(i + r) % len(PROMPTS)], max_new_tokens, streaming) for r in range(rounds)
        ]

    with RssSampler(pid) as rss, ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
        elapsed = time.perf_counter() - started
    latencies = sorted(r["latency"] for r in results)
    ttfts = sorted(r["ttft"] for r in results)
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": sum(r["tokens"] for r in results),
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(sum(r["tokens"] for r in results) / elapsed, 1),
        "p50_latency_s": round(statistics.median(latencies), 2),
        "p95_latency_s": round(_percentile(latencies, 95), 2),
        "p50_ttft_s": round(statistics.median(ttfts), 3),
        "peak_rss_mb": round(rss.peak / 2**20),
    }


def _percentile(sorted_values, q):
    index = (len(sorted_values) - 1) * q / 100
    low, high = int(index), min(int(index) + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (index - low)


def start(system: str, model_dir: str):
    port = free_port()
    env = {**os.environ, "MODEL_ID": model_dir, "PORT": str(port), "HF_HUB_OFFLINE": "1"}
    if system == "service":
        cmd = [sys.executable, "-m", "gunicorn", "app:app", "--access-logfile", "/dev/null"]
    else:
        # The seed's deployment: `gunicorn app:app` with gunicorn's defaults (one sync worker, so one
        # request at a time). "naive-threads" gives the same app 16 threads: concurrent model.generate calls.
        threads = "16" if system == "naive-threads" else "1"
        cmd = [sys.executable, "-m", "gunicorn", "bench.naive_app:app", "--bind", f"127.0.0.1:{port}",
               "--threads", threads, "--timeout", "600"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    wait_healthy(url, timeout=300, proc=proc)
    return proc, url


def measure(system: str, model_dir: str, levels, rounds, max_new_tokens) -> list:
    proc, url = start(system, model_dir)
    try:
        streaming = system == "service"
        one_request(url, PROMPTS[0], max_new_tokens, streaming)  # warm-up
        rows = []
        for clients in levels:
            row = run_level(url, proc.pid, clients, rounds, max_new_tokens, streaming)
            row["system"] = system
            print(json.dumps(row), flush=True)
            rows.append(row)
        return rows
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def table(rows) -> str:
    lines = [
        "| system | clients | tokens/s | p50 latency (s) | p95 latency (s) | p50 first token (s) | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ttft = f"{r['p50_ttft_s']:.3f}" if r["system"] == "service" else f"{r['p50_ttft_s']:.2f} (= latency)"
        lines.append(
            f"| {r['system']} | {r['clients']} | {r['tokens_per_s']} | {r['p50_latency_s']} | "
            f"{r['p95_latency_s']} | {ttft} | {r['peak_rss_mb']} |"
        )
    return "\n".join(lines)


def verdict(rows) -> dict:
    by = {(r["system"], r["clients"]): r for r in rows}
    out = {}
    if ("service", 8) in by and ("naive", 8) in by:
        s, n = by[("service", 8)], by[("naive", 8)]
        out["8 clients: tokens/s ratio (target >= 5x)"] = round(s["tokens_per_s"] / n["tokens_per_s"], 1)
        out["8 clients: service p95 <= naive p50"] = s["p95_latency_s"] <= n["p50_latency_s"]
        out["8 clients: service peak RSS <= naive's"] = s["peak_rss_mb"] <= n["peak_rss_mb"]
    if ("service", 8) in by and ("naive-threads", 8) in by:
        out["8 clients: tokens/s ratio vs naive-threads"] = round(
            by[("service", 8)]["tokens_per_s"] / by[("naive-threads", 8)]["tokens_per_s"], 1
        )
    if ("service", 1) in by and ("naive", 1) in by:
        out["1 client: tokens/s ratio (target >= 1x)"] = round(
            by[("service", 1)]["tokens_per_s"] / by[("naive", 1)]["tokens_per_s"], 2
        )
    return out


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for system, style in (("service", "o-"), ("naive", "s--"), ("naive-threads", "^:")):
        rs = [r for r in rows if r["system"] == system]
        x = [r["clients"] for r in rs]
        axes[0].plot(x, [r["tokens_per_s"] for r in rs], style, label=system)
        axes[1].plot(x, [r["p95_latency_s"] for r in rs], style, label=system)
        axes[2].plot(x, [r["peak_rss_mb"] for r in rs], style, label=system)
    for ax, title in zip(axes, ("aggregate tokens/s", "p95 latency (s)", "peak RSS (MB)")):
        ax.set_title(title)
        ax.set_xlabel("concurrent clients")
        ax.set_xscale("log", base=2)
        ax.set_xticks(sorted({r["clients"] for r in rows}), labels=[str(c) for c in sorted({r["clients"] for r in rows})])
        ax.grid(alpha=0.3)
        ax.legend()
    axes[0].set_ylim(bottom=0)
    axes[2].set_ylim(bottom=0)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="auto", help="auto | random | a model directory")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument(
        "--systems", nargs="+", default=SYSTEMS, choices=SYSTEMS, help="naive = the seed (one sync worker)"
    )
    parser.add_argument("--out", default=os.path.join(RESULTS, "latest"))
    args = parser.parse_args(argv)

    model_dir, origin = prepare_model(args.model)
    rows = []
    for system in args.systems:
        rows += measure(system, model_dir, args.clients, args.rounds, args.max_new_tokens)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": origin,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "machine": f"{platform.machine()}, {psutil.cpu_count()} CPUs, {round(psutil.virtual_memory().total / 2**30)} GiB",
        "rows": rows,
        "verdict": verdict(rows),
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, args.out + ".png")
    print()
    print(table(rows))
    print()
    for k, v in result["verdict"].items():
        print(f"- {k}: {v}")
    print(f"\nwrote {args.out}.json and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
