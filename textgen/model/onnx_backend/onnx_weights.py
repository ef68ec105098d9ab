"""A `save_pretrained` checkpoint read as numpy, for building ONNX graphs without torch.

The tensors are found through the headers `..safetensors` parses and read with `np.fromfile`, rather
than through `safetensors.safe_open(framework="numpy")`, because numpy has no bfloat16: bf16 checkpoints
(most Llama-family ones) are widened to float32 by shifting their 16 bits into a float32's high half.
"""

from __future__ import annotations

import numpy as np

from ..safetensors import tensors

_NUMPY_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}


class NumpyCheckpoint:
    """Tensors by name, each read from disk when asked for (float32), so that a builder holds only the
    ones it is working on."""

    def __init__(self, model_dir: str):
        self._entries = tensors(model_dir)  # name -> (file, dtype tag, shape, start, end)

    def __contains__(self, name: str) -> bool:
        return name in self._entries

    def get(self, name: str) -> np.ndarray:
        path, tag, shape, offset, _ = self._entries[name]
        if tag not in _NUMPY_DTYPES:
            raise ValueError(f"{name}: unsupported safetensors dtype {tag}")
        count = int(np.prod(shape)) if shape else 1
        raw = np.fromfile(path, dtype=_NUMPY_DTYPES[tag], count=count, offset=offset).reshape(shape)
        if tag == "BF16":
            return (raw.astype(np.uint32) << 16).view(np.float32)
        return raw.astype(np.float32, copy=False)
