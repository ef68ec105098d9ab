"""Where a `save_pretrained` checkpoint's tensors are: its safetensors files and their headers, read
without torch, onnx or the `safetensors` library, for both backends' readers (torch_backend/checkpoint.py
and onnx_backend/onnx_weights.py), which then read the bytes each in its own way.

A safetensors file is an 8-byte little-endian header length, that many bytes of JSON (per tensor: its
dtype tag, shape and byte range in the data that follows), then the raw little-endian data.
"""

from __future__ import annotations

import json
import math
import os
import struct
from typing import Dict, List, NamedTuple, Optional

INDEX_FILE = "model.safetensors.index.json"  # a sharded checkpoint's map of tensor -> shard
SINGLE_FILE = "model.safetensors"


class Tensor(NamedTuple):
    """Where one stored tensor is: its file, safetensors dtype tag ("F32", "BF16"...), shape, and byte
    range [start, end) counted from the start of the file."""

    path: str
    dtype: str
    shape: list
    start: int
    end: int


def has_weights(model_dir: str) -> bool:
    return any(os.path.exists(os.path.join(model_dir, f)) for f in (SINGLE_FILE, INDEX_FILE))


def weight_files(model_dir: str) -> List[str]:
    """The safetensors files of a checkpoint (one file, or the shards its index names), as paths."""
    index = os.path.join(model_dir, INDEX_FILE)
    if os.path.exists(index):
        with open(index, encoding="utf-8") as f:
            names = sorted(set(json.load(f)["weight_map"].values()))
    elif os.path.exists(os.path.join(model_dir, SINGLE_FILE)):
        names = [SINGLE_FILE]
    else:
        raise FileNotFoundError(f"no safetensors weights in {model_dir}")
    return [os.path.join(model_dir, name) for name in names]


def tensors(model_dir: str) -> Dict[str, Tensor]:
    """Every tensor of the checkpoint by name, from the headers of its files (no tensor data is read)."""
    found: Dict[str, Tensor] = {}
    for path in weight_files(model_dir):
        with open(path, "rb") as f:
            (header_len,) = struct.unpack("<Q", f.read(8))
            header = json.loads(f.read(header_len))
        base = 8 + header_len
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            start, end = meta["data_offsets"]
            found[name] = Tensor(path, meta["dtype"], meta["shape"], base + start, base + end)
    return found


def parameter_count(model_dir: str) -> Optional[int]:
    """The checkpoint's parameters, counted from its headers (a tied head is stored, and counted, once);
    None without safetensors weights."""
    if not has_weights(model_dir):
        return None
    return sum(math.prod(t.shape) for t in tensors(model_dir).values())
