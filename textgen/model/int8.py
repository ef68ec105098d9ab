"""int8 weights: every linear layer (the LM head included) and the token embedding, one scale per
output channel (per row of the weight matrix).

The matmul is PyTorch's dynamic-quantized linear (`quantized::linear_dynamic`, FBGEMM's int8 GEMM with
AVX2 or AVX-512/VNNI kernels), kept behind one function, `_int8_matmul`, because `torch.ao`'s quantized
ops are deprecated in 2.13: if they go away, that function and `tests/test_int8.py` say so at once.
Measured here (2 threads, AMD EPYC with AVX-512 VNNI), DistilGPT2's LM head (50257 x 768):
fp32 9.6 ms, bf16 4.0 ms, `torch._int_mm` with per-row scales (a matmul of our own) 3.7 ms, this
function 0.8 ms at batch 1; 24.8 / 6.0 / 4.0 / 2.6 ms at batch 16 (`python bench/kernels.py --int8`).

Rows stay independent. FBGEMM quantizes its input with one scale for the whole tensor, taken from
the tensor's min and max, so a row's result would depend on its neighbours (and a seeded request
would change its text when others join the batch). Each row is therefore divided by its own largest
magnitude, and two constant rows of +1 and -1 pin the tensor's range to [-1, 1]: every row is
quantized on the same fixed grid, whatever else is in the batch, and its result is scaled back after.
"""

from __future__ import annotations

import torch
from torch import nn

# 7-bit activations: FBGEMM's AVX2 kernel sums pairs of u8*s8 products in int16, which 8-bit
# activations can overflow (PyTorch's own default on x86 for the same reason).
REDUCE_RANGE = True


def quantize_rows(weight: torch.Tensor):
    """Symmetric int8 per row: (int8 [out, in], float32 scales [out]); weight ~= q * scale[:, None]."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale.float()


def _pack(q: torch.Tensor, scale: torch.Tensor):
    qweight = torch._make_per_channel_quantized_tensor(
        q, scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0
    )
    return torch.ops.quantized.linear_prepack(qweight, None)


def _int8_matmul(x: torch.Tensor, packed) -> torch.Tensor:
    """x [rows, in] float32 (with values in [-1, 1]) @ the packed int8 weight.T -> [rows, out] float32."""
    return torch.ops.quantized.linear_dynamic(x, packed, REDUCE_RANGE)


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias=None):
        super().__init__()
        q, scale = quantize_rows(weight.float())
        self.out_features, self.in_features = weight.shape
        self._packed = _pack(q, scale)  # FBGEMM's own layout; the int8 matrix is not kept beside it
        self.bias = None if bias is None else bias.float().contiguous()

    @classmethod
    def from_int8(cls, q: torch.Tensor, scale: torch.Tensor, bias=None) -> "Int8Linear":
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.out_features, layer.in_features = q.shape
        layer._packed = _pack(q, scale)
        layer.bias = bias
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        magnitude = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)
        pinned = torch.cat([rows / magnitude, _RANGE_ROWS.expand(2, self.in_features)])
        out = _int8_matmul(pinned, self._packed)[: rows.shape[0]] * magnitude
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def weight_nbytes(self) -> int:
        return self.out_features * self.in_features + 4 * self.out_features


_RANGE_ROWS = torch.tensor([[1.0], [-1.0]])


class Int8Embedding(nn.Module):
    """Token embedding as int8 rows with per-row scales, dequantized at lookup (no float32 table)."""

    def __init__(self, q: torch.Tensor, scale: torch.Tensor):
        super().__init__()
        self.q, self.scale = q, scale

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.q[ids].float() * self.scale[ids].unsqueeze(-1)


def int8_available() -> bool:
    """Whether this torch build has the quantized engine the int8 mode needs."""
    engines = getattr(torch.backends.quantized, "supported_engines", [])
    return any(e in engines for e in ("x86", "fbgemm", "qnnpack"))
