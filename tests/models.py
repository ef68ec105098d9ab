"""Tiny Llama-family checkpoints built here (GPT-2's tiny one is devtools/models.make_tiny), and a
chat template to give any of them."""

from __future__ import annotations

import json
import os


# Scaled RoPE as Llama 3.1/3.2 and older long-context checkpoints ship it, with an original context
# (16) short enough that the tiny model's low and middle frequencies are all rescaled.
ROPE_SCALINGS = {
    "llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
               "original_max_position_embeddings": 16, "rope_theta": 10000.0},
    "linear": {"rope_type": "linear", "factor": 4.0, "rope_theta": 10000.0},
}

# The Llama-family variants the native backends serve: transformers' class, and what each config sets
# beyond the shared tiny shape, chosen so that a backend ignoring it gives other logits.
VARIANTS = {
    "llama": ("Llama", {}),
    "llama3-rope": ("Llama", {"rope_parameters": ROPE_SCALINGS["llama3"]}),
    "linear-rope": ("Llama", {"rope_parameters": ROPE_SCALINGS["linear"]}),
    "qwen2": ("Qwen2", {"tie_word_embeddings": False}),  # q/k/v biases (randomised below); an untied head
    "qwen3": ("Qwen3", {"head_dim": 24}),  # per-head q/k norms; a head width that is not 64 / 4
    "smollm3": ("SmolLM3", {"no_rope_layer_interval": 2}),  # every 2nd layer without RoPE (every 4th in real ones)
    "mistral": ("Mistral", {"sliding_window": 8}),  # crossed by the tests' 23-30-token sequences
    "granite": ("Granite", {"embedding_multiplier": 3.0, "residual_multiplier": 0.5, "attention_multiplier": 0.3,
                            "logits_scaling": 2.5}),
    "phi3": ("Phi3", {"partial_rotary_factor": 0.75, "sliding_window": 12}),  # fused weights; RoPE on 3/4 of a head
}


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
    config = getattr(transformers, family + "Config")(**{**shape, **extra})
    model = getattr(transformers, family + "ForCausalLM")(config)
    for layer in model.model.layers:  # random where the default (zeros, ones) would hide a weight left out
        attention = layer.self_attn
        for proj in (getattr(attention, name, None) for name in ("q_proj", "k_proj", "v_proj")):
            if proj is not None and proj.bias is not None:
                torch.nn.init.normal_(proj.bias, std=0.5)
        for norm in (getattr(attention, name, None) for name in ("q_norm", "k_norm")):
            if norm is not None:
                torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


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
    model.save_pretrained(model_dir)
    return model_dir


# ChatML, the template SmolLM2-Instruct uses: enough to show the route renders the model's own template.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def add_chat_template(model_dir: str, template: str = CHATML) -> str:
    """Give a saved model's tokenizer a chat template (in its tokenizer_config.json)."""
    path = os.path.join(model_dir, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config["chat_template"] = template
    with open(path, "w") as f:
        json.dump(config, f)
    return model_dir
