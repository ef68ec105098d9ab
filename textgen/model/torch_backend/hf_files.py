"""What transformers reads and writes for the service outside a model backend: its AutoTokenizer (for
tokenizers the lean one cannot stand in for, whatever the backend) and the dequantisation of a GGUF
file into a plain checkpoint. Both need requirements-torch.txt; importing this module imports neither
torch nor transformers, only calling its functions does."""

from __future__ import annotations


def auto_tokenizer(source: str):
    from transformers import AutoTokenizer  # tokenizer only: no modeling code

    return AutoTokenizer.from_pretrained(source)


def convert_gguf(model_id: str, gguf_file: str, out_dir: str) -> None:
    """Save the model and tokenizer of `model_id`/`gguf_file` into `out_dir` as a float32 checkpoint."""
    import os

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from ..gguf_metadata import config_overrides

    tokenizer = AutoTokenizer.from_pretrained(model_id, gguf_file=gguf_file)
    # transformers reads only part of llama.cpp's metadata: the rest is set from the file (gguf_metadata)
    config = AutoConfig.from_pretrained(model_id, gguf_file=gguf_file)
    for key, value in config_overrides(os.path.join(model_id, gguf_file)).items():
        setattr(config, key, value)
    model = AutoModelForCausalLM.from_pretrained(model_id, gguf_file=gguf_file, config=config, dtype=torch.float32)
    # The weights are plain float tensors now; the GGUF "quantizer" left attached only blocks saving.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
