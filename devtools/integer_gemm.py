"""ONNX Runtime's integer GEMM in place of a graph's MatMuls, for the benchmarks that measure it against
MatMulNBits (bench/block_size.py, bench/rotation.py): `per_row` rewrites named products, and
`rotate_input_blocks` rotates a product's input in the graph by a block-diagonal orthogonal matrix."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper


def per_row(model, names):
    """The named MatMuls as integer GEMMs: weights int8 with a scale per output column; activations
    quantized per row at run time (max |x| / 127, shifted to uint8 around 128, the zero point),
    once per input that several products share. The int32 result times both scales is the product.
    Exact integer sums: a row's result cannot depend on the other rows."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    graph.initializer.extend(numpy_helper.from_array(value, name) for name, value in [
        ("row_q.inv127", np.array(1 / 127, np.float32)), ("row_q.tiny", np.array(1e-30, np.float32)),
        ("row_q.128", np.array(128, np.float32)), ("row_q.zero_point", np.array(128, np.uint8))])
    nodes, quantized = [], {}
    for node in graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        x, weight_name = node.input
        if x not in quantized:  # |x| -> row max -> scale; x / scale rounded, + 128, as uint8
            p = f"row_q.{len(quantized)}."
            nodes += [
                helper.make_node("Abs", [x], [p + "abs"]),
                helper.make_node("ReduceMax", [p + "abs"], [p + "max"], axes=[-1], keepdims=1),
                helper.make_node("Max", [p + "max", "row_q.tiny"], [p + "max_or_tiny"]),  # an all-zero row
                helper.make_node("Mul", [p + "max_or_tiny", "row_q.inv127"], [p + "scale"]),
                helper.make_node("Div", [x, p + "scale"], [p + "scaled"]),
                helper.make_node("Round", [p + "scaled"], [p + "rounded"]),
                helper.make_node("Add", [p + "rounded", "row_q.128"], [p + "shifted"]),
                helper.make_node("Cast", [p + "shifted"], [p + "uint8"], to=TensorProto.UINT8),
            ]
            quantized[x] = (p + "uint8", p + "scale")
        x_q, x_scale = quantized[x]
        w = numpy_helper.to_array(weights[weight_name]).astype(np.float32)
        w_scale = np.abs(w).max(axis=0) / 127
        w_scale = np.where(w_scale == 0, 1, w_scale).astype(np.float32)
        graph.initializer.remove(weights[weight_name])
        graph.initializer.extend([numpy_helper.from_array(np.rint(w / w_scale).astype(np.int8), weight_name + ".q"),
                                  numpy_helper.from_array(w_scale, weight_name + ".scale")])
        out = node.output[0]
        nodes += [helper.make_node("MatMulInteger", [x_q, weight_name + ".q", "row_q.zero_point"], [out + ".int"]),
                  helper.make_node("Cast", [out + ".int"], [out + ".float"], to=TensorProto.FLOAT),
                  helper.make_node("Mul", [out + ".float", x_scale], [out + ".row"]),
                  helper.make_node("Mul", [out + ".row", weight_name + ".scale"], [out])]
    del graph.node[:]
    graph.node.extend(nodes)
    return model


def rotate_input_blocks(model, names, rotation: np.ndarray):
    """The named MatMuls' inputs times a block-diagonal matrix of `rotation` (b x b, orthogonal) at run
    time (a Reshape to rows of b, a MatMul, a Reshape back), and their weights times its transpose
    beforehand: the same products, with each row's values spread within its blocks of b."""
    graph = model.graph
    weights = {init.name: init for init in graph.initializer}
    block = rotation.shape[0]
    graph.initializer.extend([numpy_helper.from_array(rotation.astype(np.float32), "rotate.matrix"),
                              numpy_helper.from_array(np.array([-1, block], np.int64), "rotate.blocks")])
    nodes = []
    for node in graph.node:
        if node.name in names:
            x, weight_name = node.input
            w = numpy_helper.to_array(weights[weight_name]).astype(np.float32)
            inputs, outputs = w.shape
            rotated = np.einsum("ji,bjn->bin", rotation, w.reshape(inputs // block, block, outputs))  # R^T W, block by block
            weights[weight_name].CopyFrom(numpy_helper.from_array(rotated.reshape(inputs, outputs).astype(np.float32), weight_name))
            p = f"{node.name}.rotate."
            graph.initializer.append(numpy_helper.from_array(np.array([-1, inputs], np.int64), p + "shape"))
            nodes += [helper.make_node("Reshape", [x, "rotate.blocks"], [p + "blocks"]),
                      helper.make_node("MatMul", [p + "blocks", "rotate.matrix"], [p + "rotated"]),
                      helper.make_node("Reshape", [p + "rotated", p + "shape"], [p + "input"])]
            node.input[0] = p + "input"
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
    return model
