"""What the benchmarks (bench/) share: the model they measure (real DistilGPT2, or its shape with random
weights) and their prompts; starting a server with its memory watched from the first instant, and
stopping it; how much CPU other processes take on this shared machine, and waiting until they rest;
percentiles; the process tree's summed PSS; the code and the machine measured. Free ports and waiting
for /health come from devtools/servers.py, shared with the tests.
"""

from __future__ import annotations

import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Optional

import psutil

from devtools.models import fetch_gpt2_vocab, make_distilgpt2
from devtools.servers import wait_healthy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(os.path.expanduser("~"), ".cache", "textgen")
RESULTS = os.path.join(ROOT, "bench", "results")
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


def code_version(root: str = ROOT) -> dict:
    """The commit measured, and the files that differed from it (the numbers are those of the tree)."""
    def git(*args):
        done = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True)
        return done.stdout.rstrip("\n") if done.returncode == 0 else None  # porcelain lines start with a space

    changed = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "HEAD"), "modified": [line[3:] for line in (changed or "").splitlines()]}


def machine() -> dict:
    """The machine measured: architecture, CPUs, memory, and the instructions int8 matmuls depend on."""
    cpu = ""
    flags = set()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and not cpu:
                    cpu = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return {
        "summary": f"{platform.machine()}, {psutil.cpu_count()} CPUs, {round(psutil.virtual_memory().total / 2**30)} GiB",
        "cpu": cpu,
        # int8 matmuls (FBGEMM, llama.cpp's q8_0) are much faster with these instructions.
        "avx512_vnni": "avx512_vnni" in flags,
        "avx2": "avx2" in flags,
    }


def percentile(values, q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default), on any iterable."""
    ordered = sorted(values)
    index = (len(ordered) - 1) * q / 100
    low, high = int(index), min(int(index) + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (index - low)


def median_rows(rows: list, by, keys) -> list:
    """One row per value of the `by` fields (a system and its level, measured in several passes): the
    median of each of `keys` over its rows (None values left out), the other fields from its first row."""
    groups: dict = {}
    for row in rows:
        groups.setdefault(tuple(row[k] for k in by), []).append(row)
    out = []
    for group in groups.values():
        merged = {k: v for k, v in group[0].items() if k != "pass"}
        merged["passes"] = len(group)
        for key in keys:
            values = [r[key] for r in group if r.get(key) is not None]
            merged[key] = _tidy(statistics.median(values)) if values else None
        out.append(merged)
    return out


def _tidy(value):
    value = round(value, 3)  # no float noise in the tables; whole numbers stay whole
    return int(value) if float(value).is_integer() else value


class RssSampler:
    """Resident memory of a process and all its children (gunicorn's master and worker), summed, from
    the moment the process exists: `peak` covers the model load too. `window_peak` restarts at each
    `new_window()`, for the peak of one load level alone.

    Every 10 ms while the model loads (short spikes), then every 50 ms (`serving()`): listing a process
    tree reads all of /proc, so the tree is listed every 0.2 s and only its members are read each tick;
    sampling must not take a noticeable share of a 2-core machine from the server it measures."""

    def __init__(self, pid: int, interval: float = 0.01, tree_every: float = 0.2):
        self.process = psutil.Process(pid)
        self.interval = interval
        self.tree_every = tree_every
        self.peak = 0
        self.window_peak = 0
        self._members = [self.process]
        self._listed_at = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def serving(self, interval: float = 0.05) -> None:
        self.interval = interval

    def _run(self):
        while not self._stop.is_set():
            if time.monotonic() - self._listed_at > self.tree_every:
                self._members = self.tree() or self._members
                self._listed_at = time.monotonic()
            total = self._rss(self._members)
            self.peak = max(self.peak, total)
            self.window_peak = max(self.window_peak, total)
            time.sleep(self.interval)

    def tree(self):
        try:
            return [self.process] + self.process.children(recursive=True)
        except psutil.Error:
            return []

    @staticmethod
    def _rss(procs) -> int:
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except psutil.Error:  # a child that just exited: skip it
                pass
        return total

    def current(self) -> int:
        return self._rss(self.tree())

    def high_water_mark(self) -> Optional[int]:
        """Sum of the kernel's per-process RSS peaks (VmHWM): exact for each process, so it also catches
        spikes shorter than the sampling interval; an upper bound when the peaks were not simultaneous."""
        total = 0
        for proc in self.tree():
            try:
                with open(f"/proc/{proc.pid}/status") as f:
                    line = next(line for line in f if line.startswith("VmHWM:"))
                total += int(line.split()[1]) * 1024
            except (OSError, StopIteration, ValueError):
                return None
        return total

    def pids(self) -> set:
        return {proc.pid for proc in self.tree()}

    def pss(self) -> Optional[int]:
        """Summed PSS of the tree now: what the processes cost the machine, shared pages split between
        their users (a cgroup's limit counts them once; summed RSS counts the shared file pages twice)."""
        return summed_pss(self.pids())

    def new_window(self) -> None:
        self.window_peak = self.current()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def smaps_pss(text: str) -> int:
    """Bytes of PSS in the text of a /proc/<pid>/smaps_rollup (its `Pss:` line, in kB)."""
    for line in text.splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) * 1024
    raise ValueError("no Pss: line")


def summed_pss(pids, proc: str = "/proc") -> Optional[int]:
    """PSS summed over `pids` (a process that exited meanwhile counts 0); None where the kernel has no
    smaps_rollup (before Linux 4.14) or hides it."""
    total = 0
    for pid in pids:
        try:
            with open(os.path.join(proc, str(pid), "smaps_rollup")) as f:
                total += smaps_pss(f.read())
        except FileNotFoundError:
            if not os.path.isdir(os.path.join(proc, str(pid))):
                continue  # gone: nothing left to count
            return None
        except (OSError, ValueError):
            return None
    return total


def cpu_snapshot(pids) -> tuple:
    """(CPU seconds the whole machine has been busy, CPU seconds the processes `pids` have used).

    The machine's total comes from /proc/stat, so it also counts processes that start and exit
    between two snapshots (a test run of a few seconds), which a per-process sum would miss."""
    t = psutil.cpu_times()
    busy = t.user + t.nice + t.system + getattr(t, "irq", 0) + getattr(t, "softirq", 0) + getattr(t, "steal", 0)
    own = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            own += times.user + times.system
        except psutil.Error:
            pass
    return busy, own


def others_cpu_share(before: tuple, after: tuple, seconds: float) -> float:
    """Share of the machine's CPU time used by anything but the given processes (the server and this
    benchmark) between two `cpu_snapshot`s of the same processes: the machine is shared."""
    others = (after[0] - before[0]) - (after[1] - before[1])
    return max(0.0, others) / (seconds * (psutil.cpu_count() or 1))


def wait_until_quiet(threshold: float, timeout: float, ours=(), window: float = 5.0) -> float:
    """Wait (up to `timeout` s) until processes other than this one and `ours` use less than
    `threshold` of the machine's CPU over `window` seconds: on a shared 2-core machine, another job's
    one busy core can halve a server whose threads wait for each other. Returns the last share."""
    pids = {os.getpid(), *ours}
    deadline = time.monotonic() + timeout
    while True:
        before = cpu_snapshot(pids)
        time.sleep(window)
        share = others_cpu_share(before, cpu_snapshot(pids), window)
        if share < threshold or time.monotonic() > deadline:
            return share
        print(f"other processes use {share:.0%} of the CPUs; waiting for a quieter machine", flush=True)


@dataclass
class Server:
    """A running server: its process, base URL, memory sampler, and what its start-up cost."""

    proc: subprocess.Popen
    url: str
    rss: RssSampler
    log_path: str
    load_seconds: float = 0.0
    load_peak_rss: int = 0

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.rss.stop()
        os.unlink(self.log_path)

    def log_tail(self, lines: int = 30) -> str:
        with open(self.log_path, errors="replace") as f:
            return "".join(f.readlines()[-lines:])


def launch(cmd, port: int, env: Optional[dict] = None, timeout: float = 300.0, cwd: str = ROOT) -> Server:
    """Start `cmd` (from the project root, or another checkout's `cwd`), watch its memory at once, and wait for GET /health = 200.

    The sampler starts right after Popen, before the server has loaded anything, so the peak during the
    model load is measured and not only the steady state. The output goes to a temporary file, shown
    if the server dies before it is healthy."""
    log = tempfile.NamedTemporaryFile("w", prefix="bench-server-", suffix=".log", delete=False)
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    server = Server(proc, f"http://127.0.0.1:{port}", RssSampler(proc.pid), log.name)
    try:
        _wait_healthy(server, timeout)
    except Exception:
        print(f"server did not start: {' '.join(cmd)}\n{server.log_tail()}", file=sys.stderr)
        server.stop()
        raise
    server.load_seconds = time.perf_counter() - started
    server.load_peak_rss = server.rss.peak
    server.rss.serving()
    return server


def _wait_healthy(server: Server, timeout: float) -> None:
    # llama-server answers 503 while it loads, the service only once its engine runs: both wait for 200.
    wait_healthy(server.url, timeout=timeout, proc=server.proc)


def service_env(model_dir: str, port: int, **settings: str) -> dict:
    """Environment for `gunicorn app:app` with a local model; `settings` are the service's variables
    (MODEL_BACKEND=..., QUANTIZE=...). Offline: the model is a local directory."""
    return {**os.environ, "MODEL_ID": model_dir, "PORT": str(port), "HF_HUB_OFFLINE": "1", **settings}


def service_cmd() -> list:
    # The deployment's own command (settings from gunicorn.conf.py), minus the access log's noise.
    return [sys.executable, "-m", "gunicorn", "app:app", "--access-logfile", "/dev/null"]


def token_gaps(arrivals, window) -> tuple[list, list]:
    """Gaps (seconds) between consecutive tokens of each stream: those overlapping the window, and
    those wholly before it (steady decoding with only the streams in the batch)."""
    start, end = window
    inside, before = [], []
    for times in arrivals:
        for prev, cur in zip(times, times[1:]):
            if cur > start and prev < end:
                inside.append(cur - prev)
            elif cur <= start:
                before.append(cur - prev)
    return inside, before
