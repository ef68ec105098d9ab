"""Llama family in plain torch, over the engine's KV cache: Llama, SmolLM2, Mistral's sliding window,
Phi-3's fused projections and partial RoPE, Qwen2's q/k/v biases, Qwen3's per-head q/k norms, SmolLM3's
layers without RoPE, Granite's multipliers, and Gemma 3 (scaled embeddings, 1 + weight norms around each
branch, GELU MLP, sliding layers with their own RoPE beside full ones).

RMSNorm, rotary position embeddings (transformers' half-split layout, which its checkpoints assume),
grouped-query attention, gated MLP (SwiGLU). Queries, keys and values share one fused projection, and
so do the MLP's gate and up projections. RoPE of config.ROPE_TYPES only: which configs come here is
decided in config.py (`not_computed`), and so is every difference between the families.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import (
    Norms, attention_windows, layer_rope, llama_shape, mlp_activation, multipliers, norms, rope_layers, rotary_dim,
)
from ..rope import rope_tables
from ..kv_cache import KVCache
from .checkpoint import Checkpoint
from .layers import attend, attention_mask, embedding_and_head, make_linear, pick_positions

class Block(nn.Module):
    def __init__(self, get, prefix: str, quantize: str, skinny: bool, style: Norms):
        super().__init__()

        def bias(name):
            return get(name) if get.has(name) else None

        def norm(name, optional=False):  # Gemma stores its RMSNorm weights centred on 0: applied as 1 + weight
            if optional and not get.has(name):
                return None
            return get(name) + style.offset if style.offset else get(name)

        self.input_norm = norm(prefix + "input_layernorm.weight")
        attn = prefix + "self_attn."
        fused = get.has(attn + "qkv_proj.weight")  # Phi-3's checkpoints store them fused already
        qkv_w = get(attn + "qkv_proj.weight") if fused else torch.cat([get(attn + f"{p}_proj.weight") for p in "qkv"])
        biases = [bias(attn + f"{p}_proj.bias") for p in "qkv"]
        qkv_b = torch.cat(biases) if all(b is not None for b in biases) else None
        self.qkv = make_linear(qkv_w, qkv_b, quantize, skinny)
        del qkv_w
        self.o = make_linear(get(attn + "o_proj.weight"), bias(attn + "o_proj.bias"), quantize, skinny)
        # Qwen3, Gemma 3: RMSNorm over each head's query and key (weights [head_dim]), before the rotary positions.
        self.q_norm, self.k_norm = norm(attn + "q_norm.weight", True), norm(attn + "k_norm.weight", True)
        # The MLP's input norm; Gemma 3 normalises each branch's output too (None elsewhere).
        self.mlp_norm = norm(prefix + ("pre_feedforward_layernorm" if style.sandwich else "post_attention_layernorm") + ".weight")
        self.attention_out_norm = norm(prefix + "post_attention_layernorm.weight") if style.sandwich else None
        self.mlp_out_norm = norm(prefix + "post_feedforward_layernorm.weight") if style.sandwich else None
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
        self.width = shape.width
        self.eps = config.get("rms_norm_eps", 1e-6)
        style = norms(config)
        self.blocks = nn.ModuleList(Block(get, f"layers.{i}.", quantize, skinny, style) for i in range(self.n_layers))
        self.norm = get("norm.weight") + style.offset if style.offset else get("norm.weight")
        tied = config.get("tie_word_embeddings", False) or "lm_head.weight" not in checkpoint
        head = None if tied else "lm_head.weight"
        self.embed, self.lm_head = embedding_and_head(checkpoint, "model.embed_tokens.weight", head, quantize, skinny)
        # Rotary tables for every position (rope.py, the ONNX graph's too), each frequency used twice: one
        # pair per distinct RoPE (Gemma 3: its sliding layers' and its full ones'), and which pair each layer uses.
        self.rotated = rotary_dim(config, self.head_dim)  # Phi-4-mini rotates only the leading 3/4 of a head
        ropes, index = layer_rope(config), {}
        for params in ropes:
            index.setdefault(id(params), len(index))
        distinct = {id(params): params for params in ropes}.values()
        self.rotary_tables = [self._rotary_tables(config, params) for params in distinct]
        self.rotary_of = [index[id(params)] for params in ropes]
        self.uses_rope = rope_layers(config)
        self.windows = attention_windows(config)  # Mistral's sliding window, Gemma 3's on some layers; None: none
        self.scales = multipliers(config)  # Granite's, Gemma 3's; 1 and None elsewhere
        self.gelu = mlp_activation(config) == "gelu_pytorch_tanh"  # Gemma 3; SiLU (SwiGLU) elsewhere

    def _rotary_tables(self, config: dict, params: Optional[dict]):
        cos, sin = (torch.from_numpy(table) for table in rope_tables(config, self.rotated, self.context, params))
        return torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)

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
        hidden: bool = False,
    ) -> Optional[torch.Tensor]:
        """Same contract as GPT2.forward."""
        rows, time = tokens.shape
        x = self.embed(tokens) * self.scales.embedding
        masks = {window: attention_mask(positions, window) for window in set(self.windows)}
        clamped = positions.clamp(max=self.context - 1)
        rotations = [[table[clamped].unsqueeze(2) for table in pair] for pair in self.rotary_tables]  # [rows, time, 1, dim]
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
                cos, sin = rotations[self.rotary_of[i]]
                q, k = self._rope(q, cos, sin), self._rope(k, cos, sin)
            v = v.view(rows, time, self.n_kv_heads, self.head_dim)
            attended = attend(q, k, v, cache, i, first_slot, positions, masks[self.windows[i]], self.scales.attention)
            x = x + self._branch_output(block.o(attended), block.attention_out_norm)
            # Gated MLP: act(gate) * up, then down.
            h = F.rms_norm(x, (x.shape[-1],), block.mlp_norm, self.eps)
            gate, up = block.gate_up(h).chunk(2, dim=-1)
            gate = F.gelu(gate, approximate="tanh") if self.gelu else F.silu(gate)
            x = x + self._branch_output(block.down(gate * up), block.mlp_out_norm)
        if last is None:
            return None
        x = F.rms_norm(pick_positions(x, last), (x.shape[-1],), self.norm, self.eps)
        return x if hidden else self.lm_head(x) / self.scales.logits

    def _branch_output(self, x: torch.Tensor, norm: Optional[torch.Tensor]) -> torch.Tensor:
        """A residual branch's output as added to the stream: Gemma 3 normalises it, Granite scales it."""
        if norm is not None:
            x = F.rms_norm(x, (x.shape[-1],), norm, self.eps)
        return x * self.scales.residual
