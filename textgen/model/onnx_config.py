"""What the ONNX backend reads from a config.json: which architectures it serves and their shapes.

Shared by the graph builder and the runtime, and free of onnx and torch imports so that the runtime
loads neither (onnx alone is ~10 MB of resident memory).
"""

from __future__ import annotations

from typing import NamedTuple

GPT2_ARCHITECTURES = {"gpt2"}  # as textgen/model/gpt2.py's ARCHITECTURES
LLAMA_ARCHITECTURES = {"llama", "qwen2"}  # as textgen/model/llama.py's ARCHITECTURES


def supports(config: dict) -> bool:
    """The configs the ONNX backend serves: the native modules' (gpt2.ARCHITECTURES, llama.supports),
    restated here because those modules import torch. Plain RoPE and full attention only."""
    if config.get("model_type") in GPT2_ARCHITECTURES:
        return True
    for rope in (config.get("rope_parameters"), config.get("rope_scaling")):
        if rope and rope.get("rope_type", rope.get("type", "default")) != "default":
            return False
    sliding = config.get("use_sliding_window", False) and config.get("sliding_window")
    return config.get("model_type") in LLAMA_ARCHITECTURES and not sliding


class Shape(NamedTuple):
    n_layers: int
    width: int  # hidden size
    n_heads: int
    n_kv_heads: int
    head_dim: int
    context: int  # rows of the position (or rotary) table
    vocab_size: int


def model_shape(config: dict) -> Shape:
    if config.get("model_type") in GPT2_ARCHITECTURES:
        width, heads = config["n_embd"], config["n_head"]
        context = config.get("n_positions") or config.get("n_ctx") or 1024
        return Shape(config["n_layer"], width, heads, heads, width // heads, context, config["vocab_size"])
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
