"""Loading the model and tokenizer once per process: which backend, which tokenizer, which end tokens.

`MODEL_BACKEND=auto` serves GPT-2- and Llama-family checkpoints with ONNX Runtime (backend `onnx`: the
graph built once from the checkpoint and cached, or built ahead of time into the model directory; no
torch imported at all) and anything else with transformers' `AutoModelForCausalLM`. `torch` serves the
native families with the readable plain-torch modules. Importing this module imports neither torch nor
onnx: only building the backend that needs them does.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from typing import TYPE_CHECKING, Optional, Tuple

from ..settings import Settings
from .build_cache import cached_build, cached_entry
from .config import NATIVE_TYPES, native_family, read_config
from .onnx_backend.graph_files import graph_path, prebuilt_dir, prebuilt_graph
from .safetensors import has_weights
from .threads import available_cpus, whole_cpus_for

if TYPE_CHECKING:
    from .contract import CausalLM

log = logging.getLogger(__name__)

# The packages each backend runs on (requirements-serve.txt has onnxruntime; requirements-torch.txt
# the others): what /info reports the versions of, and what the start-up check looks for.
BACKEND_PACKAGES = {"onnx": ("onnxruntime",), "torch": ("torch",), "transformers": ("torch", "transformers")}

# What a hub id needs to be served: config, weights, tokenizer files.
WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "tokenizer*"]


def release_freed_memory() -> None:
    """Return the heap pages freed while loading (file buffers, float32 weights once quantized, a graph
    built in this process) to the system, once: glibc keeps freed pages for reuse, and they would count
    in the RSS a 512 MB instance is held to. No other allocator tuning: mallopt's was measured to save a
    few MB at a cost in start-up time and tokens/s (commit 6fc7167)."""
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
    """The model (a `CausalLM`: onnx, torch or transformers backend, float32 or int8) and its tokenizer, from
    MODEL_ID: a local `save_pretrained` directory or a hub id (downloaded once); GGUF files are
    converted once and cached."""
    source = model_directory(settings)
    config = read_config(source)
    backend = choose_backend(settings.model_backend, config, source, settings.quantize)
    log.info("loading %s from %s (backend %s, weights %s)", config.get("model_type"), source, backend, settings.quantize)
    tokenizer = load_tokenizer(source, lean=backend != "transformers")
    eos_token_ids = _eos_token_ids(source, config, tokenizer)
    if backend == "onnx":
        model = _load_onnx(source, config, settings, eos_token_ids)
    else:
        from .torch_backend.torch_model import load_torch_model  # imports torch: only the torch backends need it

        model = load_torch_model(backend, config, source, settings, eos_token_ids)
    release_freed_memory()
    return model, tokenizer


def _load_onnx(source: str, config: dict, settings: Settings, eos_token_ids: set):
    """The graph built into the model directory ahead of time, else the one cached for this checkpoint
    (built on first use: a few seconds, no torch)."""
    from .onnx_backend.onnx_model import OnnxModel

    path = prebuilt_graph(source, settings.quantize)
    if path is None:
        if not has_weights(source):
            raise ValueError(
                f"{source} has neither an ONNX graph for QUANTIZE={settings.quantize} (onnx-{settings.quantize}/) "
                "nor safetensors weights to build one from"
            )
        path = graph_path(source, settings.cache_dir, settings.quantize)
    threads = settings.threads or available_cpus()
    spinning = settings.intra_op_spinning
    if spinning is None:
        spinning = whole_cpus_for(threads)
    return OnnxModel(path, config, threads, "1" if spinning else "0", eos_token_ids=eos_token_ids)


def load_tokenizer(source: str, lean: bool = True):
    """The lean `tokenizers`-only tokenizer where it is equivalent, else transformers' AutoTokenizer."""
    from .tokenizer import LeanTokenizer, lean_tokenizer_supported

    if lean and lean_tokenizer_supported(source):
        return LeanTokenizer(source)
    from .torch_backend.hf_files import auto_tokenizer

    return auto_tokenizer(source)


def choose_backend(requested: str, config: dict, source: str, quantize: str = "none") -> str:
    """The backend serving this checkpoint, "onnx", "torch" or "transformers", from MODEL_BACKEND
    (auto|onnx|torch|native|transformers; "native" is read as "torch", its name from before the ONNX
    backend, when the native families had only the torch modules)."""
    family = native_family(config)
    torch_can = family is not None and has_weights(source)
    onnx_can = family is not None and (torch_can or os.path.isdir(prebuilt_dir(source, quantize)))
    if quantize == "int4" and requested == "auto" and not onnx_can:  # the settings refuse the other backends
        raise ValueError(
            f"QUANTIZE=int4: 4-bit weights are served by the onnx backend only, which has no graph for model_type "
            f"{config.get('model_type')!r} (onnx: {NATIVE_TYPES} with safetensors weights); use QUANTIZE=int8 or none"
        )
    if requested == "auto":
        return "onnx" if onnx_can else "transformers"
    if requested == "onnx":
        if not onnx_can:
            raise ValueError(
                f"MODEL_BACKEND=onnx: no ONNX graph for model_type {config.get('model_type')!r} "
                f"(onnx: {NATIVE_TYPES} with safetensors weights or a prebuilt graph); use MODEL_BACKEND=auto or transformers"
            )
        return "onnx"
    if requested in ("torch", "native"):
        if not torch_can:
            raise ValueError(
                f"MODEL_BACKEND={requested}: no native module for model_type {config.get('model_type')!r} "
                f"(native: {NATIVE_TYPES} with safetensors weights); use MODEL_BACKEND=auto or transformers"
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


def converted_gguf(settings: Settings) -> Optional[str]:
    """MODEL_GGUF_FILE's conversion if CACHE_DIR already holds it (None: the worker will make it)."""
    gguf_path = os.path.join(settings.model_id, settings.model_gguf_file)
    if not os.path.isfile(gguf_path):
        return None
    return cached_entry(settings.cache_dir, "gguf", file_fingerprint(gguf_path), "config.json")


def _cached_gguf_conversion(settings: Settings) -> str:
    """Dequantising a GGUF file takes ~40 s; do it once and keep the result as a plain checkpoint."""
    gguf_path = os.path.join(settings.model_id, settings.model_gguf_file)

    def convert(out_dir: str) -> None:
        from .torch_backend.hf_files import convert_gguf  # imports torch and transformers

        log.info("converting %s (once; cached in %s)", gguf_path, settings.cache_dir)
        convert_gguf(settings.model_id, settings.model_gguf_file, out_dir)

    source = {"path": os.path.abspath(gguf_path)}
    return cached_build(settings.cache_dir, "gguf", file_fingerprint(gguf_path), source, convert, "config.json")


def file_fingerprint(path: str, sample: int = 1 << 20) -> str:
    """Identifies a file by its size and three 1 MiB samples (start: the GGUF header and metadata;
    middle; end), not by its path or time: the same file installed again (a new virtualenv, a fresh
    checkout) is the same conversion. Reading the whole file would cost seconds per start at 0.1 CPU."""
    size = os.path.getsize(path)
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        for offset in sorted({0, max(0, size // 2 - sample // 2), max(0, size - sample)}):
            f.seek(offset)
            digest.update(f.read(sample))
    return digest.hexdigest()[:16]
