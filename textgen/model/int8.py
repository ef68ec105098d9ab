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
quantized on the same fixed grid (129 levels), whatever else is in the batch, and scaled back after.

Activations get two int8 passes in one GEMM. Llama-family activations have outlier channels (25-200x
the median magnitude in SmolLM2's MLP), so one int8 step per row leaves the other channels a handful
of levels: SmolLM2's perplexity rose 16% and 17 of 20 greedy continuations changed. So each row is
sent twice, stacked in the same matmul: its int8 rounding, and the rounding error (itself normalized
and rounded). The weights are still read once per step, the activations carry ~13 bits, and the
result is as good as int8 weights with float32 activations (tests/test_real_weights_quality.py).
"""

from __future__ import annotations

import torch
from torch import nn

# 7-bit activations: FBGEMM's AVX2 kernel sums pairs of u8*s8 products in int16, which 8-bit
# activations can overflow (PyTorch's own default on x86 for the same reason). Over the pinned range
# [-1, 1] the grid is then k * STEP for k in -64..64 (measured; tests/test_int8.py checks it).
REDUCE_RANGE = True
STEP = 2.0 / 127.0


ROWS_PER_SLICE = 2048  # rows quantized at a time: temporaries stay a few MB, even for a 50k-row table


def quantize_rows(weight: torch.Tensor, rows=None):
    """Symmetric int8 per row: (int8 [out, in], float32 scales [out]); weight ~= q * scale[:, None].

    `rows(first, stop)` may stand in for `weight` (then a (out, in) shape): the matrix is then read a
    slice at a time, so its float32 copy never exists whole."""
    out, width = weight if rows is not None else weight.shape
    q = torch.empty(out, width, dtype=torch.int8)
    scale = torch.empty(out, dtype=torch.float32)
    for first in range(0, out, ROWS_PER_SLICE):
        stop = min(first + ROWS_PER_SLICE, out)
        part = rows(first, stop) if rows is not None else weight[first:stop]
        s = part.abs().amax(dim=1).clamp(min=1e-12) / 127.0
        q[first:stop] = torch.round(part / s[:, None]).clamp_(-127, 127)
        scale[first:stop] = s
    return q, scale


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
        n = rows.shape[0]
        # Pass 1: each row scaled into [-1, 1] by its own largest magnitude.
        magnitude = _magnitude(rows)
        coarse = rows / magnitude
        # Pass 2: what rounding pass 1 to the int8 grid loses, scaled into [-1, 1] in turn.
        error = coarse - torch.round(coarse / STEP) * STEP
        error_magnitude = _magnitude(error)
        stacked = torch.cat([coarse, error / error_magnitude, _RANGE_ROWS.expand(2, self.in_features)])
        out = _int8_matmul(stacked, self._packed)
        out = (out[:n] + out[n : 2 * n] * error_magnitude) * magnitude
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)

    def weight_nbytes(self) -> int:
        return self.out_features * self.in_features + 4 * self.out_features


_RANGE_ROWS = torch.tensor([[1.0], [-1.0]])


def _magnitude(rows: torch.Tensor) -> torch.Tensor:
    return rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)


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
