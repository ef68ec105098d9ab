"""The images built and run for real (docker -> Podman through ../shared/container), as docs/deploy/docker.md says.

Marked `container`: `.ci/run` runs these when ../shared/container/setup can run on the machine.
"""

import json
import os
import subprocess
import sys
import time

import pytest
import requests

from devtools.models import make_tiny
from tests.lambda_events import http_v2, response_json
from tests.lambda_runtime import RuntimeAPI
from devtools.images import copy_build_context, docker
from devtools.servers import ROOT, wait_healthy

pytestmark = pytest.mark.container

IMAGE = "gpt2-text-generator"


def documented_commands(prefix: str) -> list:
    """The `docker ...` lines of the Docker guide (docs/deploy/docker.md): the tests run exactly those."""
    with open(os.path.join(ROOT, "docs", "deploy", "docker.md"), encoding="utf-8") as f:
        text = f.read()
    return [line.split("  #")[0].strip() for line in text.splitlines() if line.startswith(prefix)]


@pytest.fixture(scope="module")
def context(tmp_path_factory, image_builds):
    """A build context as a user's checkout has it (devtools.images), plus a tiny model under models/."""
    ctx = tmp_path_factory.mktemp("context")
    copy_build_context(ctx)
    make_tiny(str(ctx / "models" / "tiny-gpt2"))
    return ctx


@pytest.fixture(scope="module")
def service_image(context):
    (build,) = [c for c in documented_commands("docker build") if "models/tiny-gpt2" in c and "--target" not in c]
    subprocess.run(build, shell=True, cwd=context, check=True, timeout=1200)
    return IMAGE


def run_foreground(command: str):
    """Start the guide's `docker run ...` as a user would (foreground), and find its container id."""
    before = set(docker("ps", "-q").stdout.split())
    proc = subprocess.Popen(command, shell=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        new = set(docker("ps", "-q").stdout.split()) - before
        if new:
            return proc, new.pop()
        if proc.poll() is not None:
            raise RuntimeError(proc.stdout.read())
        time.sleep(0.5)
    raise TimeoutError(command)


def stop_and_exit_code(container: str, proc) -> int:
    started = time.monotonic()
    docker("stop", "-t", "30", container)  # SIGTERM, then SIGKILL after the 30 s grace period
    took = time.monotonic() - started
    proc.wait(timeout=60)
    code = int(docker("inspect", "-f", "{{.State.ExitCode}}", container).stdout.strip())
    docker("rm", "-f", container, check=False)
    assert took < 25, f"SIGTERM took {took:.1f} s: the grace period ran out"
    return code


def test_service_image_runs_answers_and_stops_cleanly(service_image):
    (run,) = [c for c in documented_commands("docker run") if c.startswith("docker run -p 5000:5000")]
    proc, container = run_foreground(run)
    try:
        wait_healthy("http://127.0.0.1:5000", timeout=180, proc=proc)
        # The seed's example (README.md, docs/api.md).
        answer = requests.post("http://127.0.0.1:5000/generate", json={"prompt": "Once upon a time"}, timeout=60)
        assert answer.status_code == 200 and isinstance(answer.json()["generated_text"], str)
        assert docker("exec", container, "id", "-u").stdout.strip() != "0"
        # The image's own HEALTHCHECK command, run inside the container (Docker and Podman alike).
        check = json.loads(docker("image", "inspect", "-f", "{{json .Config.Healthcheck}}", service_image).stdout)
        assert check["Test"][0] == "CMD"
        assert docker("exec", container, *check["Test"][1:], check=False).returncode == 0
        # Nothing but the baked-in model: the Hub is switched off inside.
        env = docker("exec", container, "env").stdout
        assert "HF_HUB_OFFLINE=1" in env and "MODEL_ID=/opt/model" in env
        # The service's user can write nowhere but /tmp: not its code, its model, its packages.
        writable = docker("exec", container, "find", "/", "-xdev", "-writable", "-type", "d", check=False).stdout
        assert writable.split() == ["/tmp"], writable
        # Debug mode (Werkzeug's debugger runs code sent to it) is not there to be switched on.
        assert "FLASK_DEBUG" not in env
        # ONNX Runtime serves the model: neither torch nor transformers is in the image at all.
        for package in ("torch", "transformers"):
            found = docker("exec", container, "python", "-c", f"import {package}", check=False)
            assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, (package, found.stderr)
        # Structured output's grammar library is there (and needs neither).
        found = docker("exec", container, "python", "-c", "import llguidance", check=False)
        assert found.returncode == 0, found.stderr
        info = requests.get("http://127.0.0.1:5000/info", timeout=10).json()
        assert info["model_backend"] == "onnx" and info["model_dtype"] == "int8", info
    finally:
        code = stop_and_exit_code(container, proc)
    assert code == 0


def test_port_is_honoured(service_image):
    (run,) = [c for c in documented_commands("docker run") if "PORT=8080" in c]
    proc, container = run_foreground(run)
    try:
        wait_healthy("http://127.0.0.1:8080", timeout=180, proc=proc)
        assert requests.get("http://127.0.0.1:8080/info", timeout=10).json()["model_id"] == "/opt/model"
    finally:
        assert stop_and_exit_code(container, proc) == 0


def test_image_size_is_reported(service_image):
    size = int(docker("image", "inspect", "-f", "{{.Size}}", service_image).stdout.strip())
    base = int(docker("image", "inspect", "-f", "{{.Size}}", "python:3.11-slim").stdout.strip())
    print(f"\n{service_image} image: {size / 1e6:.0f} MB ({(size - base) / 1e6:.0f} MB above python:3.11-slim)")
    # No torch: ONNX Runtime, numpy, tokenizers, llguidance and the web stack (the tiny model weighs ~1 MB).
    assert size - base < 300_000_000


def test_lambda_image_answers_through_the_runtime_api(context):
    (build,) = [c for c in documented_commands("docker build") if "--target lambda" in c and "models/tiny-gpt2" in c]
    subprocess.run(build, shell=True, cwd=context, check=True, timeout=1200)
    found = docker("run", "--rm", "--entrypoint", "python", "gpt2-text-generator-lambda", "-c", "import torch", check=False)
    assert found.returncode != 0 and "ModuleNotFoundError" in found.stderr, found.stderr
    with RuntimeAPI() as api:
        host, port = api.address.split(":")
        started = time.monotonic()
        proc = subprocess.Popen(
            ["docker", "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
             "-e", f"AWS_LAMBDA_RUNTIME_API={api.address}", "--name", "tg-lambda-test", "gpt2-text-generator-lambda"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        try:
            outcome, payload = api.invoke({"prompt": "Once upon a time", "max_new_tokens": 5}, timeout=300)
            first_answer = time.monotonic() - started
            assert outcome == "response" and isinstance(payload["generated_text"], str), payload
            outcome, payload = api.invoke(http_v2("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 3}}))
            assert payload["statusCode"] == 200 and response_json(payload)["generated_text"] is not None
            print(f"\nlambda container: first answer {first_answer:.1f} s after docker run (init + 1 call)")
        finally:
            docker("rm", "-f", "tg-lambda-test", check=False)
            proc.wait(timeout=60)


def test_service_runs_on_a_read_only_root(service_image):
    """`--read-only --tmpfs /tmp`, as a hardened deployment runs it: the service needs nothing else."""
    name = "textgen-read-only-test"
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, "--read-only", "--tmpfs", "/tmp", "-p", "5055:5000", service_image)
    try:
        wait_healthy("http://127.0.0.1:5055", timeout=180)
        answer = requests.post("http://127.0.0.1:5055/generate", json={"prompt": "Hi", "max_new_tokens": 3}, timeout=60)
        assert answer.status_code == 200
    finally:
        docker("rm", "-f", name, check=False)


def test_service_image_serves_a_phi3_graph_built_outside_and_generates_what_transformers_does(service_image, tmp_path):
    """Another family than the default's, in the same image (no torch in it): a tiny Phi-3 (fused
    weights, partial RoPE, a sliding window the prompt crosses) whose float32 graph is built outside
    (scripts/build_graph.py, as the image's model stage builds one) and mounted as the model; its greedy
    tokens equal transformers' `generate` on the checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tests.models import make_tiny_llama, sharpen
    from tests.test_torch_free_families import PROMPTS, transformers_tokens

    checkpoint = sharpen(make_tiny_llama(str(tmp_path / "phi3"), make_tiny(str(tmp_path / "gpt2")), "phi3"))
    served = tmp_path / "served"
    subprocess.run([sys.executable, "scripts/build_graph.py", checkpoint, str(served), "--quantize", "none"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    subprocess.run(["chmod", "-R", "a+rX", str(served)], check=True)
    reference = AutoModelForCausalLM.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    name = "textgen-phi3-test"
    docker("rm", "-f", name, check=False)
    docker("run", "-d", "--name", name, "-e", "QUANTIZE=none", "-v", f"{served}:/opt/model:ro", "-p", "5056:5000", service_image)
    try:
        wait_healthy("http://127.0.0.1:5056", timeout=180)
        info = requests.get("http://127.0.0.1:5056/info", timeout=10).json()
        assert (info["model_backend"], info["model_dtype"]) == ("onnx", "float32"), info
        for prompt in PROMPTS:
            body = {"inputs": prompt, "parameters": {"max_new_tokens": 12, "do_sample": False, "details": True}}
            answer = requests.post("http://127.0.0.1:5056/generate", json=body, timeout=60).json()
            assert [t["id"] for t in answer["details"]["tokens"]] == transformers_tokens(reference, tokenizer, prompt)
    finally:
        docker("rm", "-f", name, check=False)


def test_a_checkpoint_mounted_without_its_graph_is_one_line_and_exit_1(service_image, tmp_path):
    """The image builds no graph (it has no onnx): a safetensors checkpoint mounted as the model is said
    in one line before a worker boots, naming how to build its graph."""
    checkpoint = make_tiny(str(tmp_path / "gpt2"))
    subprocess.run(["chmod", "-R", "a+rX", checkpoint], check=True)
    done = docker("run", "--rm", "-v", f"{checkpoint}:/opt/model:ro", service_image, check=False, timeout=180)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    ours = [line for line in output.splitlines() if line.startswith("textgen: cannot serve this model:")]
    assert len(ours) == 1 and "scripts/build_graph.py" in ours[0], output
    assert "Traceback" not in output and "Booting worker" not in output, output
