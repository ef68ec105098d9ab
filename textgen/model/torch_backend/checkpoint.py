"""Reading a `save_pretrained` directory's safetensors weights without transformers' modeling code,
one tensor at a time (where each tensor is: `..safetensors`; the config.json: `..config.read_config`).

Tensors are read with plain file reads, not a memory map: pages of a mapped 330 MB checkpoint count in
the process's RSS while they stay mapped, and a free Render instance has 512 MB for everything. Each
tensor is handed to the model builder as it is read, so the builder can quantize it and let the float32
copy go before the next one arrives.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..safetensors import tensors

_DTYPES = {
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "F64": torch.float64,
    "I64": torch.int64,
    "I32": torch.int32,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


class Checkpoint:
    """The tensors of a safetensors checkpoint (single file or sharded with an index), by name."""

    def __init__(self, model_dir: str):
        self._entries = tensors(model_dir)  # name -> (file, dtype tag, shape, start, end)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def locate(self, name: str):
        """(file path, dtype, shape, byte offset of the first element) of a stored tensor."""
        path, kind, shape, start, _ = self._entries[name]
        return path, _DTYPES[kind], list(shape), start

    def shape(self, name: str) -> list:
        return list(self._entries[name][2])

    def get(self, name: str, dtype: Optional[torch.dtype] = torch.float32) -> torch.Tensor:
        return self.rows(name, 0, None, dtype)

    def rows(self, name: str, first: int, stop: Optional[int], dtype: Optional[torch.dtype] = torch.float32):
        """Rows [first, stop) of a tensor (stop None = to the end): lets a large matrix be quantized a
        slice at a time, never wholly in float32."""
        path, kind, shape, start, end = self._entries[name]
        row_bytes = (end - start) // shape[0] if shape and shape[0] else end - start
        stop = shape[0] if not shape or stop is None else min(stop, shape[0])
        shape = [stop - first, *shape[1:]] if shape else shape
        tensor = torch.empty(shape, dtype=_DTYPES[kind])
        if tensor.numel():
            with open(path, "rb", buffering=0) as f:
                f.seek(start + first * row_bytes)
                view = memoryview(tensor.view(-1).view(torch.uint8).numpy())
                read = 0
                while read < len(view):  # readinto may return less than asked on large reads
                    n = f.readinto(view[read:])
                    if not n:
                        raise IOError(f"{path}: truncated tensor {name}")
                    read += n
        return tensor if dtype is None or tensor.dtype == dtype else tensor.to(dtype)
