"""int8 weights: every linear layer, the LM head included, with one scale per output channel (per row
of the weight matrix). (The token embedding is read from the checkpoint file: see layers.FileEmbedding.)

The matmul is PyTorch's dynamic-quantized linear (`quantized::linear_dynamic`, FBGEMM's int8 GEMM with
AVX2 or AVX-512/VNNI kernels), kept behind one function, `_int8_matmul`, because `torch.ao`'s quantized
ops are deprecated in 2.13: if they go away, that function and `tests/test_int8.py` say so at once.
Measured here (2 threads, AMD EPYC with AVX-512 VNNI), DistilGPT2's LM head (50257 x 768):
fp32 9.6 ms, bf16 4.0 ms, `torch._int_mm` with per-row scales (a matmul of our own) 3.7 ms, this
function 0.8 ms at batch 1; 24.8 / 6.0 / 4.0 / 2.6 ms at batch 16 (whole decode steps per kind of weights:
`python bench/kernels.py`).

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

import warnings

import torch
from torch import nn

# 7-bit activations: FBGEMM's AVX2 kernel sums pairs of u8*s8 products in int16, which 8-bit
# activations can overflow (PyTorch's own default on x86 for the same reason). Over the pinned range
# [-1, 1] the grid is then k * STEP for k in -64..64 (measured; tests/test_int8.py checks it).
REDUCE_RANGE = True
STEP = 2.0 / 127.0


# Output rows packed at a time: FBGEMM packs a copy, so packing DistilGPT2's 50257-row LM head whole
# would briefly hold it three times; in slices it never does. Rows are read and quantized in smaller
# steps still, so the float32 temporaries stay a few MB (the server's peak memory is its load).
ROWS_PER_SLICE = 8192
ROWS_PER_STEP = 1024


def quantize_rows(weight: torch.Tensor):
    """Symmetric int8 per row: (int8 [out, in], float32 scales [out]); weight ~= q * scale[:, None]."""
    scale = weight.abs().amax(dim=1).clamp(min=1e-12) / 127.0
    q = torch.round(weight / scale[:, None]).clamp_(-127, 127).to(torch.int8)
    return q, scale.float()


def _pack(q: torch.Tensor, scale: torch.Tensor):
    with warnings.catch_warnings():
        # Known and guarded (tests/test_int8.py): the deprecation would otherwise print at every start.
        warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*")
        qweight = torch._make_per_channel_quantized_tensor(
            q, scale.double(), torch.zeros(q.shape[0], dtype=torch.long), 0
        )
    return torch.ops.quantized.linear_prepack(qweight, None)


def _int8_matmul(x: torch.Tensor, packed) -> torch.Tensor:
    """x [rows, in] float32 (with values in [-1, 1]) @ the packed int8 weight.T -> [rows, out] float32."""
    return torch.ops.quantized.linear_dynamic(x, packed, REDUCE_RANGE)


class Int8Linear(nn.Module):
    def __init__(self, weight: torch.Tensor, bias=None):
        """From a float weight [out, in], or from `(shape, rows)` where `rows(first, stop)` reads that
        slice of the float weight (a large matrix then never exists whole in float32)."""
        super().__init__()
        shape, rows = (weight.shape, lambda a, b: weight[a:b]) if isinstance(weight, torch.Tensor) else weight
        self.out_features, self.in_features = shape
        # FBGEMM's own packed layout, a slice of output rows each; no int8 matrix is kept beside it.
        self._packed = []
        for first in range(0, self.out_features, ROWS_PER_SLICE):
            stop = min(first + ROWS_PER_SLICE, self.out_features)
            q = torch.empty(stop - first, self.in_features, dtype=torch.int8)
            scale = torch.empty(stop - first)
            for a in range(first, stop, ROWS_PER_STEP):
                b = min(a + ROWS_PER_STEP, stop)
                q[a - first : b - first], scale[a - first : b - first] = quantize_rows(rows(a, b).float())
            self._packed.append(_pack(q, scale))
            del q
        self.bias = None if bias is None else bias.float().contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features)
        n = rows.shape[0]
        stacked = torch.empty(2 * n + 2, self.in_features)
        coarse, fine = stacked[:n], stacked[n : 2 * n]
        # Pass 1: each row scaled into [-1, 1] by its own largest magnitude.
        magnitude = rows.abs().amax(dim=1, keepdim=True).clamp_(min=1e-12)
        torch.div(rows, magnitude, out=coarse)
        # Pass 2: what rounding pass 1 to the grid loses, in grid steps (within +-1/2), doubled into [-1, 1].
        torch.mul(coarse, 1.0 / STEP, out=fine)
        fine.sub_(torch.round(fine)).mul_(2.0)
        stacked[2 * n :] = _RANGE_ROWS
        # Recombine per slice straight into the output: no [2n+2, out] copy of a 50k-wide LM head.
        out = torch.empty(n, self.out_features)
        first = 0
        for packed in self._packed:
            part = _int8_matmul(stacked, packed)
            stop = first + part.shape[1]
            torch.add(part[:n], part[n : 2 * n], alpha=STEP / 2, out=out[:, first:stop])
            first = stop
        out.mul_(magnitude)
        if self.bias is not None:
            out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


# The two constant rows that pin FBGEMM's activation range to [-1, 1] (see the module docstring).
_RANGE_ROWS = torch.tensor([[1.0], [-1.0]])


def int8_available() -> bool:
    """Whether this torch build has the quantized engine the int8 mode needs."""
    engines = getattr(torch.backends.quantized, "supported_engines", [])
    return any(e in engines for e in ("x86", "fbgemm", "qnnpack"))
