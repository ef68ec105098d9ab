"""8-bit weights for the ONNX graph: the token embedding's table quantized here (GatherBlockQuantized),
every MatMul, the LM head included, through onnxruntime's own quantizer (MatMulNBits). Both use the
same layout: symmetric blocks of BLOCK_SIZE along the input dimension, zero point 128."""

from __future__ import annotations

from typing import Tuple

import numpy as np
import onnx

BLOCK_SIZE = 32  # int8 block along the input dimension; every supported hidden size is a multiple


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


def quantize_matmuls(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every MatMul with a constant weight (the LM head included) -> 8-bit MatMulNBits."""
    import logging

    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    # The quantizer logs every node at INFO (its module sets the level): keep the build quiet.
    logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer").setLevel(logging.WARNING)
    quantizer = MatMulNBitsQuantizer(model, bits=8, block_size=BLOCK_SIZE, is_symmetric=True, accuracy_level=4)
    quantizer.process()
    return quantizer.model.model
