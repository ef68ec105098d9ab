"""The model layer: what one forward pass needs and nothing more.

`load_model(settings)` returns `(model, tokenizer)`. Every model fills the same contract,
`contract.CausalLM`: numpy in and out, `model.forward(tokens, starts, counts, cache, first_slot,
want_logits)` over a `KVCache` the engine owns, plus `n_layers`, `n_kv_heads`, `head_dim`, `context`,
`vocab_size`, `eos_token_ids`, `backend`, `dtype_name`, `threads`. Importing this package imports
neither torch nor onnx.

- onnx (`onnx_model.py` over the graph `onnx_graph.py` builds): ONNX Runtime, the KV cache bound in
  place, float32 or 8-bit weights; no torch at all. The default for the native families.
- torch (`torch_backend.py` over `gpt2.py`, `llama.py`): plain torch, weights read straight from
  safetensors, float32 or int8 (`QUANTIZE=int8`); importing them loads no transformers modeling code.
- transformers (`torch_backend.py` over `hf.py`): `AutoModelForCausalLM` for every other architecture.
"""

import os

# ONNX Runtime's Linux wheels collect telemetry and write a device id under $HOME unless this is set
# before the library initialises (a service sends nothing home and writes nowhere but its cache).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")

from .kv_cache import KVCache  # noqa: E402
from .loader import load_model  # noqa: E402

__all__ = ["KVCache", "load_model"]
