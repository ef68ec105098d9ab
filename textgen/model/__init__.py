"""The model layer: what one forward pass needs and nothing more.

`load_model(settings)` returns `(model, tokenizer)`. Every model, native or not, has the same contract:
`model(tokens, positions, cache, first_slot, last)` over a `KVCache` the engine owns, plus
`n_layers`, `n_kv_heads`, `head_dim`, `context`, `vocab_size`, `eos_token_ids`, `backend`, `dtype`.

- native (`gpt2.py`, `llama.py`): plain torch, weights read straight from safetensors, float32 or int8
  (`QUANTIZE=int8`); importing them loads no transformers modeling code.
- transformers (`hf.py`): `AutoModelForCausalLM` for every other architecture.
"""

from .kv_cache import KVCache
from .loader import load_model

__all__ = ["KVCache", "load_model"]
