"""Sizing the Kubernetes pod (deploy/kubernetes/deployment.yaml) with the real image, run as the pod runs it.

    PATH=../shared/container/bin:$PATH python bench/pod_sizing.py --cpus 0.5 1 2 --memory 1g

For each CPU limit: the image (DistilGPT2's architecture, random weights, built as tests/test_render_simulation.py
builds it) runs with the Deployment's own environment (read from the manifest) and its securityContext
reproduced (read-only root filesystem with a tmpfs at /tmp for the emptyDir, user 10001, every capability
dropped, no privilege escalation), under `--cpus C --memory M --memory-swap M`. It measures:
- start-up: seconds from `docker run` returning to the first 200 from /health (what the startupProbe waits
  for), and what /tmp holds then (the emptyDir's size);
- throughput: CLIENTS clients sending requests of DEFAULT_MAX_NEW_TOKENS back to back (tokens/s, requests/s,
  p50/p95 latency, the largest textgen_queue_size seen): the per-replica service rate the HPA threshold uses;
- the worst case the limits allow: MAX_CONCURRENT_REQUESTS requests at once, each with a prompt truncated to
  MAX_TOTAL_TOKENS - MAX_NEW_TOKENS_LIMIT tokens and MAX_NEW_TOKENS_LIMIT new tokens (a full batch at the
  longest length, the rest queued): the longest request (queue wait included, what the grace period must
  outlast) and peak memory, as the processes' summed PSS and as the cgroup's peak usage (which also counts
  page cache, reclaimable before an OOM kill).
The machine is shared: before each start-up and each load it waits (up to --quiet-timeout) for other
processes to leave the CPUs mostly idle, and records the share of the CPUs they took during each load.
Prints one JSON line per CPU limit and writes bench/results/pod_sizing.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone

import requests
import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from devtools.benchmark import cpu_snapshot, others_cpu_share, wait_until_quiet  # noqa: E402
from devtools.images import build_distilgpt2_image, container_pids, docker, pss_mb, prune_dangling_images  # noqa: E402
from devtools.servers import ROOT, free_port  # noqa: E402

IMAGE = "gpt2-text-generator-k8s-sizing"
MANIFEST = os.path.join(ROOT, "deploy", "kubernetes", "deployment.yaml")


def manifest_environment() -> dict:
    with open(MANIFEST, encoding="utf-8") as f:
        deployment = yaml.safe_load(f)
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return {item["name"]: str(item["value"]) for item in container.get("env", []) if "value" in item}


def build_image() -> str:
    started = datetime.now(timezone.utc)
    with tempfile.TemporaryDirectory() as ctx:
        build_distilgpt2_image(IMAGE, ctx)
    prune_dangling_images(started)  # the image this build replaced, and older builder stages
    return IMAGE


class Watch:
    """Every 0.25 s during the loads: the summed PSS, the queue gauge from /metrics and how long /health
    and /ready take to answer (the probes' timeouts must exceed it under a full batch)."""

    def __init__(self, name: str, url: str):
        self.name, self.url, self.peak_pss = name, url, 0.0
        self.peak_queue, self.slowest_probe = 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak_pss = max(self.peak_pss, pss_mb(self.name))
                for line in requests.get(self.url + "/metrics", timeout=5).text.splitlines():
                    if line.startswith("textgen_queue_size "):
                        self.peak_queue = max(self.peak_queue, float(line.split()[1]))
                for path in ("/health", "/ready"):
                    began = time.monotonic()
                    ok = requests.get(self.url + path, timeout=10).status_code == 200
                    self.slowest_probe = max(self.slowest_probe, time.monotonic() - began if ok else float("inf"))
            except Exception:
                pass
            time.sleep(0.25)

    def take(self) -> dict:
        """The peaks since the last take (the PSS peak is kept for the whole run)."""
        peaks = {"peak_queue_size": self.peak_queue, "slowest_health_or_ready_s": round(self.slowest_probe, 3)}
        self.peak_queue, self.slowest_probe = 0.0, 0.0
        return peaks

    def stop(self):
        self._stop.set()
        self._thread.join()


def load(url: str, clients: int, requests_each: int, new_tokens: int, prompt: str, truncate=None):
    def one(i):
        parameters = {"max_new_tokens": new_tokens, "details": True, "do_sample": False}
        if truncate:
            parameters["truncate"] = truncate
        began = time.monotonic()
        response = requests.post(url + "/generate", json={"inputs": f"{i}: {prompt}", "parameters": parameters}, timeout=900)
        seconds = time.monotonic() - began
        body = response.json()
        tokens = body["details"]["generated_tokens"] if response.status_code == 200 else 0
        return response.status_code, tokens, seconds, float(response.headers.get("x-compute-time", "nan"))

    began = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        answers = list(pool.map(one, range(clients * requests_each)))
    elapsed = time.monotonic() - began
    latencies = sorted(a[2] for a in answers)
    q = statistics.quantiles(latencies, n=100, method="inclusive")
    return {
        "clients": clients,
        "requests": len(answers),
        # 503 = queue_timeout: waited QUEUE_TIMEOUT seconds for a batch slot
        "statuses": {str(code): sum(1 for a in answers if a[0] == code) for code in sorted({a[0] for a in answers})},
        "new_tokens_asked": new_tokens,
        "generated_tokens": sum(a[1] for a in answers),
        "seconds": round(elapsed, 2),
        "tokens_per_s": round(sum(a[1] for a in answers) / elapsed, 1),
        "requests_per_s": round(len(answers) / elapsed, 2),
        "p50_latency_s": round(q[49], 2),
        "p95_latency_s": round(q[94], 2),
        "max_latency_s": round(latencies[-1], 2),
        "max_compute_s": round(max(a[3] for a in answers), 2),
    }


def measure(image: str, cpus: str, memory: str, clients: int, rounds: int, quiet_below: float, quiet_timeout: float) -> dict:
    if quiet_timeout > 0:
        wait_until_quiet(quiet_below, quiet_timeout)
    env = manifest_environment()
    name, port = f"k8s-sizing-{os.getpid()}", free_port()
    container_port = env.get("PORT", "5000")
    args = [
        "run", "-d", "--name", name, "--cpus", cpus, "--memory", memory, "--memory-swap", memory,
        "--read-only", "--tmpfs", "/tmp:rw,mode=1777", "--user", "10001:10001", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "-p", f"{port}:{container_port}",
        *[a for k, v in env.items() for a in ("-e", f"{k}={v}")], image,
    ]
    docker("rm", "-f", name, check=False)
    docker(*args)
    started = time.monotonic()
    url = f"http://127.0.0.1:{port}"
    healthy_at = None
    try:
        while time.monotonic() - started < 600:
            try:
                if requests.get(url + "/health", timeout=1).status_code == 200:
                    healthy_at = time.monotonic() - started
                    break
            except requests.RequestException:
                pass
            time.sleep(0.1)
        assert healthy_at is not None, docker("logs", name, check=False).stderr[-3000:]
        tmp_kb = int(docker("exec", name, "du", "-sk", "/tmp").stdout.split()[0])
        ours = [os.getpid(), *container_pids(name)]
        idle_pss = pss_mb(name)
        watch = Watch(name, url)

        def phase(*load_args, **load_kw):
            """One load, after a quiet spell, with the share of the CPUs other processes took during it."""
            if quiet_timeout > 0:
                wait_until_quiet(quiet_below, quiet_timeout, ours)
            watch.take()
            began, before = time.monotonic(), cpu_snapshot(ours)
            result = load(url, *load_args, **load_kw)
            result.update(watch.take())
            result["others_cpu_share"] = round(others_cpu_share(before, cpu_snapshot(ours), time.monotonic() - began), 2)
            return result

        default_tokens = int(env.get("DEFAULT_MAX_NEW_TOKENS", "50"))
        throughput = phase(clients, rounds, default_tokens, "Once upon a time, the travellers")
        total = int(env["MAX_TOTAL_TOKENS"])
        longest = int(env["MAX_NEW_TOKENS_LIMIT"])
        long_prompt = " ".join(["the quick brown fox jumps over the lazy dog"] * 80)
        worst = phase(int(env["MAX_CONCURRENT_REQUESTS"]), 1, longest, long_prompt, truncate=total - longest)
        watch.stop()
        cgroup_peak = int(docker("exec", name, "cat", "/sys/fs/cgroup/memory/memory.max_usage_in_bytes").stdout) / 2**20
        logs = docker("logs", name, check=False)
    finally:
        docker("rm", "-f", name, check=False)
    return {
        "cpus": cpus,
        "memory_limit": memory,
        "seconds_to_healthy": round(healthy_at, 1),
        "tmp_kb_after_start": tmp_kb,
        "idle_pss_mb": round(idle_pss),
        "throughput": throughput,
        "worst_case": worst,
        "peak_pss_mb": round(watch.peak_pss),
        "cgroup_peak_usage_mb": round(cgroup_peak),
        "worker_killed": "was sent SIGKILL" in (logs.stdout + logs.stderr),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpus", nargs="+", default=["0.5", "1", "2"])
    parser.add_argument("--memory", default="1g")
    parser.add_argument("--clients", type=int, default=16, help="throughput load: clients at once (MAX_BATCH_SIZE)")
    parser.add_argument("--rounds", type=int, default=4, help="throughput load: requests per client")
    parser.add_argument("--image", help="an image already built (skips the build)")
    parser.add_argument("--quiet-below", type=float, default=0.15,
                        help="before each CPU limit, wait until other processes use less than this share of the CPUs")
    parser.add_argument("--quiet-timeout", type=float, default=600, help="seconds to wait for that (0: do not wait)")
    parser.add_argument("--out", default=os.path.join(ROOT, "bench", "results", "pod_sizing.json"))
    args = parser.parse_args()
    image = args.image or build_image()
    results = []
    for cpus in args.cpus:
        result = measure(image, cpus, args.memory, args.clients, args.rounds, args.quiet_below, args.quiet_timeout)
        print(json.dumps(result), flush=True)
        results.append(result)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"environment": manifest_environment(), "results": results}, f, indent=2)
        f.write("\n")


if __name__ == "__main__":
    main()
