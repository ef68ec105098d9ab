"""RoPE's tables: position -> cos, sin, for every RoPE type the native families serve (config.ROPE_TYPES),
computed here once, with numpy only, for both native backends (the ONNX graph stores them as
RotaryEmbedding's caches, the torch module indexes them), so the two cannot disagree.

Each type follows transformers' `modeling_rope_utils` (its inverse frequencies and its attention factor,
which multiplies cos and sin and so every rotated channel of q and k), in float32 as transformers
computes them. Two types depend on the sequence in transformers, and are fixed per position here:

- `dynamic` (dynamic NTK) recomputes its base only once a sequence passes max_position_embeddings;
  within it, it is the plain RoPE. The served context is max_position_embeddings (config.Shape.context:
  the engine bounds prompt + new tokens by it), so its table is the plain one.
- `longrope` (Phi-3.5, Phi-4-mini): transformers switches a whole forward call from `short_factor` to
  `long_factor` once the call's sequence passes original_max_position_embeddings, and keeps the keys its
  cache rotated earlier with the short factors. Here each position has its own row: short factors below
  original_max_position_embeddings, long from it on. That is exactly transformers' `generate` when a
  prompt within original_max_position_embeddings grows past it one token at a time; a longer prompt
  prefilled in one call differs (transformers rotates all of it with the long factors). A per-position
  table keeps a row's logits independent of the other rows of its batch and of how its prompt was
  chunked, and a cached key valid whatever comes after it (prefix cache). vLLM instead uses the long
  factors everywhere when its context is longer than original_max_position_embeddings.
"""

from __future__ import annotations

import math

import numpy as np

from .config import ROPE_TYPES, rope_parameters, rope_theta, rope_type


def rope_tables(config: dict, rotated: int, positions: int, params: dict | None = None):
    """cos and sin [positions, rotated / 2] (float32) for rotate-half RoPE over the `rotated` leading
    channels of a head, as the config's RoPE type defines them, the attention factor included.
    `params`: one layer's RoPE parameters, where they are not the config's own."""
    kind = rope_type(config) if params is None else _kind_of(config, params)
    params = rope_parameters(config) if params is None else params
    if kind not in ROPE_TYPES:
        raise ValueError(f"RoPE type {kind!r} is not computed here (native RoPE types: {', '.join(ROPE_TYPES)})")
    theta = float(params.get("rope_theta", rope_theta(config)))
    steps = np.arange(0, rotated, 2, dtype=np.float32) / rotated  # 2i / dim
    position = np.arange(positions, dtype=np.float32)
    if kind == "longrope":
        short, long, attention = _longrope(config, params, theta, steps)
        split = min(_original_context(config, params), positions)
        angles = np.concatenate([np.outer(position[:split], short), np.outer(position[split:], long)])
    else:
        inv_freq, attention = _inv_freq(kind, config, params, theta, steps)
        angles = np.outer(position, inv_freq)
    angles = angles.astype(np.float32)
    return (np.cos(angles) * attention).astype(np.float32), (np.sin(angles) * attention).astype(np.float32)


def _kind_of(config: dict, params: dict) -> str:
    return rope_type({"model_type": config.get("model_type"), "rope_parameters": params})


def _inv_freq(kind: str, config: dict, params: dict, theta: float, steps: np.ndarray):
    """The inverse frequencies [dim / 2] and the attention factor of every type but longrope."""
    dim = 2 * len(steps)
    plain = (1.0 / theta**steps).astype(np.float32)
    if kind == "default":
        return plain, 1.0
    if kind == "dynamic":
        # transformers' NTK base for a sequence of seq_len, here the whole context: the plain base.
        context = config.get("max_position_embeddings", 2048)
        factor, seq_len = float(params["factor"]), context
        base = theta * ((factor * seq_len / context) - (factor - 1)) ** (dim / (dim - 2))
        return (1.0 / base**steps).astype(np.float32), 1.0
    if kind == "yarn":
        return _yarn(config, params, theta, steps)
    factor = float(params["factor"])
    if kind == "linear":
        return (plain / factor).astype(np.float32), 1.0
    return _llama3(params, _original_context(config, params), factor, plain), 1.0


def _llama3(params: dict, old_context: float, factor: float, inv_freq: np.ndarray) -> np.ndarray:
    """Llama 3.1/3.2: the low frequencies (wavelengths past original_max_position_embeddings /
    low_freq_factor) divided by `factor`, the middle band blended smoothly, the high ones kept."""
    low, high = float(params["low_freq_factor"]), float(params["high_freq_factor"])
    wavelen = 2 * np.pi / inv_freq
    scaled = np.where(wavelen > old_context / low, inv_freq / factor, inv_freq)
    smooth = (old_context / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= old_context / high) & (wavelen <= old_context / low)
    return np.where(medium, smoothed, scaled).astype(np.float32)


def _yarn(config: dict, params: dict, theta: float, steps: np.ndarray):
    """YaRN (Qwen3's long context): the frequencies that turn fewer than `beta_slow` times over the
    original context divided by `factor`, those turning more than `beta_fast` times kept, a linear ramp
    between (over channels, the bounds rounded outwards when `truncate`), and cos and sin multiplied by
    the attention factor (given, or from `factor`, `mscale` and `mscale_all_dim`)."""
    dim = 2 * len(steps)
    old_context = _original_context(config, params)
    factor = params.get("factor")
    factor = float(factor) if factor is not None else config["max_position_embeddings"] / old_context

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention = params.get("attention_factor")
    if attention is None:
        m, m_all = params.get("mscale"), params.get("mscale_all_dim")
        attention = mscale(factor, m) / mscale(factor, m_all) if m and m_all else mscale(factor)

    def channel(turns: float) -> float:  # the channel whose frequency turns `turns` times over the context
        return dim * math.log(old_context / (turns * 2 * math.pi)) / (2 * math.log(theta))

    low, high = channel(params.get("beta_fast") or 32), channel(params.get("beta_slow") or 1)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001  # as transformers: no division by zero
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - low) / (high - low), 0, 1).astype(np.float32)
    kept = (1 - ramp).astype(np.float32)  # 1: the original frequency, 0: divided by factor
    turns = (theta**steps).astype(np.float32)
    interpolated, extrapolated = (1.0 / (factor * turns)).astype(np.float32), (1.0 / turns).astype(np.float32)
    return (interpolated * (1 - kept) + extrapolated * kept).astype(np.float32), float(attention)


def _longrope(config: dict, params: dict, theta: float, steps: np.ndarray):
    """Phi-3.5/Phi-4-mini: each frequency divided by its own factor (`short_factor` or `long_factor`,
    one per frequency), and cos and sin multiplied by the attention factor (given, or
    sqrt(1 + ln(factor) / ln(original context)), `factor` by default max / original context)."""
    old_context = _original_context(config, params)
    factor = params.get("factor")
    factor = float(factor) if factor is not None else config["max_position_embeddings"] / old_context
    attention = params.get("attention_factor")
    if attention is None:
        attention = 1.0 if factor <= 1.0 else math.sqrt(1 + math.log(factor) / math.log(old_context))
    base = (theta**steps).astype(np.float32)

    def inv_freq(name: str) -> np.ndarray:
        return (1.0 / (np.asarray(params[name], dtype=np.float32) * base)).astype(np.float32)

    return inv_freq("short_factor"), inv_freq("long_factor"), float(attention)


def _original_context(config: dict, params: dict) -> int:
    """original_max_position_embeddings, where transformers reads it: Phi-3's config field (4096 when
    absent) wins over the RoPE parameters'; elsewhere the RoPE parameters', else max_position_embeddings."""
    if config.get("model_type") == "phi3":
        return int(config.get("original_max_position_embeddings", 4096))
    return int(params.get("original_max_position_embeddings", config.get("max_position_embeddings", 2048)))
