"""Faster decode-time matmuls on CPU: compute `x @ W.T` as `(W @ x.T).T`, with at least two rows.

Decoding multiplies a few activation rows (one per running request) by every weight matrix. Measured on
this project's 2-core machine with PyTorch's MKL build, a one-row product (GEMV) reads the weights at
~13 GB/s, while the same product written as `W @ x.T` with two or more columns (GEMM) reads them at
~30-35 GB/s, and some column counts run much faster than their neighbours (see `_chunk_rows`).
`python bench/kernels.py` measures a DistilGPT2 decode step both ways for each batch size. Results are
the same numbers: only the BLAS calls change. Large row counts (long prefills) keep `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SKINNY_MAX_ROWS = 32  # above this, F.linear's own GEMM is as good


def _chunk_rows(count: int) -> int:
    """Rows per GEMM call. MKL's fastest small-N kernels, measured here: N <= 4, and N = 16.
    Between them (5-8 rows) two calls of 4 beat one call (-18% per decode step at 8 rows)."""
    if count <= 4:
        return count
    return 4 if count <= 8 else 16


def _padded_rows(count: int) -> int:
    """Width actually sent to the GEMM: 1 row is padded to 2 (GEMV is the slow path), 9-15 rows to 16
    (16 columns ran faster than 12: 43 ms against 51 ms per DistilGPT2 step)."""
    if count == 1:
        return 2
    return 16 if 8 < count < 16 else count


class SkinnyLinear(nn.Module):
    def __init__(self, weight: nn.Parameter, bias):
        super().__init__()
        self.weight = weight  # [out, in]; shared, not copied, when it comes from an nn.Linear (tied heads)
        self.bias = bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, x.shape[-1])
        count = rows.shape[0]
        if count > SKINNY_MAX_ROWS:
            return F.linear(x, self.weight, self.bias)
        step = _chunk_rows(count)
        parts = [self._gemm(rows[start : start + step]) for start in range(0, count, step)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])

    def _gemm(self, rows: torch.Tensor) -> torch.Tensor:
        count = rows.shape[0]
        width = _padded_rows(count)
        if width > count:
            rows = torch.cat([rows, rows.new_zeros(width - count, rows.shape[1])])
        return (self.weight @ rows.t()).t()[:count]
