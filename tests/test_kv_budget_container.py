"""SmolLM2-135M (real weights, int8 as the image builds it) in a container of 1 GiB without swap: 16 clients
at once, each with its own ~3,600-token prompt. Their keys and values alone would be 16 x 3,632 x 46,080
bytes = 2.7 GB; the KV-cache budget (MAX_BATCH_TOTAL_TOKENS, derived from the container's limit) lets in
only the rows that fit, the others wait in the queue: every request is answered, nothing is killed.

Marked `container` and `slow` (real weights; 3 minutes here at load 2-4, 13 at load 11-14: the image
build, then 58,000 prompt tokens prefilled on 2 cores). It prints the figures
docs/performance.md quotes (KV-cache budget); before the budget, the same load had the worker OOM-killed.
"""

import json
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from devtools.images import build_model_image, docker, pss_mb
from devtools.servers import free_port, wait_healthy
from tests.real_weights import GGUF_NAME, smollm2_dir

pytestmark = [pytest.mark.container, pytest.mark.slow]

IMAGE = "textgen-smollm2"
LIMITS = ["--memory", "1g", "--memory-swap", "1g"]
CLIENTS, PROMPT_TOKENS, NEW_TOKENS = 16, 3600, 32
# The queue is where the budget keeps the rows that do not fit: the last of 16 waits for the 15 before it.
ENVIRONMENT = {"QUEUE_TIMEOUT": "3600"}
WORDS = "river stone lantern market winter garden letter harbour bridge orchard station meadow window".split()


@pytest.fixture(scope="module")
def image(tmp_path_factory, image_builds):
    """The image built with SmolLM2's GGUF converted to a checkpoint on the host (once, into CACHE_DIR:
    the conversion needs torch, the image has none)."""
    from textgen.model.loader import model_directory
    from textgen.settings import Settings

    environ = {k: v for k, v in os.environ.items() if k == "CACHE_DIR"}
    checkpoint = model_directory(Settings.from_env(environ=environ, model_id=smollm2_dir(), model_gguf_file=GGUF_NAME))
    return build_model_image(IMAGE, str(tmp_path_factory.mktemp("smollm2-context")), checkpoint, "smollm2")


def prompt(url: str, client: int) -> str:
    """Client `client`'s prompt: its own words from the first one (no prefix shared with the others), cut
    to PROMPT_TOKENS by the server's own tokenizer (/tokenize)."""
    rng = random.Random(client)
    text = f"Notes of reader {client}: " + " ".join(rng.choice(WORDS) for _ in range(PROMPT_TOKENS + 200))
    tokens = requests.post(url + "/tokenize", json={"inputs": text}, timeout=60).json()
    return text[: tokens[PROMPT_TOKENS]["start"]]  # byte offsets; the words are ASCII


def oom_kills(name: str) -> int:
    """OOM kills in the container's cgroup so far (v1: memory.oom_control; v2: memory.events)."""
    for path in ("/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"):
        out = docker("exec", name, "cat", path, check=False).stdout
        for line in out.splitlines():
            if line.startswith("oom_kill "):
                return int(line.split()[1])
    raise AssertionError(f"no oom_kill count readable in {name}")


class PeakPss:
    """Every 0.2 s, the PSS summed over the container's processes; the peak."""

    def __init__(self, name: str):
        self.name, self.peak = name, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def now(self) -> int:
        return round(pss_mb(self.name) * 2**20)

    def _run(self):
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.now())
            except Exception:  # a process ending between the listing and the read
                pass
            time.sleep(0.2)

    def stop(self):
        self._stop.set()
        self._thread.join()


def test_sixteen_long_prompts_in_one_gib(image):
    name, port = f"kv-budget-{os.getpid()}", free_port()
    env = [arg for key, value in ENVIRONMENT.items() for arg in ("-e", f"{key}={value}")]
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, *LIMITS, *env, "-p", f"{port}:5000", image)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=600)
        info = requests.get(url + "/info", timeout=30).json()
        prompts = [prompt(url, i) for i in range(CLIENTS)]
        watch = PeakPss(name)
        idle = watch.now()

        def one(text):
            body = {"inputs": text, "parameters": {"max_new_tokens": NEW_TOKENS, "do_sample": False, "details": True}}
            response = requests.post(url + "/generate", json=body, timeout=3600)
            return response.status_code, response.json()

        began = time.monotonic()
        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = list(pool.map(one, prompts))
        elapsed = time.monotonic() - began
        watch.stop()
        kills = oom_kills(name)
    finally:
        logs = docker("logs", name, check=False)
        docker("rm", "-f", name, check=False)
    log_text = logs.stdout + logs.stderr
    budget = info["max_batch_total_tokens"]
    figures = {
        "max_batch_total_tokens": budget,
        "idle_pss_mb": round(idle / 2**20),
        "peak_pss_mb": round(watch.peak / 2**20),
        "seconds": round(elapsed),
        "oom_kills": kills,
    }
    print("kv budget in 1 GiB:", json.dumps(figures))
    print([line for line in log_text.splitlines() if "KV-cache budget" in line])
    assert [status for status, _ in answers] == [200] * CLIENTS, answers
    assert all(body["details"]["generated_tokens"] >= 1 for _, body in answers)
    assert kills == 0 and "was sent SIGKILL" not in log_text, log_text[-3000:]
    # The budget was derived from the container's limit, and it is what kept the rows out: all 16 together
    # would need 16 x (3,600 + 32) tokens; it holds 2 or 3 of them.
    assert "memory limit 1024 MiB" in log_text, log_text[-3000:]
    assert 2 * (PROMPT_TOKENS + NEW_TOKENS) <= budget < CLIENTS * (PROMPT_TOKENS + NEW_TOKENS), figures
    assert watch.peak < 2**30, figures
