"""Whether this install can serve MODEL_ID at all, decided before a worker boots.

A model the install cannot serve (a family with no ONNX graph builder while torch is absent, as in the
image) or a MODEL_ID that names nothing would otherwise fail inside the worker, where gunicorn prints
the exception in full (58 lines for a Qwen3 checkpoint) and exits with "Worker failed to boot". Here
the same causes become one line naming what was found and what to set. Cheap: it reads config.json
and looks for packages (`importlib.util.find_spec`) without importing torch, transformers or numpy
(this runs in gunicorn's master, which the worker's memory does not share); a hub id
is downloaded here, once, and the worker then finds it in the hub's cache.
"""

from __future__ import annotations

import importlib.util
import os

from ..settings import Settings
from .config import LLAMA_TYPES, NATIVE_TYPES, native_family, not_computed, read_config
from .loader import BACKEND_PACKAGES, choose_backend, converted_gguf, model_directory
from .onnx_backend.graph_files import prebuilt_graph


class NotServable(Exception):
    """MODEL_ID cannot be served by this install; the message is one line saying why and what to set."""


def check_servable(settings: Settings) -> None:
    """Raise NotServable with one line when MODEL_ID cannot be served here; return quietly otherwise."""
    if settings.model_gguf_file:
        # Converted once by a worker, then kept in CACHE_DIR: once there, it is checked as the directory it
        # is (no torch needed, and no reading of the file's metadata, ~2 s a start for SmolLM2's).
        source = converted_gguf(settings)
        if source is None:
            _check_gguf(settings)
            return
    else:
        source = _source(settings)
    if not os.path.isfile(os.path.join(source, "config.json")):
        raise NotServable(f"MODEL_ID={settings.model_id}: {source} has no config.json (a `save_pretrained` directory has one)")
    config = read_config(source)
    try:
        backend = choose_backend(settings.model_backend, config, source, settings.quantize)
    except ValueError as exc:
        raise NotServable(str(exc)) from None
    missing = _missing(backend)
    if missing:
        raise NotServable(_missing_message(settings, config, source, backend, missing))
    if backend == "onnx" and prebuilt_graph(source, settings.quantize) is None and not _installed("onnx"):
        q = settings.quantize  # the image's case: a checkpoint mounted where a graph built at image build time was
        raise NotServable(
            f"MODEL_ID={settings.model_id}: no ONNX graph for QUANTIZE={q} in it (onnx-{q}/), and building one from "
            "its weights needs the onnx package, which this install lacks (build the graph beforehand: "
            f"python scripts/build_graph.py CHECKPOINT OUT --quantize {q}, then MODEL_ID=OUT; or docker build "
            "--build-arg MODEL_ID=<its path in the build context>)"
        )


def _check_gguf(settings: Settings) -> None:
    from .gguf_metadata import GGUF_ARCHITECTURES, gguf_architecture  # numpy: not in the master unless needed

    path = os.path.join(settings.model_id, settings.model_gguf_file)
    if not os.path.isfile(path):
        raise NotServable(f"MODEL_GGUF_FILE: no file {path}")
    missing = [package for package in ("torch", "transformers", "gguf") if not _installed(package)]
    if missing:
        raise NotServable(f"MODEL_GGUF_FILE={settings.model_gguf_file}: converting a GGUF file needs "
                          f"{' and '.join(missing)} (pip install -r requirements-torch.txt)")
    try:
        architecture = gguf_architecture(path)
    except Exception as exc:  # the reader's errors (bad magic, a truncated file) all say the same here
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise NotServable(f"MODEL_GGUF_FILE={settings.model_gguf_file}: not a readable GGUF file ({reason})") from None
    if architecture not in GGUF_ARCHITECTURES:
        raise NotServable(
            f"MODEL_GGUF_FILE={settings.model_gguf_file}: llama.cpp architecture {architecture!r} is not one this "
            f"service imports from GGUF ({', '.join(GGUF_ARCHITECTURES)}); serve the model's safetensors "
            "checkpoint instead (MODEL_ID set to its directory, MODEL_GGUF_FILE unset)"
        )


def _missing(backend: str) -> list:
    """The packages `backend` runs on that this install lacks."""
    return [package for package in BACKEND_PACKAGES[backend] if not _installed(package)]


def _source(settings: Settings) -> str:
    """MODEL_ID as a local directory: itself, or the hub's download of it."""
    if os.path.isdir(settings.model_id):
        return settings.model_id
    if _looks_like_a_path(settings.model_id):
        raise NotServable(f"MODEL_ID={settings.model_id}: no such directory (set MODEL_ID to a model directory or a Hub id)")
    try:
        return model_directory(settings)
    except Exception as exc:  # the hub client's errors are many (offline, not found, gated): all say the same here
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise NotServable(
            f"MODEL_ID={settings.model_id}: not a local directory, and the Hugging Face Hub did not provide it "
            f"({type(exc).__name__}: {reason}); set MODEL_ID to a directory holding the model"
        ) from None


def _looks_like_a_path(model_id: str) -> bool:
    """A hub id is `name` or `owner/name`; anything with more parts, or starting like a path, is a path."""
    return model_id.startswith(("/", ".", "~")) or model_id.count("/") > 1 or os.sep != "/" and os.sep in model_id


def _missing_message(settings: Settings, config: dict, source: str, backend: str, missing: list) -> str:
    model_type = config.get("model_type")
    if settings.model_backend != "auto":
        why = f"MODEL_BACKEND={settings.model_backend}"
    elif native_family(config) is not None:  # a family served without torch, but nothing to build its graph from
        why = f"{source} has neither safetensors weights nor a prebuilt ONNX graph"
    elif model_type in LLAMA_TYPES:  # the family, but with something its native definition lacks
        why = f"model_type {model_type!r} with {not_computed(config)} is not served without torch"
    else:
        why = f"model_type {model_type!r} is not one of the families served without torch ({NATIVE_TYPES})"
    return (
        f"MODEL_ID={settings.model_id}: {why}, and the {backend} backend needs {' and '.join(missing)}, which this "
        "install lacks (pip install -r requirements-torch.txt, or serve a model of those families)"
    )


def _installed(package: str) -> bool:
    try:
        return importlib.util.find_spec(package) is not None
    except (ImportError, ValueError):
        return False
