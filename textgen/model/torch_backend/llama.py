"""Llama family in plain torch, over the engine's KV cache: Llama, SmolLM2, Mistral's sliding window,
Phi-3's fused projections and partial RoPE, Qwen2's q/k/v biases, Qwen3's per-head q/k norms, SmolLM3's
layers without RoPE and Granite's multipliers.

RMSNorm, rotary position embeddings (transformers' half-split layout, which its checkpoints assume),
grouped-query attention, SwiGLU MLP. Queries, keys and values share one fused projection, and so do
the MLP's gate and up projections. RoPE of config.ROPE_TYPES and full attention only: which configs
come here is decided in config.py.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import attention_window, llama_shape, multipliers, rope_layers, rotary_dim
from ..rope import rope_tables
from ..kv_cache import KVCache
from .checkpoint import Checkpoint
from .layers import attend, attention_mask, embedding_and_head, make_linear, pick_positions

class Block(nn.Module):
    def __init__(self, get, prefix: str, quantize: str, skinny: bool):
        super().__init__()

        def bias(name):
            return get(name) if get.has(name) else None

        self.input_norm = get(prefix + "input_layernorm.weight")
        attn = prefix + "self_attn."
        fused = get.has(attn + "qkv_proj.weight")  # Phi-3's checkpoints store them fused already
        qkv_w = get(attn + "qkv_proj.weight") if fused else torch.cat([get(attn + f"{p}_proj.weight") for p in "qkv"])
        biases = [bias(attn + f"{p}_proj.bias") for p in "qkv"]
        qkv_b = torch.cat(biases) if all(b is not None for b in biases) else None
        self.qkv = make_linear(qkv_w, qkv_b, quantize, skinny)
        del qkv_w
        self.o = make_linear(get(attn + "o_proj.weight"), bias(attn + "o_proj.bias"), quantize, skinny)
        # Qwen3: RMSNorm over each head's query and key (weights [head_dim]), before the rotary positions.
        self.q_norm, self.k_norm = bias(attn + "q_norm.weight"), bias(attn + "k_norm.weight")
        self.post_norm = get(prefix + "post_attention_layernorm.weight")
        mlp = prefix + "mlp."
        fused = get.has(mlp + "gate_up_proj.weight")  # Phi-3: [gate; up] already
        gate_up = get(mlp + "gate_up_proj.weight") if fused else torch.cat([get(mlp + "gate_proj.weight"), get(mlp + "up_proj.weight")])
        self.gate_up = make_linear(gate_up, None, quantize, skinny)
        del gate_up
        self.down = make_linear(get(mlp + "down_proj.weight"), None, quantize, skinny)


class _Getter:
    def __init__(self, checkpoint: Checkpoint, prefix: str):
        self.checkpoint, self.prefix = checkpoint, prefix

    def __call__(self, name):
        return self.checkpoint.get(self.prefix + name)

    def has(self, name):
        return self.prefix + name in self.checkpoint


class Llama(nn.Module):
    def __init__(self, config: dict, checkpoint: Checkpoint, quantize: str = "none", skinny: bool = False):
        super().__init__()
        get = _Getter(checkpoint, "model.")
        shape = llama_shape(config)
        self.n_layers, self.n_heads, self.n_kv_heads = shape.n_layers, shape.n_heads, shape.n_kv_heads
        self.head_dim, self.context, self.vocab_size = shape.head_dim, shape.context, shape.vocab_size
        self.eps = config.get("rms_norm_eps", 1e-6)
        self.blocks = nn.ModuleList(Block(get, f"layers.{i}.", quantize, skinny) for i in range(self.n_layers))
        self.norm = get("norm.weight")
        tied = config.get("tie_word_embeddings", False) or "lm_head.weight" not in checkpoint
        head = None if tied else "lm_head.weight"
        self.embed, self.lm_head = embedding_and_head(checkpoint, "model.embed_tokens.weight", head, quantize, skinny)
        # Rotary tables for every position (rope.py, the ONNX graph's too), each frequency used twice.
        self.rotated = rotary_dim(config, self.head_dim)  # Phi-4-mini rotates only the leading 3/4 of a head
        cos, sin = (torch.from_numpy(table) for table in rope_tables(config, self.rotated, self.context))
        self.cos, self.sin = torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)
        self.uses_rope = rope_layers(config)
        self.window = attention_window(config)  # Mistral's sliding window, or None
        self.scales = multipliers(config)  # Granite's; 1 and None elsewhere

    def _rope(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x, passed = x[..., : self.rotated], x[..., self.rotated :]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return torch.cat([x * cos + rotated * sin, passed], dim=-1)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        first_slot: int,
        last: Optional[torch.Tensor] = None,
    ) -> Optional[torch.Tensor]:
        """Same contract as GPT2.forward."""
        rows, time = tokens.shape
        x = self.embed(tokens) * self.scales.embedding
        mask = attention_mask(positions, self.window)
        clamped = positions.clamp(max=self.context - 1)
        cos, sin = self.cos[clamped].unsqueeze(2), self.sin[clamped].unsqueeze(2)  # [rows, time, 1, dim]
        q_width, kv_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        for i, block in enumerate(self.blocks):
            # Attention: RMSNorm, fused q/k/v projection, rotary positions on q and k, grouped-query attention.
            h = F.rms_norm(x, (x.shape[-1],), block.input_norm, self.eps)
            q, k, v = block.qkv(h).split([q_width, kv_width, kv_width], dim=-1)
            q, k = q.view(rows, time, self.n_heads, self.head_dim), k.view(rows, time, self.n_kv_heads, self.head_dim)
            if block.q_norm is not None:
                q = F.rms_norm(q, (self.head_dim,), block.q_norm, self.eps)
                k = F.rms_norm(k, (self.head_dim,), block.k_norm, self.eps)
            if self.uses_rope[i]:  # SmolLM3 leaves it out of every fourth layer
                q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            v = v.view(rows, time, self.n_kv_heads, self.head_dim)
            x = x + block.o(attend(q, k, v, cache, i, first_slot, positions, mask, self.scales.attention)) * self.scales.residual
            # SwiGLU MLP: silu(gate) * up, then down.
            h = F.rms_norm(x, (x.shape[-1],), block.post_norm, self.eps)
            gate, up = block.gate_up(h).chunk(2, dim=-1)
            x = x + block.down(F.silu(gate) * up) * self.scales.residual
        if last is None:
            return None
        x = pick_positions(x, last)
        return self.lm_head(F.rms_norm(x, (x.shape[-1],), self.norm, self.eps)) / self.scales.logits
