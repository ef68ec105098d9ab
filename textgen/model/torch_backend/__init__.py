"""The `torch` and `transformers` backends. Only this folder imports torch or transformers, and it
imports nothing from onnx_backend/ (tests/test_layout.py); importing the package imports neither.

- torch_model.py: `TorchModel`, either backend as a `CausalLM` (numpy to torch and back, no copies),
  `load_torch_model`, and torch's thread pools.
- gpt2.py, llama.py: the native families in plain torch, the readable reference.
- layers.py: what both share: linear layers, the embedding and LM head, attention over the cache.
- torch_cache.py: the engine's numpy KV cache as torch views.
- checkpoint.py: `Checkpoint`, the safetensors tensors as torch, a tensor (or a slice of rows) at a time.
- int8.py: int8 linear layers (FBGEMM), rows independent of their neighbours.
- skinny.py: float32 linear layers with faster small-batch matmuls.
- hf.py: `TransformersModel`, `AutoModelForCausalLM` over the engine's cache (every other architecture).
- hf_files.py: transformers' AutoTokenizer fallback and the GGUF-to-checkpoint conversion.
"""
