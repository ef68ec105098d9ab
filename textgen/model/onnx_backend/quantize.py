"""Weight-only quantization of the ONNX graph: every MatMul (the LM head included) through onnxruntime's
own quantizer (MatMulNBits), and the token embedding's table (GatherBlockQuantized). Blocks of
BLOCK_SIZE along the input dimension, one scale each; accuracy level 4: MatMulNBits quantizes its
input to int8 per row and block, so a row's result never depends on the other rows of the batch.

`SCHEMES` says how many bits each part gets per QUANTIZE value:
- int8: everything 8-bit, symmetric (zero point 128). The embedding table is quantized here (the
  quantizer's Gather support is 4-bit only), in MatMulNBits' symmetric layout.
- int4: the layers' MatMuls 4-bit, symmetric; the LM head and the embedding kept 8-bit. Measured on
  SmolLM2-135M-Instruct (tests/test_real_weights_quality.py's passage, float32 perplexity 23.67):
  see docs/models.md, Measured quality, for the numbers behind each choice.
"""

from __future__ import annotations

import logging
from typing import Iterable, NamedTuple, Tuple

import numpy as np
import onnx

BLOCK_SIZE = 32  # along the input dimension; every supported hidden size is a multiple
ACCURACY_LEVEL = 4  # int8 activations, per row and block (row-independent; the fastest CPU kernels)


class Scheme(NamedTuple):
    layers: int  # bits of the decoder layers' MatMuls
    head: int  # bits of the LM head's MatMul
    embedding: int  # bits of the token embedding's table (GatherBlockQuantized)
    symmetric: bool  # 4-bit blocks: symmetric (one scale) or with a zero point (scale and offset)


SCHEMES = {
    "int8": Scheme(layers=8, head=8, embedding=8, symmetric=True),
    "int4": Scheme(layers=4, head=8, embedding=8, symmetric=False),
}


def quantize_rows_uint8(table: np.ndarray, block_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """Symmetric 8-bit blocks along each row: `table ~= (data - 128) * scale`, the layout of
    GatherBlockQuantized with bits=8 and no zero points (its default zero point is 128), which is also
    MatMulNBits' symmetric layout. Returns data uint8 [rows, cols], scales float32 [rows, cols/block]."""
    rows, cols = table.shape
    if cols % block_size:
        raise ValueError(f"embedding width {cols} is not a multiple of the block size {block_size}")
    blocks = table.reshape(rows, cols // block_size, block_size)
    scales = np.abs(blocks).max(axis=2) / 127.0
    safe = np.where(scales == 0, 1.0, scales).astype(np.float32)
    data = np.clip(np.rint(blocks / safe[:, :, None]), -127, 127).astype(np.int16) + 128
    return data.astype(np.uint8).reshape(rows, cols), scales.astype(np.float32)


def quantize_weights(model: onnx.ModelProto, scheme: Scheme, head_output: str, ids_input: str) -> onnx.ModelProto:
    """Every MatMul with a constant weight -> MatMulNBits as `scheme` says. The LM head (the MatMul
    writing `head_output`) gets its own bits; the token lookup (the Gather reading `ids_input`) is
    quantized here when the scheme gives it 4 bits (an 8-bit table comes quantized from the builder)."""
    matmuls = {n.name for n in model.graph.node if n.op_type == "MatMul"}
    head = next(n.name for n in model.graph.node if n.op_type == "MatMul" and head_output in n.output)
    groups = [(matmuls - {head}, scheme.layers), ({head}, scheme.head)]
    if scheme.embedding == 4:
        embedding = next(n.name for n in model.graph.node if n.op_type == "Gather" and n.input[1] == ids_input)
        groups.append(({embedding}, 4))
    for bits in sorted({bits for _, bits in groups}, reverse=True):
        model = _quantize_nodes(model, set().union(*(names for names, b in groups if b == bits)), bits, scheme.symmetric)
    return model


def _quantize_nodes(model: onnx.ModelProto, names: Iterable[str], bits: int, symmetric: bool) -> onnx.ModelProto:
    """The named MatMul / Gather nodes -> `bits`-bit MatMulNBits / GatherBlockQuantized (8 bits is
    always symmetric: its 255 levels leave a zero point little to gain)."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # The quantizer logs every node at INFO (its module sets the level): keep the build quiet.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    # The quantizer takes every node of the op types unless excluded: exclude all but the named ones.
    # Naming Gather among the op types also moves the graph to opset 21 (int4 tensors), so only when asked.
    names = set(names)
    others = [n.name for n in model.graph.node if n.name not in names]
    op_types = tuple(sorted({n.op_type for n in model.graph.node if n.name in names}))
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=BLOCK_SIZE, is_symmetric=symmetric or bits == 8, accuracy_level=ACCURACY_LEVEL,
        nodes_to_exclude=others, op_types_to_quantize=op_types,
    )
    quantizer.process()
    return quantizer.model.model
