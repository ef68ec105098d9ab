"""Weight-only quantization of the ONNX graph: every MatMul (the LM head included) through onnxruntime's
own quantizer (MatMulNBits), and the token embedding's table (GatherBlockQuantized's layout, read
outside the graph: embedding_table.py). Blocks of
BLOCK_SIZE along the input dimension, one scale each; accuracy level 4: MatMulNBits quantizes its
input to int8 per row and block, so a row's result never depends on the other rows of the batch.

How many bits each part gets per QUANTIZE value: schemes.py.
"""

from __future__ import annotations

import logging
from typing import Iterable, Tuple

import numpy as np
import onnx

from .schemes import Scheme

BLOCK_SIZE = 32  # along the input dimension; every supported hidden size is a multiple
ACCURACY_LEVEL = 4  # int8 activations, per row and block (row-independent; the fastest CPU kernels)


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


def quantize_weights(model: onnx.ModelProto, scheme: Scheme, head_output: str) -> onnx.ModelProto:
    """Every MatMul with a constant weight -> MatMulNBits as `scheme` says. The LM head (the MatMul
    writing `head_output`) gets its own bits. (The token table, outside the graph, is quantized by the
    builder: quantize_rows_uint8.)"""
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    head = next(n.name for n in matmuls if head_output in n.output)
    # The builder names each weight after its checkpoint module: attention's have "attn." in them.
    attention = {n.name for n in matmuls if "attn." in n.input[1]}
    mlp = {n.name for n in matmuls} - attention - {head}
    groups = [(attention, scheme.attention), (mlp, scheme.mlp), ({head}, scheme.head)]
    for bits in sorted({bits for _, bits in groups}, reverse=True):
        model = _quantize_nodes(model, set().union(*(names for names, b in groups if b == bits)), bits, scheme.symmetric)
    return model


def _quantize_nodes(
    model: onnx.ModelProto, names: Iterable[str], bits: int, symmetric: bool, block_size: int = BLOCK_SIZE,
) -> onnx.ModelProto:
    """The named MatMul nodes -> `bits`-bit MatMulNBits in blocks of `block_size` (8 bits is always
    symmetric: its 255 levels leave a zero point little to gain). bench/block_size.py measures other
    block sizes."""
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # The quantizer logs every node at INFO (its module sets the level): keep the build quiet.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    # The quantizer takes every MatMul unless excluded: exclude all but the named ones.
    names = set(names)
    others = [n.name for n in model.graph.node if n.name not in names]
    quantizer = MatMulNBitsQuantizer(
        model, bits=bits, block_size=block_size, is_symmetric=symmetric or bits == 8, accuracy_level=ACCURACY_LEVEL,
        nodes_to_exclude=others, op_types_to_quantize=("MatMul",),
    )
    quantizer.process()
    return quantizer.model.model
