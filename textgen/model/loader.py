"""Loading the model and tokenizer once per process, and sizing torch's thread pools.

`MODEL_BACKEND=auto` serves GPT-2- and Llama-family checkpoints with the native modules (no
transformers modeling code imported: ~100 MB less memory and a faster start) and anything else with
transformers' `AutoModelForCausalLM`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from typing import Optional, Tuple

import torch

from ..settings import Settings
from .checkpoint import Checkpoint, read_config

log = logging.getLogger(__name__)

# What a hub id needs to be served: config, weights, tokenizer files.
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


def available_cpus(
    cgroup_v2_cpu_max: str = "/sys/fs/cgroup/cpu.max",
    cgroup_v1_dir: str = "/sys/fs/cgroup/cpu",
) -> int:
    """CPUs this process may really use: its affinity mask, further capped by a cgroup CPU quota, v2
    (`cpu.max`) or v1 (`cpu.cfs_quota_us` / `cpu.cfs_period_us`): a container limited to `--cpus 0.1`
    on a 2-core host must run one torch thread, not two."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        cpus = os.cpu_count() or 1
    quota = _cgroup_quota(cgroup_v2_cpu_max, cgroup_v1_dir)
    if quota is not None:
        cpus = min(cpus, max(1, math.ceil(quota)))
    return max(1, cpus)


def _cgroup_quota(v2_cpu_max: str, v1_dir: str) -> Optional[float]:
    try:
        with open(v2_cpu_max) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(v1_dir, "cpu.cfs_quota_us")) as f:
            quota = int(f.read())
        with open(os.path.join(v1_dir, "cpu.cfs_period_us")) as f:
            period = int(f.read())
        return None if quota <= 0 or period <= 0 else quota / period  # -1 = no quota
    except (OSError, ValueError):
        return None


def configure_threads(threads: Optional[int]) -> int:
    """One engine thread drives torch: give it every usable CPU for intra-op work and no inter-op pool.

    Request threads never run torch, so more intra-op threads than CPUs would only oversubscribe.
    (Measured on this 2-core machine over HTTP: one thread instead of two halved float32's tokens/s at
    8 clients, 270 -> 132, and left int8's level, 405 -> 413.)
    """
    threads = threads or available_cpus()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or already used) in this process: keep what is there
        pass
    return threads


# No mallopt tuning (two arenas, a fixed 1 MB mmap threshold) any more: measured in the Render simulation
# (512 MB, 0.1 CPU; tests/test_render_simulation.py), it lowered the peak by 8 MB (405 vs 413 MB) but
# took 40% longer to become healthy (31 s vs 22 s, 3.1 vs 2.2 CPU-s) and ~15% of the tokens/s (28 vs
# 33): no real gain. Returning what the load freed, once, is kept.
def release_freed_memory() -> None:
    """Return the heap pages freed while loading (file buffers, float32 weights quantized) to the system."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def _glibc():
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:  # not glibc (musl, macOS)
        return None


def load_model(settings: Settings) -> Tuple[torch.nn.Module, object]:
    """The model (native or transformers, float32 or int8) and its tokenizer, from MODEL_ID: a local
    `save_pretrained` directory or a hub id (downloaded once); GGUF files are converted once and cached."""
    source = model_directory(settings)
    config = read_config(source)
    backend = choose_backend(settings.model_backend, config, source)
    if settings.quantize == "int8":
        from .int8 import int8_available

        if not int8_available():
            raise ValueError("QUANTIZE=int8: this torch build has no quantized engine (x86/fbgemm/qnnpack)")
    log.info("loading %s from %s (backend %s, weights %s)", config.get("model_type"), source, backend, settings.quantize)
    tokenizer = load_tokenizer(source, lean=backend == "native")
    with torch.inference_mode():
        if backend == "native":
            model = _load_native(config, source, settings)
        else:
            model = _load_transformers(source, settings)
    model.backend = backend
    model.dtype_name = "int8" if settings.quantize == "int8" else "float32"
    model.eos_token_ids = _eos_token_ids(source, config, tokenizer)
    release_freed_memory()
    return model, tokenizer


def load_tokenizer(source: str, lean: bool = True):
    """The lean `tokenizers`-only tokenizer where it is equivalent, else transformers' AutoTokenizer."""
    from .tokenizer import LeanTokenizer, lean_tokenizer_supported

    if lean and lean_tokenizer_supported(source):
        return LeanTokenizer(source)
    from transformers import AutoTokenizer  # tokenizer only: no modeling code

    return AutoTokenizer.from_pretrained(source)


def native_module(config: dict):
    """The native class for this config, or None."""
    from . import gpt2, llama

    if config.get("model_type") in gpt2.ARCHITECTURES:
        return gpt2.GPT2
    if llama.supports(config):
        return llama.Llama
    return None


def choose_backend(requested: str, config: dict, source: str) -> str:
    has_safetensors = any(
        os.path.exists(os.path.join(source, f)) for f in ("model.safetensors", "model.safetensors.index.json")
    )
    native = native_module(config) is not None and has_safetensors
    if requested == "native" and not native:
        raise ValueError(
            f"MODEL_BACKEND=native: no native module for model_type {config.get('model_type')!r} "
            "(native: gpt2, llama, qwen2 with safetensors weights); use MODEL_BACKEND=auto or transformers"
        )
    if requested == "transformers" or not native:
        return "transformers"
    return "native"


def _load_native(config: dict, source: str, settings: Settings):
    model = native_module(config)(config, Checkpoint(source), quantize=settings.quantize, skinny=settings.skinny_matmul)
    model.eval()
    return model


def _load_transformers(source: str, settings: Settings):
    from transformers import AutoModelForCausalLM

    from .hf import TransformersModel

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()  # no dropout
    model.requires_grad_(False)  # inference only: no autograd bookkeeping
    if settings.quantize == "int8":
        _swap_linears(model, "int8")
    elif settings.skinny_matmul:
        _swap_linears(model, "skinny")
    return TransformersModel(model)


def _swap_linears(model: torch.nn.Module, kind: str) -> int:
    """Replace every nn.Linear and GPT-2 Conv1D by an int8 or skinny float32 layer (a module swap)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    from .int8 import Int8Linear
    from .skinny import SkinnyLinear

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                weight = child.weight
            elif isinstance(child, Conv1D):
                weight = child.weight.detach().t().contiguous()  # Conv1D stores [in, out]
            else:
                continue
            bias = None if child.bias is None else child.bias.detach()
            layer = Int8Linear(weight.detach(), bias) if kind == "int8" else SkinnyLinear(weight, child.bias)
            setattr(parent, name, layer)
            replaced += 1
    return replaced


def _eos_token_ids(source: str, config: dict, tokenizer) -> set:
    values = [config.get("eos_token_id"), tokenizer.eos_token_id]
    generation_config = os.path.join(source, "generation_config.json")
    if os.path.exists(generation_config):
        with open(generation_config, encoding="utf-8") as f:
            values.insert(0, json.load(f).get("eos_token_id"))
    ids = set()
    for value in values:
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, (list, tuple)):
            ids.update(v for v in value if isinstance(v, int))
    return ids


def model_directory(settings: Settings) -> str:
    """A local directory with config.json: MODEL_ID itself, its GGUF conversion, or a hub download."""
    if settings.model_gguf_file:
        return _cached_gguf_conversion(settings)
    if os.path.isdir(settings.model_id):
        return settings.model_id
    from huggingface_hub import snapshot_download

    return snapshot_download(settings.model_id, allow_patterns=WEIGHT_PATTERNS)


def _cached_gguf_conversion(settings: Settings) -> str:
    """Dequantising a GGUF file takes ~40 s; do it once and keep the result as a plain checkpoint."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf_path = os.path.join(settings.model_id, settings.model_gguf_file)
    stat = os.stat(gguf_path)
    key = hashlib.sha256(f"{os.path.abspath(gguf_path)}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()
    target = os.path.join(settings.cache_dir, "gguf-" + key[:16])
    if not os.path.exists(os.path.join(target, "config.json")):
        log.info("converting %s (once; cached in %s)", gguf_path, target)
        tokenizer = AutoTokenizer.from_pretrained(settings.model_id, gguf_file=settings.model_gguf_file)
        model = AutoModelForCausalLM.from_pretrained(
            settings.model_id, gguf_file=settings.model_gguf_file, dtype=torch.float32
        )
        # The weights are plain float tensors now; the GGUF "quantizer" left attached only blocks saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        tmp = target + f".tmp{os.getpid()}"
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        os.makedirs(settings.cache_dir, exist_ok=True)
        try:
            os.rename(tmp, target)  # atomic: a concurrent converter either wins or finds it done
        except OSError:
            pass
    return target
