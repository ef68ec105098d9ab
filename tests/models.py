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


def make_tiny_llama(
    out_dir: str, tokenizer_dir: str, qwen2: bool = False, seed: int = 0, rope: str = "default", qwen3: bool = False,
    smollm3: bool = False, mistral: bool = False, granite: bool = False, phi3: bool = False,
) -> str:
    """A 2-layer Llama (or Qwen2, with q/k/v biases; or Qwen3, with per-head q/k norms and a head_dim of
    its own, 24 against 64 / 4) with grouped-query attention (4 heads, 2 KV heads) and the tiny GPT-2's
    tokenizer, saved with `save_pretrained`; `rope`: a key of ROPE_SCALINGS to scale its RoPE. `smollm3`:
    SmolLM3, whose every second layer here (every fourth in the real ones) has no RoPE. `mistral`: Mistral
    with a sliding window of 8, which the tests' 30-token sequences cross. `granite`: Granite, with
    multipliers far from 1 so that a missing one shows. `phi3`: Phi-3, with its fused projections, RoPE
    on 3/4 of each head (as Phi-4-mini) and a sliding window of 12."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM
    from transformers import Phi3Config, Phi3ForCausalLM
    from transformers import GraniteConfig, GraniteForCausalLM, MistralConfig, MistralForCausalLM, Qwen3Config, Qwen3ForCausalLM, SmolLM3Config, SmolLM3ForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
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
        tie_word_embeddings=not qwen2,  # one of each: tied and untied LM heads
    )
    if rope != "default":
        shape["rope_parameters"] = ROPE_SCALINGS[rope]
    torch.manual_seed(seed)
    if qwen3:
        model = Qwen3ForCausalLM(Qwen3Config(**shape, head_dim=24))
        for layer in model.model.layers:  # norms of ones would hide a norm whose weight is left out
            for norm in (layer.self_attn.q_norm, layer.self_attn.k_norm):
                torch.nn.init.uniform_(norm.weight, 0.5, 1.5)
    elif phi3:
        config = Phi3Config(**shape, partial_rotary_factor=0.75, sliding_window=12, pad_token_id=tokenizer.eos_token_id)
        model = Phi3ForCausalLM(config)
    elif granite:
        multipliers = dict(embedding_multiplier=3.0, residual_multiplier=0.5, attention_multiplier=0.3, logits_scaling=2.5)
        model = GraniteForCausalLM(GraniteConfig(**shape, **multipliers))
    elif mistral:
        model = MistralForCausalLM(MistralConfig(**shape, sliding_window=8))
    elif smollm3:
        model = SmolLM3ForCausalLM(SmolLM3Config(**shape, no_rope_layer_interval=2, pad_token_id=tokenizer.eos_token_id))
    elif qwen2:
        model = Qwen2ForCausalLM(Qwen2Config(**shape))
    else:
        model = LlamaForCausalLM(LlamaConfig(**shape))
    if qwen2:  # random biases, so that a native module ignoring them would be caught
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                torch.nn.init.normal_(proj.bias, std=0.5)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


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
