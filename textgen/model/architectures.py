"""What a checkpoint directory says about its model, read without torch: its config.json, and which
native family (the architectures this service defines itself) can serve it.

Kept apart from the modules that define the families, so that choosing a backend never imports torch.
"""

from __future__ import annotations

import json
import os
from typing import Optional

GPT2_TYPES = {"gpt2"}  # model_type values gpt2.py serves
LLAMA_TYPES = {"llama", "qwen2"}  # model_type values llama.py serves


def read_config(model_dir: str) -> dict:
    with open(os.path.join(model_dir, "config.json"), encoding="utf-8") as f:
        return json.load(f)


def native_family(config: dict) -> Optional[str]:
    """"gpt2" or "llama" when a native definition serves this config, else None."""
    if config.get("model_type") in GPT2_TYPES:
        return "gpt2"
    if _llama_supported(config):
        return "llama"
    return None


def _llama_supported(config: dict) -> bool:
    """Plain RoPE and full attention only; scaled RoPE or sliding windows go to transformers."""
    for rope in (config.get("rope_parameters"), config.get("rope_scaling")):
        if rope and rope.get("rope_type", rope.get("type", "default")) != "default":
            return False
    sliding = config.get("use_sliding_window", False) and config.get("sliding_window")
    return config.get("model_type") in LLAMA_TYPES and not sliding
