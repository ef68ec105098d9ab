"""The `onnx` backend: ONNX Runtime over one decoder-step graph built from a `save_pretrained`
checkpoint with numpy and `onnx.helper` (no torch). Only this folder imports onnx or onnxruntime, and it
imports nothing from torch_backend/ (tests/test_layout.py); importing the package imports neither.

- onnx_model.py: `OnnxModel`, the `CausalLM` at run time: one session, the engine's KV cache bound in
  place as each layer's past and present. Imports onnxruntime, never onnx.
- onnx_graph.py: the graph builder (GPT-2 and Llama families).
- embedding_table.py: `EmbeddingTable`, the token table kept out of the graph (embedding.bin) and read a
  row per token, so that its pages stay out of the worker's memory; `write_table` for the builder.
- onnx_weights.py: `NumpyCheckpoint`, the checkpoint's tensors as float32 numpy (bf16 widened).
- quantize.py: the 8-bit and 4-bit weights (embedding table, MatMulNBits).
- schemes.py: the bits of each part per QUANTIZE value.
- graph_files.py: a graph's file names, where one built ahead of time sits in a model directory, and
  `graph_path`, the graph cached per checkpoint under CACHE_DIR, built on first use (read by the loader
  before it imports anything of this backend's libraries; a cached graph never imports the builder).
"""
