"""llama.cpp's llama-server as a benchmark peer (bench/run.py's llama-server rows): the GGUF it needs, its
command line, one request.

The GGUF is made from the same `save_pretrained` directory as the other rows, with the converter that
ships in llama.cpp's source tree (vendored in the llama-cpp-python sdist), and cached under
~/.cache/textgen keyed by the checkpoint's path, size and time, so a run converts at most once.
Served with continuous batching over 8 slots sharing one KV cache, as a CPU user would run it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import requests

from devtools.benchmark import CACHE

QUANTS = ("q8_0", "f32")


def find_converter(binary: str) -> str:
    """convert_hf_to_gguf.py from the source tree the binary was built from: the build directory
    (.../llbuild/bin/llama-server) sits next to the unpacked sdist or a llama.cpp checkout."""
    base = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(binary))))
    for pattern in ("*/convert_hf_to_gguf.py", "*/*/vendor/llama.cpp/convert_hf_to_gguf.py",
                    "*/*/*/vendor/llama.cpp/convert_hf_to_gguf.py"):
        found = sorted(glob.glob(os.path.join(base, pattern)))
        if found:
            return found[0]
    raise FileNotFoundError(f"no convert_hf_to_gguf.py under {base}; pass --llama-convert")


def gguf_for(model_dir: str, quant: str, converter: str) -> str:
    """The model as a GGUF file of type `quant`, converted once and cached."""
    weights = os.path.join(model_dir, "model.safetensors")
    stat = os.stat(weights)
    key = hashlib.sha256(f"{os.path.abspath(model_dir)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    out = os.path.join(CACHE, "llama-gguf", f"{os.path.basename(model_dir.rstrip('/'))}-{key}-{quant}.gguf")
    if not os.path.exists(out):
        _convert(model_dir, quant, converter, out)
    return out


def _convert(model_dir: str, quant: str, converter: str, out: str) -> None:
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with tempfile.TemporaryDirectory() as staging:
        # The converter reads the context length from config.json's n_ctx, which GPT-2 configs may lack;
        # a copy gets it, the other files are linked (the checkpoint itself stays untouched).
        for name in os.listdir(model_dir):
            if name != "config.json":
                os.symlink(os.path.join(os.path.abspath(model_dir), name), os.path.join(staging, name))
        with open(os.path.join(model_dir, "config.json")) as f:
            config = json.load(f)
        config.setdefault("n_ctx", config.get("n_positions", 1024))
        with open(os.path.join(staging, "config.json"), "w") as f:
            json.dump(config, f)
        env = {**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(converter), "gguf-py")}
        partial = out + ".tmp"
        print(f"converting {model_dir} to GGUF {quant} ...", flush=True)
        subprocess.run(
            [sys.executable, converter, staging, "--outtype", quant, "--outfile", partial],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        os.replace(partial, out)  # only a finished file is ever found in the cache


def server_cmd(binary: str, gguf: str, port: int, parallel: int, ctx: int, threads: int) -> list:
    """The reference's serving flags: continuous batching over `parallel` slots sharing one KV cache."""
    return [
        binary, "-m", gguf, "-t", str(threads), "-tb", str(threads), "--parallel", str(parallel),
        "--cont-batching", "-c", str(ctx), "--kv-unified", "--host", "127.0.0.1", "--port", str(port),
    ]


def context_size(parallel: int, max_new_tokens: int, prompt_room: int = 64) -> int:
    """The unified KV cache must hold every slot's prompt and output: 1024 (the reference's -c) is
    enough for 32 new tokens in 8 slots; a long generation needs more, or slots would be cut short."""
    return max(1024, parallel * (max_new_tokens + prompt_room))


def one_request(url: str, prompt: str, max_new_tokens: int) -> dict:
    """One streamed /v1/completions request; `tokens` is what the server says it generated."""
    body = {
        "prompt": prompt,
        "max_tokens": max_new_tokens,
        "stream": True,
        # Random weights may sample the end-of-text token; every row must generate all its tokens.
        "ignore_eos": True,
        # The service's sampler (top_k 50, nothing else) instead of llama.cpp's defaults (top_k 40,
        # min_p 0.05); the cost per token barely depends on it, but then nothing differs.
        "temperature": 1.0, "top_k": 50, "top_p": 1.0, "min_p": 0.0,
        # The service keeps no prompt cache between requests; neither should its peer.
        "cache_prompt": False,
    }
    started = time.perf_counter()
    ttft, chunks, reported = None, 0, None
    with requests.post(url + "/v1/completions", json=body, stream=True, timeout=600) as response:
        response.raise_for_status()
        for line in response.iter_lines():
            if not line.startswith(b"data:") or line[5:].strip() == b"[DONE]":
                continue
            event = json.loads(line[5:])
            if "error" in event:
                raise RuntimeError(event)
            if event["choices"] and event["choices"][0].get("text"):
                chunks += 1
                ttft = ttft if ttft is not None else time.perf_counter() - started
            # The last event carries usage (OpenAI) and timings.predicted_n (llama.cpp's own).
            usage, timings = event.get("usage") or {}, event.get("timings") or {}
            reported = usage.get("completion_tokens", timings.get("predicted_n", reported))
    return {"latency": time.perf_counter() - started, "ttft": ttft, "tokens": reported if reported is not None else chunks}
