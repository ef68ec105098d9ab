"""Tiny Llama-family checkpoints built here (GPT-2's tiny one is devtools/models.make_tiny), and a
chat template to give any of them."""

from __future__ import annotations

import json
import os

from devtools.models import CHATML, add_chat_template  # noqa: F401  (the tests import them from here)


# Scaled RoPE as Llama 3.1/3.2, Qwen3, Phi-3.5/Phi-4-mini and older long-context checkpoints ship it,
# with an original context (16) short enough that the tiny model's low and middle frequencies are all
# rescaled and that the tests' 23-30-token sequences cross it.
ROPE_SCALINGS = {
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
    # A low base (100), so that YaRN's ramp spans channels 0.6 to 6 of 12 (not whole channels: `truncate`
    # off), and an attention factor from mscale / mscale_all_dim (1.19).
    "yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "beta_fast": 2.0,
             "beta_slow": 0.25, "mscale": 2.0, "mscale_all_dim": 0.5, "truncate": False, "rope_theta": 100.0},
    # The plain RoPE within max_position_embeddings, in transformers as here (textgen/model/rope.py).
    "dynamic": {"rope_type": "dynamic", "factor": 2.0, "rope_theta": 10000.0},
    # One factor per rotated frequency (Phi-3's 3/4 of 16 channels: 6); Phi-3 reads the original context
    # (16) from its config, not from here; the attention factor follows from 256 / 16 (sqrt(2)).
    "longrope": {"rope_type": "longrope", "short_factor": [1.0, 1.3, 1.7, 2.2, 2.9, 3.8],
                 "long_factor": [1.5, 2.5, 4.0, 6.0, 9.0, 14.0], "rope_theta": 10000.0},
}

# The Llama-family variants the native backends serve: transformers' class, and what each config sets
# beyond the shared tiny shape, chosen so that a backend ignoring it gives other logits.
VARIANTS = {
    "llama": ("Llama", {}),
    "llama3-rope": ("Llama", {"rope_parameters": ROPE_SCALINGS["llama3"]}),
    "linear-rope": ("Llama", {"rope_parameters": ROPE_SCALINGS["linear"]}),
    "dynamic-rope": ("Llama", {"rope_parameters": ROPE_SCALINGS["dynamic"]}),
    "yarn-rope": ("Qwen3", {"head_dim": 24, "rope_parameters": ROPE_SCALINGS["yarn"]}),
    "qwen2": ("Qwen2", {"tie_word_embeddings": False}),  # q/k/v biases (randomised below); an untied head
    "qwen3": ("Qwen3", {"head_dim": 24}),  # per-head q/k norms; a head width that is not 64 / 4
    "smollm3": ("SmolLM3", {"no_rope_layer_interval": 2}),  # every 2nd layer without RoPE (every 4th in real ones)
    "mistral": ("Mistral", {"sliding_window": 8}),  # crossed by the tests' 23-30-token sequences
    "granite": ("Granite", {"embedding_multiplier": 3.0, "residual_multiplier": 0.5, "attention_multiplier": 0.3,
                            "logits_scaling": 2.5}),
    "phi3": ("Phi3", {"partial_rotary_factor": 0.75, "sliding_window": 12}),  # fused weights; RoPE on 3/4 of a head
    "phi3-longrope": ("Phi3", {"partial_rotary_factor": 0.75, "original_max_position_embeddings": 16,
                               "rope_parameters": ROPE_SCALINGS["longrope"]}),
    # A sliding layer (window 8, its own RoPE base) beside a full one (scaled RoPE, as from Gemma 3 4B up);
    # scores scaled by query_pre_attn_scalar, not head_dim; its zero-initialised norms randomised below.
    "gemma3": ("Gemma3", {"head_dim": 24, "query_pre_attn_scalar": 40, "sliding_window": 8,
                          "layer_types": ["sliding_attention", "full_attention"],
                          "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 100.0},
                                              "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0}}}),
}
# transformers' config class, where it is not the family's name + "Config" (Gemma3Config is the multimodal one)
CONFIG_CLASSES = {"Gemma3": "Gemma3TextConfig"}


def make_tiny_llama(out_dir: str, tokenizer_dir: str, variant: str = "llama", seed: int = 0) -> str:
    """A 2-layer Llama-family model (a key of VARIANTS) with grouped-query attention (4 heads, 2 KV heads)
    and the tiny GPT-2's tokenizer, saved with `save_pretrained`."""
    import torch
    import transformers

    tokenizer = transformers.AutoTokenizer.from_pretrained(tokenizer_dir)
    family, extra = VARIANTS[variant]
    shape = dict(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=160,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        rope_theta=10000.0,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(seed)
    if family in ("SmolLM3", "Phi3"):  # their default pad ids lie outside the tiny vocabulary
        shape["pad_token_id"] = tokenizer.eos_token_id
    config = getattr(transformers, CONFIG_CLASSES.get(family, family + "Config"))(**{**shape, **extra})
    model = getattr(transformers, family + "ForCausalLM")(config)
    for layer in model.model.layers:  # random where the default (zeros, ones) would hide a weight left out
        attention = layer.self_attn
        for proj in (getattr(attention, name, None) for name in ("q_proj", "k_proj", "v_proj")):
            if proj is not None and proj.bias is not None:
                torch.nn.init.normal_(proj.bias, std=0.5)
        for norm in (getattr(attention, name, None) for name in ("q_norm", "k_norm")):
            if norm is not None:
                torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    for module in model.modules():  # Gemma's norms are applied as 1 + weight, and start at 0
        if "RMSNorm" in type(module).__name__ and not module.weight.any():
            torch.nn.init.uniform_(module.weight, -0.5, 0.5)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    if variant in SHIPPED_AS_ROPE_SCALING:
        _as_rope_scaling(os.path.join(out_dir, "config.json"))
    return out_dir


# Variants whose config.json is rewritten the way their real checkpoints ship it (Phi-3.5-mini,
# Phi-4-mini): the older `rope_scaling` with `type`, and the base, the rotary fraction and the original
# context beside it, not inside (transformers 5 writes them all into `rope_parameters`).
SHIPPED_AS_ROPE_SCALING = {"phi3-longrope"}


def _as_rope_scaling(path: str) -> None:
    with open(path) as f:
        config = json.load(f)
    rope = config.pop("rope_parameters")
    config["rope_theta"] = rope.pop("rope_theta")
    config["partial_rotary_factor"] = rope.pop("partial_rotary_factor")
    rope.pop("original_max_position_embeddings")  # Phi-3 reads its config's own (16 here)
    config["rope_scaling"] = {"type": rope.pop("rope_type"), **rope}
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def transformers_logits(model, ids):
    """transformers' logits [n, vocab] at every position of `ids` ([1, n]) under the rule the native
    backends follow: one forward call, except past a longrope model's original context (which
    transformers rotates with the long factors for the whole call): there, as textgen/model/rope.py
    has it, the prompt up to that context in one call, then one token at a time through the cache, so
    each position is rotated with the factors of its own side (transformers' `generate` that way)."""
    import torch

    rope = getattr(model.config, "rope_parameters", None) or {}  # GPT-2 has none
    split = rope["original_max_position_embeddings"] if rope.get("rope_type") == "longrope" else ids.shape[1]
    out = model(ids[:, :split], use_cache=True)
    logits = [out.logits[0]]
    for i in range(split, ids.shape[1]):
        out = model(ids[:, i : i + 1], past_key_values=out.past_key_values, use_cache=True)
        logits.append(out.logits[0])
    return torch.cat(logits)


def sharpen(model_dir: str, factor: float = 6.0) -> str:
    """The saved checkpoint with its layers' matrices `factor` times larger, for tests of generated
    tokens. At the initial scale a tiny model's greedy tokens only echo the last prompt token, whatever
    its layers compute (the tied head reads back the embedding the residual stream carries), so a
    wrong layer would go unseen; sharpened, they depend on the whole context."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.ndim == 2 and "embed" not in name:
                weight.mul_(factor)
    with open(os.path.join(model_dir, "config.json")) as f:
        config = f.read()  # as the variant wrote it (SHIPPED_AS_ROPE_SCALING's form kept)
    model.save_pretrained(model_dir)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        f.write(config)
    return model_dir


# ChatML, the template SmolLM2-Instruct uses: enough to show the route renders the model's own template.
# A template that takes tools, written after Qwen 2.5's (Hermes' format): the tools listed in the system
# turn, past calls as <tool_call> blocks (arguments an object), results in a user turn.
HERMES_TOOLS = (
    "{% if tools %}<|im_start|>system\n{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}\n\n{% endif %}"
    "# Tools\n<tools>{% for tool in tools %}\n{{ tool | tojson }}{% endfor %}\n</tools>\n"
    "Call one as <tool_call>{\"name\": ..., \"arguments\": ...}</tool_call><|im_end|>\n"
    "{% elif messages[0]['role'] == 'system' %}<|im_start|>system\n{{ messages[0]['content'] }}<|im_end|>\n{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'tool' %}<|im_start|>user\n<tool_response>\n"
    "{{ message['content'] }}\n</tool_response><|im_end|>\n"
    "{% elif message['role'] != 'system' %}<|im_start|>{{ message['role'] }}\n{{ message['content'] or '' }}"
    "{% for call in message.get('tool_calls') or [] %}\n<tool_call>\n{\"name\": \"{{ call['function']['name'] }}\", "
    "\"arguments\": {{ call['function']['arguments'] | tojson }}}\n</tool_call>{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
