"""Faster decode-time matmuls on CPU: compute `x @ W.T` as `(W @ x.T).T`, with at least two rows.

Decoding multiplies a few activation rows (one per running request) by every weight matrix. Measured on
this project's 2-core machine with PyTorch's MKL build, a one-row product (GEMV) reads the weights at
~13 GB/s, while the same product written as `W @ x.T` with two or more columns (GEMM) reads them at
~30-35 GB/s; DistilGPT2's decode step fell from 25 ms to 14 ms for one request and from 57 ms to 45 ms
for sixteen (`python bench/kernels.py` measures it again). Results are the same numbers: only the
BLAS call changes. Large row counts (prefill of long prompts) keep the ordinary `F.linear`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

SKINNY_MAX_ROWS = 32  # above this, F.linear's own GEMM is as good


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
        if count == 1:
            rows = torch.cat([rows, rows])  # two columns: MKL takes its GEMM path, not the slow GEMV
        out = (self.weight @ rows.t()).t()[:count]
        if self.bias is not None:
            out = out + self.bias
        return out.reshape(*x.shape[:-1], out.shape[-1])


def use_skinny_matmuls(model: nn.Module) -> int:
    """Replace every nn.Linear and GPT-2 Conv1D in `model` by a SkinnyLinear; return how many."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # pragma: no cover
        Conv1D = ()
    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                setattr(parent, name, SkinnyLinear(child.weight, child.bias))
            elif Conv1D and isinstance(child, Conv1D):
                # Conv1D stores [in, out]; keep one [out, in] copy instead.
                weight = nn.Parameter(child.weight.detach().t().contiguous(), requires_grad=False)
                setattr(parent, name, SkinnyLinear(weight, child.bias))
            else:
                continue
            replaced += 1
    return replaced
