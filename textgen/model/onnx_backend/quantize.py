"""Weight-only quantization of the ONNX graph: every MatMul (the LM head included) through onnxruntime's
own quantizer (MatMulNBits), and the token embedding's table (GatherBlockQuantized). Blocks of
BLOCK_SIZE along the input dimension, one scale each; accuracy level 4: MatMulNBits quantizes its
input to int8 per row and block, so a row's result never depends on the other rows of the batch.

`SCHEMES` says how many bits each part gets per QUANTIZE value:
- int8: everything 8-bit, symmetric (zero point 128). The embedding table is quantized here (the
  quantizer's Gather support is 4-bit only), in MatMulNBits' symmetric layout.
- int4: the MLPs' MatMuls 4-bit with a zero point per block; attention, the LM head and the embedding
  8-bit. Perplexity of SmolLM2-135M-Instruct (tests/test_real_weights_quality.py's passage; float32
  23.67, int8 +0.5%), each change alone from all layers 4-bit with zero points (+20.5%): symmetric
  +26.6%; the head 4-bit too +34.7%; the embedding 4-bit too +21.9%; down_proj kept 8-bit +14.1%;
  attention kept 8-bit +8.0% (this scheme; symmetric +13.7%); attention and down_proj 8-bit +5.0%.
  Attention is a sixth of a Llama-3.2-1B layer's weights (grouped K/V), a quarter of SmolLM2's.
  SmolLM2's weights come from a Q4_1 GGUF file, so they are rounded a second time, onto another grid:
  a harsh case for any 4 bits (docs/models.md, int4 weights).
"""

from __future__ import annotations

import logging
from typing import Iterable, NamedTuple, Tuple

import numpy as np
import onnx

BLOCK_SIZE = 32  # along the input dimension; every supported hidden size is a multiple
ACCURACY_LEVEL = 4  # int8 activations, per row and block (row-independent; the fastest CPU kernels)


class Scheme(NamedTuple):
    attention: int  # bits of the q/k/v and output projections (GPT-2: c_attn, attn.c_proj)
    mlp: int  # bits of the MLP's projections (gate/up and down; GPT-2: c_fc, mlp.c_proj)
    head: int  # bits of the LM head
    embedding: int  # bits of the token embedding's table (GatherBlockQuantized)
    symmetric: bool  # 4-bit blocks: symmetric (one scale) or with a zero point (scale and offset)


SCHEMES = {
    "int8": Scheme(attention=8, mlp=8, head=8, embedding=8, symmetric=True),
    "int4": Scheme(attention=8, mlp=4, head=8, embedding=8, symmetric=False),
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
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    head = next(n.name for n in matmuls if head_output in n.output)
    # The builder names each weight after its checkpoint module: attention's have "attn." in them.
    attention = {n.name for n in matmuls if "attn." in n.input[1]}
    mlp = {n.name for n in matmuls} - attention - {head}
    groups = [(attention, scheme.attention), (mlp, scheme.mlp), ({head}, scheme.head)]
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
