"""What a GGUF file says about its model, read with the `gguf` library (numpy, no torch): its llama.cpp
architecture, and the config keys transformers' GGUF import drops for the families served here.

transformers converts a GGUF file (torch_backend/hf_files.py), through its legacy reader for these
architectures (`modeling_gguf_pytorch_utils`), which maps llama.cpp's `llama`, `qwen2`, `qwen3`,
`phi3` and `gemma3` but reads only part of what llama.cpp's converter writes; the model it builds from
the rest is a different one. `config_overrides` returns what it misses, from the same metadata:
- Qwen3's `attention.key_length` (its head width: 128 in every released Qwen3, the class default,
  but not in general);
- Phi-3's rotated width (`rope.dimension_count`, Phi-4-mini's 3/4 of a head) and its sliding window
  (`attention.sliding_window`, 0 for none);
- RoPE scaling (Llama, Qwen): `linear` and `yarn` as metadata, Llama 3's as the `rope_freqs` tensor
  (one divisor per frequency), from which the `llama3` parameters are solved back (Meta's low and high
  frequency factors, 1 and 4, and the original context that reproduces every divisor; refused
  otherwise); Phi-3's LongRoPE factors, two tensors;
- Gemma 3's attention scale (llama.cpp's: 1/sqrt(head width), but for the 62-layer 27B), the RoPE of
  each kind of layer (the sliding ones' base, the full ones' linear scaling) and its logit soft-capping.
llama.cpp writes no other architectures of the families served (Granite, SmolLM3) in a form
transformers reads: `GGUF_ARCHITECTURES` lists those it does, for the start-up check.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np

# llama.cpp's architectures whose GGUF files this service imports (transformers' legacy reader maps
# them; tests/test_gguf_import.py holds each to its checkpoint). Mistral is written as `llama`.
GGUF_ARCHITECTURES = ("gemma3", "llama", "phi3", "qwen2", "qwen3")


def gguf_architecture(path: str) -> str:
    """`general.architecture` of the GGUF file at `path` (the header only: the tensors are mapped, not read)."""
    return _fields(_reader(path))["general.architecture"]


def config_overrides(path: str) -> dict:
    """The config keys transformers' import of this file gets wrong or leaves out, with their values."""
    reader = _reader(path)
    meta = _fields(reader)
    arch = meta["general.architecture"]
    key = lambda name, default=None: meta.get(f"{arch}.{name}", default)  # noqa: E731
    heads, width = key("attention.head_count"), key("embedding_length")
    overrides: dict = {}
    if arch == "qwen3" and key("attention.key_length"):
        overrides["head_dim"] = key("attention.key_length")
    if arch == "phi3":
        rotary = key("rope.dimension_count") / (width // heads)
        overrides["partial_rotary_factor"] = rotary
        overrides["rope_parameters"] = {"rope_type": "default", "rope_theta": key("rope.freq_base"),
                                        "partial_rotary_factor": rotary, **_longrope(reader, key)}
        overrides["sliding_window"] = key("attention.sliding_window") or None
        if key("rope.scaling.original_context_length"):
            overrides["original_max_position_embeddings"] = key("rope.scaling.original_context_length")
    if arch in ("llama", "qwen2", "qwen3"):
        rope = _scaled_rope(reader, key)
        if rope is not None:
            overrides["rope_parameters"] = rope
    if arch == "gemma3":
        head_dim = key("attention.key_length")
        overrides["query_pre_attn_scalar"] = width // heads if key("block_count") == 62 else head_dim
        overrides["final_logit_softcapping"] = key("final_logit_softcapping")
        full = {"rope_type": "default", "rope_theta": key("rope.freq_base")}
        if key("rope.scaling.type") == "linear":  # Gemma 3 4B and up scale their full layers' RoPE
            full = {**full, "rope_type": "linear", "factor": key("rope.scaling.factor")}
        sliding = {"rope_type": "default", "rope_theta": key("rope.freq_base_swa", 10000.0)}
        overrides["rope_parameters"] = {"full_attention": full, "sliding_attention": sliding}
        if not key("attention.sliding_window"):
            overrides["sliding_window"] = None
            overrides["layer_types"] = ["full_attention"] * key("block_count")
    return overrides


def _scaled_rope(reader, key) -> Optional[dict]:
    """`linear` and `yarn` scaling, written as metadata; Llama 3's, as the `rope_freqs` tensor."""
    theta = key("rope.freq_base", 10000.0)
    if key("rope.scaling.type") == "linear":
        return {"rope_type": "linear", "factor": key("rope.scaling.factor"), "rope_theta": theta}
    if key("rope.scaling.type") == "yarn":
        rope = {"rope_type": "yarn", "factor": key("rope.scaling.factor"), "rope_theta": theta,
                "original_max_position_embeddings": key("rope.scaling.original_context_length")}
        for name, config_key in (("yarn_ext_factor", "extrapolation_factor"), ("yarn_attn_factor", "attention_factor"),
                                 ("yarn_beta_fast", "beta_fast"), ("yarn_beta_slow", "beta_slow")):
            if key(f"rope.scaling.{name}") is not None:
                rope[config_key] = key(f"rope.scaling.{name}")
        return rope
    tensor = next((t for t in reader.tensors if t.name == "rope_freqs.weight"), None)
    if tensor is None:
        return None
    return _llama3_parameters(np.asarray(tensor.data, dtype=np.float64), theta, key("rope.dimension_count"))


def _longrope(reader, key) -> dict:
    """Phi-3.5's and Phi-4-mini's LongRoPE: its two lists of factors, stored as tensors."""
    factors = {t.name: [float(x) for x in t.data] for t in reader.tensors if t.name.startswith("rope_factors_")}
    if "rope_factors_long.weight" not in factors:
        return {}
    return {"rope_type": "longrope", "long_factor": factors["rope_factors_long.weight"],
            "short_factor": factors["rope_factors_short.weight"],
            "original_max_position_embeddings": key("rope.scaling.original_context_length")}


def _llama3_parameters(divisors: np.ndarray, theta: float, dim: int) -> dict:
    """Llama 3's RoPE scaling whose divisors are `divisors` (llama.cpp's `rope_freqs`): 1 for short
    wavelengths, `factor` for long ones, a blend between, set by the original context."""
    factor = float(divisors.max())
    wavelengths = 2 * math.pi * theta ** (np.arange(0, dim, 2) / dim)
    low, high = 1.0, 4.0
    blended = (divisors > 1 + 1e-6) & (divisors < factor - 1e-6)
    if blended.any():  # 1 / divisor = (1 - s) / factor + s, s = (old / wavelength - low) / (high - low)
        s = (1 / divisors[blended] - 1 / factor) / (1 - 1 / factor)
        old = float(np.median(wavelengths[blended] * (s * (high - low) + low)))
    else:  # any original context between the last unscaled wavelength (x high) and the first scaled one
        unscaled, scaled = wavelengths[divisors <= 1 + 1e-6], wavelengths[divisors >= factor - 1e-6]
        old = math.sqrt(high * unscaled.max() * scaled.min()) if len(unscaled) and len(scaled) else 8192.0
    rope = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
            "original_max_position_embeddings": int(round(old)), "rope_theta": theta}
    if not np.allclose(_llama3_divisors(rope, wavelengths), divisors, rtol=1e-4):
        raise ValueError("the GGUF file's rope_freqs are not Llama 3 RoPE scaling with low/high frequency factors 1 and 4")
    return rope


def _llama3_divisors(rope: dict, wavelengths: np.ndarray) -> np.ndarray:
    old, low, high, factor = (rope[k] for k in ("original_max_position_embeddings", "low_freq_factor",
                                                  "high_freq_factor", "factor"))
    smooth = np.clip((old / wavelengths - low) / (high - low), 0.0, 1.0)
    return 1 / ((1 - smooth) / factor + smooth)


def _reader(path: str):
    from gguf import GGUFReader  # requirements-torch.txt: only converting a GGUF file needs it

    return GGUFReader(path)


def _fields(reader) -> dict:
    """The metadata's scalars and strings (arrays, such as the vocabulary, left out)."""
    values = {}
    for name, field in reader.fields.items():
        if len(field.data) != 1:
            continue
        value = field.contents()
        values[name] = value
    return values
