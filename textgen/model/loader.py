"""Loading the model and tokenizer once per process: which backend, which tokenizer, which end tokens.

`MODEL_BACKEND=auto` serves GPT-2- and Llama-family checkpoints with the native modules (backend
`torch`: no transformers modeling code imported, ~100 MB less memory and a faster start) and anything
else with transformers' `AutoModelForCausalLM`. Importing this module does not import torch: only
building a torch backend does (torch_backend.py).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Tuple

from ..settings import Settings
from .architectures import native_family, read_config

if TYPE_CHECKING:
    from .contract import CausalLM

log = logging.getLogger(__name__)

# What a hub id needs to be served: config, weights, tokenizer files.
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


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


def load_model(settings: Settings) -> Tuple["CausalLM", object]:
    """The model (a `CausalLM`: torch or transformers backend, float32 or int8) and its tokenizer, from
    MODEL_ID: a local `save_pretrained` directory or a hub id (downloaded once); GGUF files are
    converted once and cached."""
    source = model_directory(settings)
    config = read_config(source)
    backend = choose_backend(settings.model_backend, config, source)
    log.info("loading %s from %s (backend %s, weights %s)", config.get("model_type"), source, backend, settings.quantize)
    tokenizer = load_tokenizer(source, lean=backend != "transformers")
    eos_token_ids = _eos_token_ids(source, config, tokenizer)
    from .torch_backend import load_torch_model  # imports torch: only the torch backends need it

    model = load_torch_model(backend, config, source, settings, eos_token_ids)
    release_freed_memory()
    return model, tokenizer


def load_tokenizer(source: str, lean: bool = True):
    """The lean `tokenizers`-only tokenizer where it is equivalent, else transformers' AutoTokenizer."""
    from .tokenizer import LeanTokenizer, lean_tokenizer_supported

    if lean and lean_tokenizer_supported(source):
        return LeanTokenizer(source)
    from transformers import AutoTokenizer  # tokenizer only: no modeling code

    return AutoTokenizer.from_pretrained(source)


# What MODEL_BACKEND=auto serves the native architectures (GPT-2, Llama, Qwen2) with; the others go to
# transformers.
AUTO_NATIVE_BACKEND = "torch"


def choose_backend(requested: str, config: dict, source: str) -> str:
    """The backend serving this checkpoint, "torch" or "transformers", from MODEL_BACKEND
    (auto|onnx|torch|native|transformers; "native" is the old name of "torch")."""
    has_safetensors = any(
        os.path.exists(os.path.join(source, f)) for f in ("model.safetensors", "model.safetensors.index.json")
    )
    native = native_family(config) is not None and has_safetensors
    if requested == "auto":
        return AUTO_NATIVE_BACKEND if native else "transformers"
    if requested == "onnx":
        raise ValueError("MODEL_BACKEND=onnx: this build has no ONNX Runtime backend yet; use auto, torch or transformers")
    if requested in ("torch", "native"):
        if not native:
            raise ValueError(
                f"MODEL_BACKEND={requested}: no native module for model_type {config.get('model_type')!r} "
                "(native: gpt2, llama, qwen2 with safetensors weights); use MODEL_BACKEND=auto or transformers"
            )
        return "torch"
    return "transformers"


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
    import torch
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
