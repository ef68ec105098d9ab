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
import struct
from typing import NamedTuple, Optional


GPT2_TYPES = {"gpt2"}  # model_type values torch_backend/gpt2.py and the GPT-2 graph serve
# model_type values torch_backend/llama.py and the Llama graph serve
LLAMA_TYPES = {"gemma3_text", "granite", "llama", "mistral", "phi3", "qwen2", "qwen3", "smollm3"}
NATIVE_TYPES = ", ".join(sorted(GPT2_TYPES | LLAMA_TYPES))  # as messages list them


def read_config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def native_family(config: dict) -> Optional[str]:
    """"gpt2" or "llama" when a native definition serves this config, else None."""
    if config.get("model_type") in GPT2_TYPES:
        return "gpt2"
    if config.get("model_type") in LLAMA_TYPES and not_computed(config) is None:
        return "llama"
    return None


# RoPE types the native families compute: every one transformers' Llama-family models use. Their tables
# (position -> cos, sin) are computed in one place, rope.py, for both backends; read its docstring for
# where `dynamic` and `longrope` are fixed per position rather than per forward call as in transformers.
ROPE_TYPES = ("default", "linear", "llama3", "dynamic", "yarn", "longrope")
MLP_ACTIVATIONS = ("silu", "gelu_pytorch_tanh")  # SwiGLU; Gemma 3's GELU (tanh approximation)


def not_computed(config: dict) -> Optional[str]:
    """What in a Llama-family config its native definition does not compute, as a message says it (None:
    nothing); such a config goes to transformers rather than being served wrong."""
    if config.get("model_type") == "gemma3_text":
        kinds = [_kind(params) for params in _gemma3_ropes(config).values()]
    else:
        kinds = [rope_type(config)]
    for kind in kinds:
        if kind not in ROPE_TYPES:
            return f"RoPE {kind!r} (RoPE served: {', '.join(ROPE_TYPES)})"
    # Qwen2/Qwen3's optional window covers only some layers (max_window_layers): not here.
    if config.get("use_sliding_window", False) and config.get("sliding_window"):
        return "a sliding window on some layers (use_sliding_window)"
    if mlp_activation(config) not in MLP_ACTIVATIONS:
        return f"the activation {mlp_activation(config)!r}"
    for capping in ("final_logit_softcapping", "attn_logit_softcapping"):  # Gemma 2's; None in Gemma 3's
        if config.get(capping) is not None:
            return f"{capping} {config[capping]}"
    if config.get("use_bidirectional_attention"):  # EmbeddingGemma's encoder
        return "bidirectional attention"
    return None


def mlp_activation(config: dict) -> str:
    """The gated MLP's activation: act(gate) * up (Gemma names it `hidden_activation`)."""
    if config.get("model_type") == "gemma3_text":
        return config.get("hidden_activation") or "gelu_pytorch_tanh"
    return config.get("hidden_act") or "silu"


class Multipliers(NamedTuple):
    """Granite's scalings of a Llama, and Gemma 3's of its embeddings and scores (1 and None elsewhere):
    the embeddings, each residual branch, the attention scores (None: 1 / sqrt(head_dim)) and the logits
    (divided by `logits`)."""

    embedding: float = 1.0
    residual: float = 1.0
    attention: Optional[float] = None
    logits: float = 1.0


def _float32(x: float) -> float:
    # Rounded as numpy's float32 would be, without numpy: gunicorn's master reads configs (preflight.py).
    return struct.unpack("f", struct.pack("f", x))[0]


def multipliers(config: dict) -> Multipliers:
    """Granite's multipliers; Gemma 3's embeddings scaled by sqrt(hidden_size) (rounded to float32, as
    transformers casts it to the float32 table's dtype) and scores by query_pre_attn_scalar ** -0.5."""
    if config.get("model_type") == "gemma3_text":
        scores = float(config.get("query_pre_attn_scalar", 256)) ** -0.5
        return Multipliers(_float32(config["hidden_size"] ** 0.5), attention=scores)
    if config.get("model_type") != "granite":
        return Multipliers()
    return Multipliers(
        float(config.get("embedding_multiplier", 1.0)),
        float(config.get("residual_multiplier", 1.0)),
        float(config.get("attention_multiplier", 1.0)),
        float(config.get("logits_scaling", 1.0)),
    )


class Norms(NamedTuple):
    """How a Llama-family layer normalises (Gemma 3 differs): RMSNorm weights applied as `offset +
    weight` (Gemma: 1 + weight, its weights centred on 0), and `sandwich`: each branch's output is
    normalised too before its residual add (`post_attention_layernorm`, `post_feedforward_layernorm`),
    the MLP's input then by `pre_feedforward_layernorm` (Llama's `post_attention_layernorm`)."""

    offset: float = 0.0
    sandwich: bool = False


def norms(config: dict) -> Norms:
    return Norms(1.0, True) if config.get("model_type") == "gemma3_text" else Norms()


def layer_types(config: dict) -> list:
    """Each layer's attention, "sliding_attention" or "full_attention" (transformers' names): Mistral's
    and Phi-3's window covers every layer; Gemma 3's its `layer_types`, or in older configs every layer
    but each `sliding_window_pattern`-th (6); the others attend to every earlier position."""
    n, model_type = config["num_hidden_layers"], config.get("model_type")
    if model_type in ("mistral", "phi3") and config.get("sliding_window"):
        return ["sliding_attention"] * n
    if model_type != "gemma3_text":
        return ["full_attention"] * n
    if config.get("layer_types"):
        return list(config["layer_types"])
    pattern = config.get("sliding_window_pattern", config.get("_sliding_window_pattern", 6))
    return ["sliding_attention" if (i + 1) % pattern else "full_attention" for i in range(n)]


def attention_windows(config: dict) -> list:
    """Each layer's sliding window: each query sees the last `sliding_window` positions, itself included
    (transformers' mask: key > query - window, Mistral's and Gemma 3's alike); None: every earlier
    position."""
    return [config.get("sliding_window") if kind == "sliding_attention" else None for kind in layer_types(config)]


def layer_rope(config: dict) -> list:
    """Each layer's RoPE parameters where they are not the config's own (rope.rope_tables' `params`;
    None: the config's): Gemma 3's two layer kinds have their own (transformers 5 writes them under
    `rope_parameters` by layer type; older configs have the full layers' `rope_theta` (1e6) and
    `rope_scaling` (linear, factor 8 from 4B up) and the sliding ones' `rope_local_base_freq` (1e4),
    unscaled). The same object for layers alike, so that a backend builds one table per object."""
    if config.get("model_type") != "gemma3_text":
        return [None] * config["num_hidden_layers"]
    ropes = _gemma3_ropes(config)
    return [ropes[kind] for kind in layer_types(config)]


def _gemma3_ropes(config: dict) -> dict:
    return {kind: _gemma3_rope(config, kind) for kind in ("sliding_attention", "full_attention")}


def _gemma3_rope(config: dict, kind: str) -> dict:
    given = config.get("rope_parameters") or {}
    if given.get(kind):
        return dict(given[kind])
    if kind == "full_attention":
        return {**(config.get("rope_scaling") or {}), "rope_theta": config.get("rope_theta", 1e6)}
    return {"rope_type": "default", "rope_theta": config.get("rope_local_base_freq", 1e4)}


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
