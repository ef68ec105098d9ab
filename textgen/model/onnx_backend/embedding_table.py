"""The token embedding table, kept out of the graph in a file of its own and read a row per token.

Inside the graph the table was an initializer ONNX Runtime maps from model.onnx.data. A mapped page a
token touches counts in the worker's memory (PSS) for as long as the mapping lasts, and the kernel maps
a fault's 64 KB neighbourhood with it (fault-around): DistilGPT2's 41 MB 8-bit table was resident in
full after a few thousand different tokens (the worker's mapped model data 10 MB after load, 50 MB after
8 clients of 128 tokens). Read with `pread`, the rows come from the page cache without being mapped:
they cost the process nothing, and the page cache they sit in is shared and reclaimable. The graph takes
`inputs_embeds` instead of `input_ids`; the file holds the rows as the graph's lookup stored them:

- 8 bits (int8 and int4 graphs): `rows x width` uint8 in symmetric blocks of `block` channels, then
  `rows x width/block` float32 scales: `row = (data - 128) * scale`, exactly GatherBlockQuantized's sum;
- 32 bits (float32 graphs): `rows x width` float32.

Its layout is the graph's metadata entry `textgen.embedding` (JSON), written by `write_table`.
"""

from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

EMBEDDING_FILE = "embedding.bin"  # beside model.onnx
METADATA_KEY = "textgen.embedding"


def write_table(out_dir: str, data: np.ndarray, scales: Optional[np.ndarray] = None, block: int = 0) -> str:
    """Write the table (8-bit `data` with its `scales` in blocks of `block`, or float32 `data`) into
    out_dir/EMBEDDING_FILE; returns the layout as the JSON for the graph's METADATA_KEY."""
    rows, width = data.shape
    with open(os.path.join(out_dir, EMBEDDING_FILE), "wb") as f:
        f.write(np.ascontiguousarray(data).tobytes())
        if scales is not None:
            f.write(np.ascontiguousarray(scales, dtype=np.float32).tobytes())
    bits = 8 if scales is not None else 32
    return json.dumps({"file": EMBEDDING_FILE, "rows": rows, "width": width, "bits": bits, "block": block})


class EmbeddingTable:
    """Rows of the table by token id, read from its file; float32 like the graph's own lookup."""

    def __init__(self, graph_dir: str, layout: str):
        spec = json.loads(layout)
        self.rows, self.width, self.bits, self.block = spec["rows"], spec["width"], spec["bits"], spec["block"]
        self._row_bytes = self.width if self.bits == 8 else self.width * 4
        self._scales_at = self.rows * self.width  # 8 bits: where the scales start
        self._scale_bytes = (self.width // self.block) * 4 if self.bits == 8 else 0
        self._fd = os.open(os.path.join(graph_dir, spec["file"]), os.O_RDONLY)
        # Tokens come in no order: read ahead nothing but the rows asked for.
        os.posix_fadvise(self._fd, 0, 0, os.POSIX_FADV_RANDOM)

    def lookup(self, tokens: np.ndarray) -> np.ndarray:
        """float32 [*tokens.shape, width]: each token's row."""
        flat = np.asarray(tokens, dtype=np.int64).ravel()
        if len(flat) and (flat.min() < 0 or flat.max() >= self.rows):
            bad = int(flat.min() if flat.min() < 0 else flat.max())
            raise ValueError(f"token id out of range [0, {self.rows}): {bad}")
        ids = flat.tolist()
        rows = self._read(ids, 0, self._row_bytes, np.uint8 if self.bits == 8 else np.float32)
        if self.bits == 8:
            scales = self._read(ids, self._scales_at, self._scale_bytes, np.float32)
            blocks = rows.reshape(len(ids), -1, self.block).astype(np.float32)
            rows = (blocks - np.float32(128)) * scales[:, :, None]
        return rows.reshape(*np.shape(tokens), self.width)

    def _read(self, ids: list, base: int, size: int, dtype) -> np.ndarray:
        """[len(ids), size bytes as dtype]: the record of each id, read straight into the array."""
        out = np.empty((len(ids), size), dtype=np.uint8)
        for k, i in enumerate(ids):
            if os.preadv(self._fd, [out[k]], base + i * size) != size:
                raise OSError(f"embedding table truncated: {size} bytes at {base + i * size}")
        return out.view(dtype)

    def close(self) -> None:
        if getattr(self, "_fd", -1) >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self):
        self.close()
