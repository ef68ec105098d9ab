"""A GGUF file written from a tiny checkpoint as llama.cpp's convert_hf_to_gguf.py writes it, so that the
service's GGUF import can be held to the checkpoint it came from (tests/test_gguf_import.py).

Only the `gguf` library (numpy): its GGUFWriter, its TensorNameMap for the tensor names, gguf.quants for
Q8_0. What each family writes follows llama.cpp's converter (conversion/base.py, llama.py, qwen.py,
phi.py, granite.py, gemma.py of llama.cpp at llama-cpp-python 0.3.36): the shared hyperparameters of
`TextModel.set_gguf_parameters`, plus per family:
- Llama (and Mistral, Granite, SmolLM3, its subclasses): q and k rows permuted into GGML's rotary
  layout (`LlamaModel.permute`), `rope.dimension_count`, `vocab_size`; Llama 3's RoPE scaling as a
  `rope_freqs` tensor (one divisor per frequency), linear scaling as metadata.
  Mistral is written as `llama`: nothing of its sliding window. YaRN as metadata; dynamic NTK not at all.
- Phi-3: its own hyperparameters (`rope.dimension_count` = the rotated width, `attention.sliding_window`,
  0 for none), fused weights as they are; LongRoPE's factors as two tensors.
- Granite: the four multipliers as `*_scale` keys; no head_dim.
- Gemma 3: every norm weight + 1 (GGML's RMSNorm multiplies by the weight alone), `attention.key_length`,
  its sliding window.
The tokenizer: a GPT-2-style byte-level BPE (`tokenizer.ggml.model` gpt2), its tokens, types and merges,
as `_set_vocab_gpt2` writes them.

Checked once against llama.cpp's converter itself (not run by the tests: it needs llama.cpp's source),
its tokenizer-hash check and Phi-3's SentencePiece assumption bypassed for the tiny GPT-2 tokenizer:
the same metadata but `general.name`, and the same tensors, F32 and Q8_0, for every variant of
tests/models.py and for YaRN, dynamic-NTK and LongRoPE ones.
"""

from __future__ import annotations

import json
import math
import os

import gguf
import numpy as np
from safetensors.numpy import load_file

# model_type -> llama.cpp's architecture (Mistral's HF class converts as Llama)
ARCHITECTURES = {
    "llama": gguf.MODEL_ARCH.LLAMA,
    "mistral": gguf.MODEL_ARCH.LLAMA,
    "qwen2": gguf.MODEL_ARCH.QWEN2,
    "qwen3": gguf.MODEL_ARCH.QWEN3,
    "phi3": gguf.MODEL_ARCH.PHI3,
    "granite": gguf.MODEL_ARCH.GRANITE,
    "smollm3": gguf.MODEL_ARCH.SMOLLM3,
    "gemma3_text": gguf.MODEL_ARCH.GEMMA3,
    "gemma3": gguf.MODEL_ARCH.GEMMA3,
}
PERMUTED = {"llama", "mistral", "granite", "smollm3"}  # LlamaModel's subclasses with undo_permute

def not_carried(config: dict) -> dict:
    """What a llama.cpp GGUF of this checkpoint cannot say, as llama.cpp (and the import) then read it:
    config keys for `from_pretrained`, to build the test's reference from the same weights. Dynamic-NTK
    RoPE is not written (plain RoPE), nor YaRN's mscale, mscale_all_dim and truncate; Mistral's file has no sliding window (full attention); Gemma 3's has no layer pattern (every 6th layer full)
    nor query_pre_attn_scalar (the head width, but 27B's). Released Gemma 3s use exactly those; the
    tiny one does not, so that its native graph is tested on them."""
    rope = _rope(config)
    if rope.get("rope_type") == "dynamic":  # llama.cpp writes nothing of it: plain RoPE
        return {"rope_parameters": {"rope_type": "default", "rope_theta": rope.get("rope_theta", 10000.0)}}
    if rope.get("rope_type") == "yarn":  # nor YaRN's mscale, mscale_all_dim and truncate: their defaults
        return {"rope_parameters": {k: v for k, v in rope.items() if k not in ("mscale", "mscale_all_dim", "truncate")}}
    if config["model_type"] == "mistral":
        return {"sliding_window": None}
    if config["model_type"] == "gemma3_text":
        n = config["num_hidden_layers"]
        full = [(i + 1) % 6 == 0 or not config.get("sliding_window") for i in range(n)]
        return {"layer_types": ["full_attention" if f else "sliding_attention" for f in full],
                "query_pre_attn_scalar": _head_dim(config)}
    return {}


def architecture_name(model_type: str) -> str:
    return gguf.MODEL_ARCH_NAMES[ARCHITECTURES[model_type]]


def write_gguf(model_dir: str, out_path: str, qtype: str = "F32") -> str:
    """`model_dir` (a tiny `save_pretrained` checkpoint) as a GGUF file, its 2-D weights in `qtype`
    (F32 or Q8_0; norms, biases and rope_freqs stay F32, as llama.cpp keeps them)."""
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        config = json.load(f)
    model_type = config["model_type"]
    arch = ARCHITECTURES[model_type]
    writer = gguf.GGUFWriter(out_path, gguf.MODEL_ARCH_NAMES[arch])
    writer.add_type(gguf.GGUFType.MODEL)
    # a name of its own, as llama.cpp takes one from the directory (transformers reads a file named
    # exactly "mistral" as its own model_type, which its import then fails on)
    writer.add_name("Tiny " + os.path.basename(os.path.normpath(model_dir)))
    file_type = gguf.LlamaFileType.ALL_F32 if qtype == "F32" else gguf.LlamaFileType.MOSTLY_Q8_0
    _hyperparameters(writer, config, file_type)
    _vocabulary(writer, model_dir, config)
    for name, data in _tensors(model_dir, config):
        raw = getattr(gguf.GGMLQuantizationType, qtype)
        if data.ndim < 2 or name.endswith("_norm.weight") or raw == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(name, data.astype(np.float32))
        else:
            writer.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), raw), raw_dtype=raw)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out_path


def _rope(config: dict) -> dict:
    return config.get("rope_parameters") or config.get("rope_scaling") or {}


def _head_dim(config: dict) -> int:
    return config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]


def _hyperparameters(w: gguf.GGUFWriter, c: dict, file_type: int) -> None:
    model_type, rope = c["model_type"], _rope(c)
    if model_type == "phi3":  # Phi3MiniModel.set_gguf_parameters: its own, complete list
        rotated = int(rope.get("partial_rotary_factor", c.get("partial_rotary_factor", 1.0)) * c["hidden_size"])
        original = rope.get("original_max_position_embeddings", c.get("original_max_position_embeddings"))
        w.add_context_length(c["max_position_embeddings"])
        w.add_rope_scaling_orig_ctx_len(original)
        w.add_embedding_length(c["hidden_size"])
        w.add_feed_forward_length(c["intermediate_size"])
        w.add_block_count(c["num_hidden_layers"])
        w.add_head_count(c["num_attention_heads"])
        w.add_head_count_kv(c["num_key_value_heads"])
        w.add_layer_norm_rms_eps(c["rms_norm_eps"])
        w.add_rope_dimension_count(rotated // c["num_attention_heads"])
        w.add_rope_freq_base(rope.get("rope_theta", c.get("rope_theta")))
        w.add_file_type(file_type)
        w.add_sliding_window(c.get("sliding_window") or 0)
        if rope.get("long_factor"):  # LongRoPE (Phi-3.5, Phi-4-mini): its attention factor, its factors as tensors
            scale = c["max_position_embeddings"] / original
            w.add_rope_scaling_attn_factors(math.sqrt(1 + math.log(scale) / math.log(original)) if scale > 1 else 1.0)
        return
    if model_type == "granite":
        c = {k: v for k, v in c.items() if k != "head_dim"}  # GraniteModel pops it
    w.add_block_count(c["num_hidden_layers"])
    w.add_context_length(c["max_position_embeddings"])
    w.add_embedding_length(c["hidden_size"])
    w.add_feed_forward_length(c["intermediate_size"])
    w.add_head_count(c["num_attention_heads"])
    w.add_head_count_kv(c["num_key_value_heads"])
    full = rope.get("full_attention", rope)  # Gemma 3: one RoPE per kind of layer
    kind = full.get("rope_type", full.get("type", "default"))
    if kind == "linear":
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(full["factor"])
    elif kind == "yarn":
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(full["factor"])
        w.add_rope_scaling_orig_ctx_len(full["original_max_position_embeddings"])
        for key, add in (("extrapolation_factor", w.add_rope_scaling_yarn_ext_factor),
                         ("attention_factor", w.add_rope_scaling_yarn_attn_factor),
                         ("beta_fast", w.add_rope_scaling_yarn_beta_fast), ("beta_slow", w.add_rope_scaling_yarn_beta_slow)):
            if full.get(key) is not None:
                add(full[key])
    elif kind == "longrope":
        w.add_rope_scaling_type(gguf.RopeScalingType.LONGROPE)
    w.add_rope_freq_base(full.get("rope_theta", c.get("rope_theta")))
    if "sliding_attention" in rope:
        w.add_rope_freq_base_swa(rope["sliding_attention"]["rope_theta"])
    w.add_layer_norm_rms_eps(c["rms_norm_eps"])
    if c.get("head_dim") is not None:
        w.add_key_length(c["head_dim"])
        w.add_value_length(c["head_dim"])
    w.add_file_type(file_type)
    if model_type in PERMUTED:  # LlamaModel.set_gguf_parameters
        w.add_vocab_size(c["vocab_size"])
        w.add_rope_dimension_count(_head_dim(c))
    if model_type == "granite":
        w.add_attention_scale(c["attention_multiplier"])
        w.add_embedding_scale(c["embedding_multiplier"])
        w.add_residual_scale(c["residual_multiplier"])
        w.add_logit_scale(c["logits_scaling"])
    if model_type == "gemma3_text":
        w.add_key_length(_head_dim(c))
        w.add_value_length(_head_dim(c))
        if c.get("final_logit_softcapping"):
            w.add_final_logit_softcapping(c["final_logit_softcapping"])
        if c.get("sliding_window_pattern") != 1:
            w.add_sliding_window(c["sliding_window"])


def _vocabulary(w: gguf.GGUFWriter, model_dir: str, config: dict) -> None:
    """`_set_vocab_gpt2`: every id's token (added ones CONTROL when special), merges and special ids."""
    with open(os.path.join(model_dir, "tokenizer.json"), encoding="utf-8") as f:
        tokenizer = json.load(f)
    tokens = {i: (t, gguf.TokenType.NORMAL) for t, i in tokenizer["model"]["vocab"].items()}
    for added in tokenizer["added_tokens"]:
        kind = gguf.TokenType.CONTROL if added["special"] else gguf.TokenType.USER_DEFINED
        tokens[added["id"]] = (added["content"], kind)
    ids = range(config["vocab_size"])
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")
    w.add_token_list([tokens.get(i, (f"[PAD{i}]", None))[0] for i in ids])
    w.add_token_types([tokens.get(i, (None, gguf.TokenType.UNUSED))[1] for i in ids])
    gguf.SpecialVocab(model_dir, load_merges=True).add_to_gguf(w)


def _tensors(model_dir: str, config: dict):
    """(GGUF name, numpy array) of every tensor llama.cpp writes, in its layout."""
    model_type = config["model_type"]
    names = gguf.get_tensor_name_map(ARCHITECTURES[model_type], config["num_hidden_layers"])
    weights = load_file(os.path.join(model_dir, "model.safetensors"))
    if config.get("tie_word_embeddings"):
        weights.pop("lm_head.weight", None)  # llama.cpp writes the output matrix only when it is its own
    heads, kv_heads = config["num_attention_heads"], config["num_key_value_heads"]
    for hf_name, data in weights.items():
        base, suffix = hf_name.rsplit(".", 1)
        if model_type in PERMUTED and base.endswith(("q_proj", "k_proj")):
            data = _permute(data, heads, heads if base.endswith("q_proj") else kv_heads)
        if model_type == "gemma3_text" and hf_name.endswith("norm.weight"):
            data = data + 1.0
        yield f"{names.get_name(base)}.{suffix}", data
    if _rope(config).get("rope_type") == "llama3":
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", _llama3_factors(config)
    if model_type == "phi3" and _rope(config).get("long_factor"):  # Phi3MiniModel.generate_extra_tensors
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_LONG] + ".weight", np.array(_rope(config)["long_factor"], np.float32)
        yield gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FACTORS_SHORT] + ".weight", np.array(_rope(config)["short_factor"], np.float32)


def _permute(weights: np.ndarray, n_head: int, n_head_kv: int) -> np.ndarray:
    """`LlamaModel.permute`: each head's rows from (half, pair) to (pair, half) order."""
    n = n_head_kv
    return weights.reshape(n, 2, weights.shape[0] // n // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def _llama3_factors(config: dict) -> np.ndarray:
    """`LlamaModel.generate_extra_tensors`: what each RoPE frequency is divided by under Llama 3 scaling."""
    rope, dim = _rope(config), _head_dim(config)
    freqs = 1.0 / (rope.get("rope_theta", 10000.0) ** (np.arange(0, dim, 2, dtype=np.float32) / dim))
    factor, low, high = rope["factor"], rope["low_freq_factor"], rope["high_freq_factor"]
    old = rope["original_max_position_embeddings"]
    factors = []
    for freq in freqs:
        wavelength = 2 * np.pi / freq
        if wavelength < old / high:
            factors.append(1.0)
        elif wavelength > old / low:
            factors.append(factor)
        else:
            smooth = (old / wavelength - low) / (high - low)
            factors.append(1 / ((1 - smooth) / factor + smooth))
    return np.array(factors, dtype=np.float32)
