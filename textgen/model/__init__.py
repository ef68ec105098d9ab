"""The model layer: what one forward pass needs and nothing more.

`loader.load_model(settings)` returns `(model, tokenizer)`. Every model fills the same contract,
`contract.CausalLM`: numpy in and out, `model.forward(tokens, starts, counts, cache, first_slot,
want_logits)` over a `KVCache` the engine owns, plus `n_layers`, `n_kv_heads`, `head_dim`, `context`,
`vocab_size`, `eos_token_ids`, `backend`, `dtype_name`, `threads`. Importing this package imports
neither torch nor onnx; each backend's libraries stay in its folder (tests/test_layout.py).

Backends:
- onnx (`onnx_backend/`): ONNX Runtime over a graph built from the checkpoint, the KV cache bound in
  place, float32, 8-bit or 4-bit weights; no torch at all. The default for the native families.
- torch (`torch_backend/`, the GPT-2 and Llama modules): plain torch, the readable reference, weights
  read straight from safetensors, float32 or int8 (`QUANTIZE=int8`); no transformers modeling code.
- transformers (`torch_backend/hf.py`): `AutoModelForCausalLM` for every other architecture.

Files here, shared by the backends:
- contract.py: `CausalLM`, the Protocol the engine programs against.
- kv_cache.py: `KVCache`, the engine's numpy cache every backend reads and writes in place.
- loader.py: `load_model`: the checkpoint directory (local, hub, GGUF), the backend, the tokenizer.
- preflight.py: `check_servable`: whether this install can serve MODEL_ID, said in one line before a
  worker boots.
- config.py: a checkpoint's config.json, its native family and its shape (the one reader of them).
- rope.py: RoPE's cos/sin tables for every RoPE type served natively, numpy only, both backends' one source.
- safetensors.py: where a checkpoint's tensors are (the one header parser); each backend reads them.
- tokenizer.py: the lean `tokenizers`-only tokenizer of the native families.
- build_cache.py: what is built once under CACHE_DIR (ONNX graphs, GGUF conversions).
- gguf_metadata.py: a GGUF file's llama.cpp architecture and the config keys transformers' import of it
  drops (read with the `gguf` library, no torch).
- threads.py: how many CPUs this process may use (sizes either runtime's threads).
- memory.py: how much memory this process may use, and MAX_BATCH_TOTAL_TOKENS's default from it.
"""

import os

# ONNX Runtime's Linux wheels collect telemetry and write a device id under $HOME unless this is set
# before the library initialises (a service sends nothing home and writes nowhere but its cache).
os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
# Nothing is imported here: gunicorn's master imports this package for its start-up check
# (preflight.py), and numpy there (kv_cache.py) cost its every start 0.065 CPU-s and ~16 MB.
