"""Cold start on Render's free instance: seconds from `docker run` to a healthy /health, the CPU-seconds
the container's processes spent by then, and the first answer, for one or more images taking turns.

    PATH=../shared/container/bin:$PATH python bench/cold_start.py IMAGE [IMAGE ...] --rounds 3
    python bench/cold_start.py IMAGE --cpus 0                 # no CPU limit: the CPU-seconds alone
    python bench/cold_start.py IMAGE --load 40                # then 40 requests from 8 clients: tokens/s
    python bench/cold_start.py IMAGE --stages                 # where the CPU goes (bench/cold_start_stages.py)

Each run: `docker run` with render.yaml's environment and the free instance's limits (512 MB, no swap,
`--cpus 0.1`), /health polled every 0.1 s; on the first 200 the CPU-seconds of gunicorn's master and
worker are read from the host (/proc), then one greedy 8-token /generate is timed from `docker run` too
(the health check means "can generate": this shows it). With `--load N`, N greedy requests of 32 new
tokens from 8 clients (render.yaml's MAX_BATCH_SIZE) follow, prompts sharing a 100-token opening as in
tests/test_render_simulation.py, and the server's own count of generated tokens gives tokens/s. Images
take turns within a round, so a busy machine slows all of them alike; medians over the rounds. At a
tenth of a CPU, wall-clock seconds are ten times the CPU-seconds: compare those within one run.

`--stages` runs bench/cold_start_stages.py inside the image (no CPU limit, one process, the stages in
the order gunicorn's master and worker run them) and prints each stage's CPU-seconds, median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import psutil
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.images import container_processes, docker, render_environment  # noqa: E402
from devtools.servers import free_port, wait_healthy  # noqa: E402

LIMITS = ["--memory", "512m", "--memory-swap", "512m"]
OPENING = (
    "You are a storyteller for a small town newspaper. Write in plain words, one short paragraph at a time, "
    "with no lists and no headings. Every story must begin with a place, name one person, and end with "
    "something that person learned. Keep the tone warm and the sentences short. Here is the request. "
)


def render_arguments() -> list:
    """render.yaml's environment as `docker run -e` arguments."""
    return [arg for key, value in render_environment().items() for arg in ("-e", f"{key}={value}")]


def cpu_seconds(name: str) -> dict:
    """User + system CPU-seconds of each of the container's processes (its first is gunicorn's master)."""
    seconds = {}
    for process in container_processes(name):
        try:
            seconds[process.pid] = sum(process.cpu_times()[:2])
        except psutil.Error:
            pass
    return seconds


def generate(url: str, prompt: str, tokens: int) -> dict:
    body = {"inputs": prompt, "parameters": {"max_new_tokens": tokens, "do_sample": False, "details": True}}
    response = requests.post(url + "/generate", json=body, timeout=600)
    response.raise_for_status()
    return response.json()


def one_start(image: str, cpus: str, load: int) -> dict:
    name, port = f"cold-start-{os.getpid()}", free_port()
    url = f"http://127.0.0.1:{port}"
    cpu_limit = [] if cpus == "0" else ["--cpus", cpus]
    docker("rm", "-f", name, check=False)
    began = time.monotonic()
    docker("run", "-d", "--name", name, *LIMITS, *cpu_limit, *render_arguments(), "-e", "PORT=10000",
           "-p", f"{port}:10000", image)
    try:
        try:
            wait_healthy(url, timeout=300, interval=0.1)
        except TimeoutError:
            raise RuntimeError(docker("logs", name, check=False).stderr[-2000:]) from None
        run = {"healthy_s": time.monotonic() - began}
        per_process = list(cpu_seconds(name).values())
        run.update(cpu_s=sum(per_process), master_cpu_s=per_process[0], worker_cpu_s=sum(per_process[1:]))
        first = generate(url, "Once upon a time", 8)
        run.update(first_answer_s=time.monotonic() - began, first_text=first["generated_text"])
        if load:
            def request(i):
                return generate(url, OPENING + f"Story {i}: the {i} travellers who crossed the bridge at night.", 32)

            started = time.monotonic()
            with ThreadPoolExecutor(8) as pool:
                answers = list(pool.map(request, range(load)))
            run["tokens_per_s"] = sum(a["details"]["generated_tokens"] for a in answers) / (time.monotonic() - started)
        return run
    finally:
        docker("rm", "-f", name, check=False)


def stages(image: str) -> list:
    here = os.path.dirname(os.path.abspath(__file__))
    out = docker("run", "--rm", *render_arguments(), "-v", f"{here}:/bench:ro", image,
                 "python", "/bench/cold_start_stages.py").stdout
    return [(line.split("\t")[1], float(line.split("\t")[0])) for line in out.strip().splitlines()]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("images", nargs="+")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cpus", default="0.1", help="docker run --cpus (0: no limit)")
    parser.add_argument("--load", type=int, default=0, help="requests from 8 clients after the start (0: none)")
    parser.add_argument("--stages", action="store_true", help="the stages' CPU-seconds inside each image instead")
    args = parser.parse_args(argv)
    print("load average before:", os.getloadavg())
    runs = {image: [] for image in args.images}
    for _ in range(args.rounds):
        for image in args.images:
            runs[image].append(stages(image) if args.stages else one_start(image, args.cpus, args.load))
            print(image, json.dumps(runs[image][-1]), flush=True)
    print("load average after:", os.getloadavg())
    for image, results in runs.items():
        if args.stages:
            print(f"\n{image}: CPU-seconds per stage, median of {len(results)}")
            for i, (stage, _) in enumerate(results[0]):
                print(f"| {stage} | {statistics.median(r[i][1] for r in results):.3f} |")
        else:
            keys = [k for k, v in results[0].items() if isinstance(v, float)]
            print(image, {k: round(statistics.median(r[k] for r in results), 2) for k in keys})
    return 0


if __name__ == "__main__":
    sys.exit(main())
