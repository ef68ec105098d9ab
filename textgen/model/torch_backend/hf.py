"""The fallback for architectures without a native module: transformers' `AutoModelForCausalLM`,
wrapped to the native modules' torch signature (so `torch_model.TorchModel` serves both alike),
over the same KV cache owned by the engine.

transformers' attention layers call `past_key_values.update(keys, values, layer)` and attend to what
it returns; `_SlotCache` answers that call by writing into the engine's cache slots at each row's
positions and returning the rows' views of it. The 4D mask is passed as is, so transformers builds none.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from ..config import transformers_shape
from ..kv_cache import KVCache
from .layers import attention_mask, pick_positions
from .torch_cache import store_and_read


class TransformersModel(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model
        shape = transformers_shape(model.config)
        self.n_layers, self.n_heads, self.n_kv_heads = shape.n_layers, shape.n_heads, shape.n_kv_heads
        self.head_dim, self.context, self.vocab_size = shape.head_dim, shape.context, shape.vocab_size
        self.width = shape.width

    def forward(
        self,
        tokens: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache,
        first_slot: int,
        last: Optional[torch.Tensor] = None,
        hidden: bool = False,
    ) -> Optional[torch.Tensor]:
        rows, time = tokens.shape
        inputs = dict(
            input_ids=tokens,
            position_ids=positions.clamp(max=self.context - 1),
            attention_mask=attention_mask(positions),
            past_key_values=_SlotCache(cache, first_slot, positions),
            use_cache=True,
        )
        if hidden:  # the base model's last hidden state is the final-normed one, before the LM head
            return pick_positions(self.model.base_model(**inputs).last_hidden_state, last).float()
        # Logits only from the earliest position any row wants onwards (1 when none is wanted).
        keep = 1 if last is None else time - int((last[1] if isinstance(last, tuple) else last).min())
        out = self.model(**inputs, logits_to_keep=keep)
        if last is None:
            return None
        if isinstance(last, tuple):
            return pick_positions(out.logits, (last[0], last[1] - (time - keep))).float()
        return pick_positions(out.logits, last - (time - keep)).float()


try:  # transformers' Cache base class, so that isinstance checks inside the models behave
    from transformers.cache_utils import Cache as _CacheBase
except ImportError:  # pragma: no cover
    _CacheBase = object


class _SlotCache(_CacheBase):
    def __init__(self, cache: KVCache, first_slot: int, positions: torch.Tensor):
        self.cache, self.first_slot, self.positions = cache, first_slot, positions
        self.layers = []

    def update(self, key_states, value_states, layer_idx, cache_kwargs=None):
        # transformers passes [rows, kv_heads, time, dim]; the cache takes [rows, time, kv_heads, dim].
        k, v = key_states.transpose(1, 2), value_states.transpose(1, 2)
        return store_and_read(self.cache, layer_idx, self.first_slot, self.positions, k, v)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        return int(self.positions.min())

    def is_compileable(self) -> bool:  # pragma: no cover - asked only by torch.compile paths
        return False
