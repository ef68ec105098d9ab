"""llama.cpp's llama-server as a benchmark peer (bench/run.py's llama-server rows): the GGUF it needs, its
command line, one request.

The GGUF is made from the same `save_pretrained` directory as the other rows, with the converter that
ships in llama.cpp's source tree (vendored in the llama-cpp-python sdist); the types the converter cannot
write (q4_0) are converted to f32 first and then quantized by `llama-quantize`, built beside the server.
A model that is a GGUF already (SmolLM2's Q4_1) is requantized from that file
(`llama-quantize --allow-requantize`). Cached under the bench's cache directory (~/.cache/textgen by
default), keyed by the source's path, size and time, so a run converts at most once.
Served with continuous batching over as many slots as the most clients measured, sharing one KV cache,
as a CPU user would run it.
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

# The converter writes these itself; the others are quantized from its f32 by llama-quantize.
CONVERTER_TYPES = ("q8_0", "f32")
QUANTS = ("q8_0", "f32", "q4_0")


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


def find_quantize(binary: str) -> str:
    """llama-quantize, built into the same bin/ directory as llama-server."""
    path = os.path.join(os.path.dirname(os.path.abspath(binary)), "llama-quantize")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no {path}: cmake --build llbuild --target llama-quantize")
    return path


def gguf_for(source: str, quant: str, converter: str, quantize: str, cache: str = CACHE) -> str:
    """The model as a GGUF file of type `quant`, made once and cached. `source` is a `save_pretrained`
    directory, or a GGUF file to requantize."""
    weights = source if source.endswith(".gguf") else os.path.join(source, "model.safetensors")
    stat = os.stat(weights)
    key = hashlib.sha256(f"{os.path.abspath(source)}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    name = os.path.basename(source.rstrip("/")).removesuffix(".gguf")  # "llama-3.2-1b-random" keeps its dots
    out = os.path.join(cache, "llama-gguf", f"{name}-{key}-{quant}.gguf")
    if os.path.exists(out):
        return out
    os.makedirs(os.path.dirname(out), exist_ok=True)
    if source.endswith(".gguf"):
        _quantize(quantize, source, out, quant)
    elif quant in CONVERTER_TYPES:
        _convert(source, quant, converter, out)
    else:
        f32 = gguf_for(source, "f32", converter, quantize, cache)
        _quantize(quantize, f32, out, quant)
        os.unlink(f32)  # 4 bytes a weight: only the quantized file is served
    return out


def _quantize(binary: str, src: str, out: str, quant: str) -> None:
    print(f"quantizing {src} to {quant} ...", flush=True)
    partial = out + ".tmp"
    env = {**os.environ, "LD_LIBRARY_PATH": library_path(binary)}
    _run([binary, "--allow-requantize", src, partial, quant.upper()], env)
    os.replace(partial, out)  # only a finished file is ever found in the cache


def library_path(binary: str) -> str:
    """The build's shared libraries sit beside its binaries, where the loader may not look."""
    return os.pathsep.join(p for p in (os.path.dirname(os.path.abspath(binary)), os.environ.get("LD_LIBRARY_PATH")) if p)


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
        _run([sys.executable, converter, staging, "--outtype", quant, "--outfile", partial], env)
        os.replace(partial, out)  # only a finished file is ever found in the cache


def _run(cmd: list, env: dict) -> None:
    """Run a conversion step quietly; if it fails, say why (the end of its output)."""
    done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if done.returncode != 0:
        tail = "\n".join(done.stdout.splitlines()[-15:])
        raise RuntimeError(f"{' '.join(cmd)} failed (exit {done.returncode}):\n{tail}")


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
