"""GPT-2 family (gpt2, distilgpt2) in plain torch, over the engine's KV cache.

Learned positions, fused QKV, GELU (tanh approximation), pre-LayerNorm blocks, LM head tied to the
token embedding. Weights come from a `save_pretrained` checkpoint; GPT-2's Conv1D layers store
[in, out], which becomes the usual [out, in] here.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from ..config import gpt2_shape
from ..kv_cache import KVCache
from .checkpoint import Checkpoint
from .layers import attend, attention_mask, embedding_and_head, make_linear, pick_positions

class Block(nn.Module):
    def __init__(self, get, prefix: str, quantize: str, skinny: bool):
        super().__init__()
        self.ln_1 = (get(prefix + "ln_1.weight"), get(prefix + "ln_1.bias"))
        self.qkv = make_linear(get(prefix + "attn.c_attn.weight").t(), get(prefix + "attn.c_attn.bias"), quantize, skinny)
        self.proj = make_linear(get(prefix + "attn.c_proj.weight").t(), get(prefix + "attn.c_proj.bias"), quantize, skinny)
        self.ln_2 = (get(prefix + "ln_2.weight"), get(prefix + "ln_2.bias"))
        self.fc = make_linear(get(prefix + "mlp.c_fc.weight").t(), get(prefix + "mlp.c_fc.bias"), quantize, skinny)
        self.fc_out = make_linear(get(prefix + "mlp.c_proj.weight").t(), get(prefix + "mlp.c_proj.bias"), quantize, skinny)


class GPT2(nn.Module):
    def __init__(self, config: dict, checkpoint: Checkpoint, quantize: str = "none", skinny: bool = False):
        super().__init__()
        prefix = "transformer." if "transformer.wte.weight" in checkpoint else ""  # hub files may omit it

        def get(name):
            return checkpoint.get(prefix + name)

        shape = gpt2_shape(config)
        self.n_layers, self.n_heads, self.n_kv_heads = shape.n_layers, shape.n_heads, shape.n_kv_heads
        self.head_dim, self.context, self.vocab_size = shape.head_dim, shape.context, shape.vocab_size
        self.width = shape.width
        self.eps = config.get("layer_norm_epsilon", 1e-5)
        self.blocks = nn.ModuleList(
            Block(get, f"h.{i}.", quantize, skinny) for i in range(self.n_layers)
        )
        self.ln_f = (get("ln_f.weight"), get("ln_f.bias"))
        self.wpe = get("wpe.weight")
        head = "lm_head.weight" if not config.get("tie_word_embeddings", True) else None
        self.wte, self.lm_head = embedding_and_head(checkpoint, prefix + "wte.weight", head, quantize, skinny)

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        first_slot: int,
        last: Optional[torch.Tensor] = None,
        hidden: bool = False,
    ) -> Optional[torch.Tensor]:
        """tokens, positions: [rows, time]; rows live in cache slots first_slot.. in order.
        Returns the logits at index `last[r]` of each row ([rows, vocab]), or None when `last` is None
        (a prefill chunk that is not a prompt's last); with `hidden`, the final-normed hidden states
        there instead ([rows, width]: what embeddings pool)."""
        rows, time = tokens.shape
        # Token embedding plus learned position embedding (padding positions past the context clamp).
        x = self.wte(tokens) + self.wpe[positions.clamp(max=self.context - 1)]
        mask = attention_mask(positions)
        for i, block in enumerate(self.blocks):
            # Attention: pre-LayerNorm, one fused projection to queries, keys and values.
            h = F.layer_norm(x, (x.shape[-1],), *block.ln_1, self.eps)
            q, k, v = block.qkv(h).view(rows, time, 3, self.n_heads, self.head_dim).unbind(2)
            x = x + block.proj(attend(q, k, v, cache, i, first_slot, positions, mask))
            # MLP: 4x wider, GELU with the tanh approximation (GPT-2's "gelu_new").
            h = F.layer_norm(x, (x.shape[-1],), *block.ln_2, self.eps)
            x = x + block.fc_out(F.gelu(block.fc(h), approximate="tanh"))
        if last is None:
            return None
        # Only the positions whose next token is wanted go through the final norm and the LM head.
        x = F.layer_norm(pick_positions(x, last), (x.shape[-1],), *self.ln_f, self.eps)
        return x if hidden else self.lm_head(x)
