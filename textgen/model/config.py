"""What a checkpoint says about its model, read without torch or onnx: its config.json, which native
family (the architectures this service defines itself: torch modules and ONNX graphs) can serve it, and
its shape. Every backend takes the shape from here: the native families' from config.json
(`model_shape`), the transformers fallback's from the config object transformers loaded
(`transformers_shape`).

Kept apart from the modules that define the families, so that choosing a backend never imports torch.
Which RoPE type a config has is read here (`rope_type`, `rope_parameters`); what each type computes
(position -> cos, sin) is rope.py's, the one source both native backends take their tables from.
"""

from __future__ import annotations

import json
import os
from typing import NamedTuple, Optional

GPT2_TYPES = {"gpt2"}  # model_type values torch_backend/gpt2.py and the GPT-2 graph serve
LLAMA_TYPES = {"granite", "llama", "mistral", "phi3", "qwen2", "qwen3", "smollm3"}  # model_type values torch_backend/llama.py and the Llama graph serve
NATIVE_TYPES = ", ".join(sorted(GPT2_TYPES | LLAMA_TYPES))  # as messages list them


def read_config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def native_family(config: dict) -> Optional[str]:
    """"gpt2" or "llama" when a native definition serves this config, else None."""
    if config.get("model_type") in GPT2_TYPES:
        return "gpt2"
    if _llama_supported(config):
        return "llama"
    return None


# RoPE types the native families compute: every one transformers' Llama-family models use. Their tables
# (position -> cos, sin) are computed in one place, rope.py, for both backends; read its docstring for
# where `dynamic` and `longrope` are fixed per position rather than per forward call as in transformers.
ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "yarn", "longrope")


def _llama_supported(config: dict) -> bool:
    """RoPE of ROPE_TYPES and full attention only; other RoPE or sliding windows go to transformers."""
    if rope_type(config) not in ROPE_TYPES:
        return False
    # Qwen2/Qwen3's optional window covers only some layers (max_window_layers): not here.
    sliding = config.get("use_sliding_window", False) and config.get("sliding_window")
    return config.get("model_type") in LLAMA_TYPES and not sliding


class Multipliers(NamedTuple):
    """Granite's scalings of a Llama (1 and None elsewhere): the embeddings, each residual branch, the
    attention scores (None: 1 / sqrt(head_dim)) and the logits (divided by `logits`)."""

    embedding: float = 1.0
    residual: float = 1.0
    attention: Optional[float] = None
    logits: float = 1.0


def multipliers(config: dict) -> Multipliers:
    if config.get("model_type") != "granite":
        return Multipliers()
    return Multipliers(
        float(config.get("embedding_multiplier", 1.0)),
        float(config.get("residual_multiplier", 1.0)),
        float(config.get("attention_multiplier", 1.0)),
        float(config.get("logits_scaling", 1.0)),
    )


def attention_window(config: dict) -> Optional[int]:
    """Mistral's and Phi-3's sliding window: each query sees the last `sliding_window` positions, itself
    included (transformers' mask); None: every earlier position."""
    return config.get("sliding_window") if config.get("model_type") in ("mistral", "phi3") else None


def rotary_dim(config: dict, head_dim: int) -> int:
    """The leading channels of each head that RoPE rotates: all, or `partial_rotary_factor` of them
    (Phi-4-mini: 0.75); the rest pass through."""
    factor = rope_parameters(config).get("partial_rotary_factor", config.get("partial_rotary_factor", 1.0))
    return int(head_dim * factor)


def rope_layers(config: dict) -> list:
    """Which layers rotate q and k: all, but SmolLM3's `no_rope_layers` (1 = RoPE, 0 = none; by default
    every `no_rope_layer_interval`-th layer, 4, has none), as transformers reads it."""
    n = config["num_hidden_layers"]
    if config.get("model_type") != "smollm3":
        return [True] * n
    flags = config.get("no_rope_layers")
    if flags is None:
        interval = config.get("no_rope_layer_interval", 4)
        flags = [int((i + 1) % interval != 0) for i in range(n)]
    return [bool(flag) for flag in flags]


def rope_parameters(config: dict) -> dict:
    """RoPE's parameters: transformers 5 writes `rope_parameters`, older configs `rope_scaling`; where
    both are present, the one that scales."""
    given = [rope for rope in (config.get("rope_parameters"), config.get("rope_scaling")) if rope]
    scaling = [rope for rope in given if _kind(rope) != "default"]
    return (scaling or given or [{}])[0]


def _kind(rope: dict) -> str:
    return rope.get("rope_type", rope.get("type", "default"))


def rope_type(config: dict) -> str:
    kind = _kind(rope_parameters(config))
    # Phi-3's older configs call longrope "su" (or "yarn"), which transformers reads as longrope.
    return "longrope" if config.get("model_type") == "phi3" and kind in ("su", "yarn") else kind


def rope_theta(config: dict) -> float:
    """RoPE's base (Llama family); newer configs nest it in `rope_parameters`."""
    return float((config.get("rope_parameters") or {}).get("rope_theta", config.get("rope_theta", 10000.0)))


class Shape(NamedTuple):
    n_layers: int
    width: int  # hidden size
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context: int  # rows of the position (or rotary) table
    vocab_size: int


def model_shape(config: dict) -> Shape:
    """The shape of a native family's model (GPT-2's config names, or Llama's)."""
    return gpt2_shape(config) if native_family(config) == "gpt2" else llama_shape(config)


def gpt2_shape(config: dict) -> Shape:
    width, heads = config["n_embd"], config["n_head"]
    context = config.get("n_positions") or config.get("n_ctx") or 1024
    return Shape(config["n_layer"], width, heads, heads, width // heads, context, config["vocab_size"])


def llama_shape(config: dict) -> Shape:
    width, heads = config["hidden_size"], config["num_attention_heads"]
    return Shape(
        config["num_hidden_layers"],
        width,
        heads,
        config.get("num_key_value_heads") or heads,
        config.get("head_dim") or width // heads,
        config.get("max_position_embeddings", 2048),
        config["vocab_size"],
    )


def transformers_shape(config) -> Shape:
    """The shape of any architecture from transformers' config object (`PretrainedConfig`: its
    attribute names, which alias each family's own, GPT-2's `n_layer` as `num_hidden_layers`...); a
    multimodal config gives its text model's."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return Shape(
        config.num_hidden_layers,
        getattr(config, "hidden_size", None) or heads * head_dim,
        heads,
        getattr(config, "num_key_value_heads", None) or heads,
        head_dim,
        _transformers_context(config),
        config.vocab_size,
    )


def _transformers_context(config) -> int:
    for name in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 2048
