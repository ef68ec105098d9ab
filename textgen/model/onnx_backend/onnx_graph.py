"""One decoder step as an ONNX graph for ONNX Runtime, built from a `save_pretrained` directory
without torch (numpy, `onnx.helper`, onnxruntime's own quantizer).

Tokens are packed: the N real tokens of all rows, row after row, with no padding (B rows, Q_b real
tokens in row b, S = the longest; T = the cache's time capacity). Every layer's matrix products, norms
and activations run on the N tokens alone; only attention sees rows: each layer scatters its fused
q/k/v into the [B, S] right-padded layout (one Gather by `padded_index`), where the per-head norms,
the rotary positions and GroupQueryAttention run, and gathers the attention's output back (one
GatherND by `packed_index`). So a step where one row brings a prompt chunk and the others one token
each computes what it holds, not B x S positions; a step of one token per row pays two small copies
per layer.
- `inputs_embeds` float32 [N, hidden]: the tokens' rows of the embedding table, which is kept out of the
  graph in embedding.bin and read a row per token (embedding_table.py: mapped inside the graph, the
  table grew resident in full). A graph older than GRAPH_VERSION 7 takes `input_ids` int64 [B, S] and
  no packing.
- `position_ids` int64 [B, S]: start + 0..S-1, padding clamped to
  context - 1 by the runtime (learned position tables and rotary tables have `context` rows).
- `padded_index` int64 [B, S]: the packed token at each padded position (padding: 0, any token;
  GroupQueryAttention never writes padding into the cache nor reads it).
- `packed_index` int64 [N, 2]: each packed token's (row, position in the row).
- `seqlens_k` int32 [B]: P + Q - 1 (P tokens cached before this call, Q real tokens in it); an idle
  row (Q = 0) keeps P - 1, an idle empty slot needs 0 (GroupQueryAttention refuses -1).
- `query_seqlens` int32 [B]: Q per row (GroupQueryAttention's input 16). Rows [0, Q) are written
  into the cache at positions [P, P + Q); padding never reaches it.
- `total_sequence_length` int32 scalar: an upper bound of P + Q, at most `context` (the runtime passes
  min(T, context): GroupQueryAttention refuses a rotary table shorter than it).
- `logit_index` int64 [R]: indices into the N packed tokens' final hidden states, the tokens whose
  next-token logits are wanted (R = 0 is allowed: no LM head work).
- `hidden_index` int64 [H]: the same kind of packed indices, the tokens whose final hidden states (after
  the final norm, before the LM head) are wanted themselves: embeddings (H = 0 while generating).
- `past_key_{i}`, `past_value_{i}` float32 [B, kv_heads, T, head_dim] per layer.
Outputs: `logits` float32 [R, vocab]; `hidden` float32 [H, hidden]; `present_key_{i}`,
`present_value_{i}`, which the runtime binds to the same memory as the past ones (GroupQueryAttention
writes the new positions in place). A graph older than GRAPH_VERSION 6 has no `hidden_index` / `hidden`
(a cached one is rebuilt, its key changed; one prebuilt into a model directory serves without embeddings).

Layout: every residual add is folded into a Skip(Simplified)LayerNormalization (its 4th output is the
new residual stream, its `bias` input carries the previous projection's bias); attention is
com.microsoft GroupQueryAttention on the fused q/k/v output as packed QKV (GPT-2's c_attn; Llama's
qkv_proj, the op rotating q and k itself, `do_rotary` with the cos/sin tables from rope.py, which the
torch module uses too: row s of a row rotates at P + s, its padding at a position inside the table).
Qwen3 and Gemma 3, whose per-head norms come between the projection and the rotation, and models
rotating part of each head (Phi-4-mini; the op rotates whole heads), split q, k and v and rotate them
with com.microsoft RotaryEmbedding at the explicit position ids. The packed form saves three nodes a
layer (Split, two RotaryEmbedding): SmolLM2-135M's graph has 396 nodes, not 485 (ONNX Runtime runs 366
after its fusions, not 456), and the same logits, bit for bit. The final norm runs on all positions, then `logit_index` gathers
the wanted rows before the LM head.

Weights: `quantize="none"` keeps float32 (a tied head stored a second time, transposed: see
`_logits`). `quantize="int8"` or `"int4"` (quantize.py's SCHEMES) passes every MatMul, the LM head
included, through onnxruntime's MatMulNBitsQuantizer (int8: 8 bits everywhere; int4: the MLPs in 4
bits, attention and the head in 8; blocks of 32, accuracy level 4: activations quantized per row, so a
row's result never depends on its neighbours), and stores the token embedding's table in 8 bits, in
GatherBlockQuantized's layout (embedding.bin; a float32 table of a 50k-token vocabulary is 154 MB).
"""

from __future__ import annotations

import os
from typing import List, NamedTuple, Optional, Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..config import (
    attention_windows, layer_rope, mlp_activation, model_shape, multipliers, native_family, norms, read_config, rope_layers,
    rotary_dim,
)
from ..rope import rope_tables
from .graph_files import DATA_FILE, GRAPH_FILE, GRAPH_VERSION
from .onnx_weights import NumpyCheckpoint
from .embedding_table import METADATA_KEY, write_table
from .quantize import BLOCK_SIZE, quantize_rows_uint8, quantize_weights
from .schemes import SCHEMES

MS = "com.microsoft"
OPSET = 17


class GraphBuilder:
    """Nodes and initializers of one graph; names of intermediate values are generated."""

    def __init__(self):
        # Initializers go straight into the model's graph: helper.make_graph / make_model would copy
        # every weight once more (DistilGPT2's build peaked 0.3 GB higher that way).
        self.proto = helper.make_model(helper.make_graph([], "decoder_step", [], []), producer_name="textgen")
        self.nodes: List[onnx.NodeProto] = []
        self.inputs: List[onnx.ValueInfoProto] = []
        self.outputs: List[onnx.ValueInfoProto] = []
        self.embedding: tuple = ()  # the token table as write_table takes it: (data,) or (data, scales, block)
        self._count = 0
        self._shared: set = set()

    def weight(self, name: str, array: np.ndarray) -> str:
        self.proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def shared_weight(self, name: str, array: np.ndarray) -> str:
        """An initializer several nodes use, added when the first of them asks for it."""
        if name not in self._shared:
            self._shared.add(self.weight(name, array))
        return name

    def op(self, op_type: str, inputs: Sequence[Optional[str]], outputs=1, domain: str = "", **attrs):
        """Add a node; `outputs` is a count (names generated) or a list of names. Returns the output
        name, or the list of names when there are several."""
        self._count += 1
        if isinstance(outputs, int):
            outputs = [f"{op_type}_{self._count}_{k}" for k in range(outputs)]
        inputs = [name or "" for name in inputs]
        self.nodes.append(helper.make_node(op_type, inputs, outputs, name=f"{op_type}_{self._count}", domain=domain, **attrs))
        return outputs[0] if len(outputs) == 1 else outputs

    def model(self) -> onnx.ModelProto:
        graph = self.proto.graph
        graph.node.extend(self.nodes)
        graph.input.extend(self.inputs)
        graph.output.extend(self.outputs)
        del self.proto.opset_import[:]
        self.proto.opset_import.extend([helper.make_opsetid("", OPSET), helper.make_opsetid(MS, 1)])
        return self.proto


def _declare_io(g: GraphBuilder, shape) -> None:
    float_, int64, int32 = TensorProto.FLOAT, TensorProto.INT64, TensorProto.INT32
    g.inputs += [
        helper.make_tensor_value_info("inputs_embeds", float_, ["tokens", shape.width]),
        helper.make_tensor_value_info("position_ids", int64, ["batch", "sequence"]),
        helper.make_tensor_value_info("padded_index", int64, ["batch", "sequence"]),
        helper.make_tensor_value_info("packed_index", int64, ["tokens", 2]),
        helper.make_tensor_value_info("seqlens_k", int32, ["batch"]),
        helper.make_tensor_value_info("total_sequence_length", int32, []),
        helper.make_tensor_value_info("query_seqlens", int32, ["batch"]),
        helper.make_tensor_value_info("logit_index", int64, ["rows"]),
        helper.make_tensor_value_info("hidden_index", int64, ["hidden_rows"]),
    ]
    g.outputs.append(helper.make_tensor_value_info("logits", float_, ["rows", shape.vocab_size]))
    g.outputs.append(helper.make_tensor_value_info("hidden", float_, ["hidden_rows", shape.width]))
    cache = ["batch", shape.n_kv_heads, "time", shape.head_dim]
    for i in range(shape.n_layers):
        for kind in ("key", "value"):
            g.inputs.append(helper.make_tensor_value_info(f"past_{kind}_{i}", float_, cache))
            g.outputs.append(helper.make_tensor_value_info(f"present_{kind}_{i}", float_, cache))


def _linear(g: GraphBuilder, x: str, name: str, weight_in_out: np.ndarray, bias: Optional[np.ndarray] = None) -> str:
    """x @ W (+ b), W stored [in, out] as MatMul wants (and MatMulNBitsQuantizer quantizes)."""
    y = g.op("MatMul", [x, g.weight(name, weight_in_out)])
    return y if bias is None else g.op("Add", [y, g.weight(name + ".bias", bias)])


def _head_norm(g: GraphBuilder, x: str, name: str, weight: np.ndarray, heads: int, eps: float) -> str:
    """RMSNorm of each head's slice of x [batch, sequence, heads * head_dim] (Qwen3's q_norm / k_norm)."""
    per_head = g.op("Reshape", [x, g.weight(name + ".heads", np.array([0, 0, heads, weight.shape[0]], dtype=np.int64))])
    normed = g.op("SimplifiedLayerNormalization", [per_head, g.weight(name, weight)], epsilon=eps, axis=-1)
    return g.op("Reshape", [normed, g.weight(name + ".flat", np.array([0, 0, -1], dtype=np.int64))])


def _attention(
    g: GraphBuilder, layer: int, q: str, k: Optional[str], v: Optional[str], heads: int, kv_heads: int,
    window: Optional[int] = None, scale: Optional[float] = None, rotary: Optional[tuple] = None,
) -> str:
    """GroupQueryAttention over the in-place cache, on rows (`_to_rows`), its output packed again;
    `k`, `v` None means `q` is packed QKV. `window`: a
    sliding window (Mistral's), which the op applies in place (`local_window_size`); `scale`: the
    scores' scale, if not 1 / sqrt(head_dim) (Granite's attention_multiplier); `rotary`: the (cos, sin)
    tables' names when the op rotates q and k itself (`do_rotary`)."""
    inputs = [q, k, v, f"past_key_{layer}", f"past_value_{layer}", "seqlens_k", "total_sequence_length"]
    inputs += list(rotary or (None, None))  # cos_cache, sin_cache (inputs 7, 8)
    inputs += [None] * 7 + ["query_seqlens"]  # position_ids .. k_norm_weight unused; query_seqlens is input 16
    outputs = [f"attention_{layer}", f"present_key_{layer}", f"present_value_{layer}"]
    extra = {} if window is None else {"local_window_size": int(window)}
    if rotary is not None:
        extra["do_rotary"] = 1
    if scale is not None:
        extra["scale"] = float(scale)
    attended = g.op("GroupQueryAttention", inputs, outputs, domain=MS, num_heads=heads, kv_num_heads=kv_heads, **extra)[0]
    return _to_packed(g, attended)


def _to_rows(g: GraphBuilder, x: str) -> str:
    """[N, d] packed tokens -> [B, S, d] right-padded rows."""
    return g.op("Gather", [x, "padded_index"], axis=0)


def _to_packed(g: GraphBuilder, x: str) -> str:
    """[B, S, d] right-padded rows -> [N, d] packed tokens."""
    return g.op("GatherND", [x, "packed_index"])


def _scalar(g: GraphBuilder, name: str, value: float) -> Optional[str]:
    """A float32 scalar initializer, or None for 1 (Granite's multipliers: nothing to multiply by)."""
    return None if value == 1.0 else g.weight(name, np.array(value, dtype=np.float32))


def _times(g: GraphBuilder, x: str, scalar: Optional[str]) -> str:
    return x if scalar is None else g.op("Mul", [x, scalar])


def _embedding(g: GraphBuilder, table: np.ndarray, quantize: str) -> str:
    """The token embedding: kept for embedding.bin (8 bits under a quantizing scheme), looked up outside
    the graph, which takes the rows as `inputs_embeds`."""
    if quantize in SCHEMES:
        g.embedding = (*quantize_rows_uint8(table, BLOCK_SIZE), BLOCK_SIZE)
    else:
        g.embedding = (np.ascontiguousarray(table, dtype=np.float32),)
    return "inputs_embeds"


def _logits(g: GraphBuilder, hidden: str, width: int, head: np.ndarray, quantize: str, norm_weight: np.ndarray) -> None:
    """Gather the wanted rows of the final hidden states, then the LM head ([vocab, hidden] `head`); the
    rows `hidden_index` names are an output of their own (`hidden`: what embeddings pool, same pass).

    A tied head is stored again, transposed, rather than shared with the embedding: ORT prepacks a
    MatMul's weight into its own buffer, and the lookup reads its rows from embedding.bin.

    8-bit: MatMulNBits quantizes its input to int8 per block of BLOCK_SIZE channels, and a block
    holding one of the final norm's large channels leaves its neighbours few levels. The head's input
    channels are therefore reordered by the norm's |weight| (the same order for the head's rows: the
    product is unchanged), so channels of like scale share blocks. Measured on SmolLM2 (greedy, first
    16 tokens of 20 prompts equal to float32's): 13/20 in channel order, 15/20 reordered, at no cost;
    17/20 with the rows passed twice (their int8 values and the rounding error), +15-27% per step."""
    flat = g.op("Reshape", [hidden, g.weight("flat_shape", np.array([-1, width], dtype=np.int64))])
    g.op("Gather", [flat, "hidden_index"], ["hidden"], axis=0)
    rows = g.op("Gather", [flat, "logit_index"], axis=0)
    weight = head.T
    if quantize in SCHEMES:
        order = np.argsort(-np.abs(norm_weight), kind="stable").astype(np.int64)
        rows = g.op("Gather", [rows, g.weight("head_channel_order", order)], axis=1)
        weight = weight[order]
    g.op("MatMul", [rows, g.weight("lm_head", weight)], ["logits"])


def build_gpt2(config: dict, ckpt: NumpyCheckpoint, quantize: str) -> GraphBuilder:
    prefix = "transformer." if "transformer.wte.weight" in ckpt else ""

    def w(name):
        return ckpt.get(prefix + name)

    shape = model_shape(config)
    width, heads = shape.width, shape.n_heads
    eps = float(config.get("layer_norm_epsilon", 1e-5))
    g = GraphBuilder()
    _declare_io(g, shape)
    wte = w("wte.weight")
    tokens = _embedding(g, wte, quantize)
    positions = _to_packed(g, g.op("Gather", [g.weight("wpe", w("wpe.weight")), "position_ids"]))
    # Each LayerNorm adds the previous sublayer's output (and its projection bias) to the residual.
    pending, residual, pending_bias = tokens, positions, None
    for i in range(shape.n_layers):
        p = f"h.{i}."

        def norm(name, x, skip, bias):
            inputs = [x, skip, g.weight(p + name + ".weight", w(p + name + ".weight")), g.weight(p + name + ".bias", w(p + name + ".bias")), bias]
            out, _, _, summed = g.op("SkipLayerNormalization", inputs, 4, domain=MS, epsilon=eps)
            return out, summed

        h, residual = norm("ln_1", pending, residual, pending_bias)
        qkv = _linear(g, h, p + "attn.c_attn", w(p + "attn.c_attn.weight"), w(p + "attn.c_attn.bias"))
        attended = _attention(g, i, _to_rows(g, qkv), None, None, heads, heads)
        projected = _linear(g, attended, p + "attn.c_proj", w(p + "attn.c_proj.weight"))
        h, residual = norm("ln_2", projected, residual, g.weight(p + "attn.c_proj.bias", w(p + "attn.c_proj.bias")))
        # GPT-2's gelu_new is the tanh approximation: FastGelu, with the c_fc bias folded in.
        fc = _linear(g, h, p + "mlp.c_fc", w(p + "mlp.c_fc.weight"))
        activated = g.op("FastGelu", [fc, g.weight(p + "mlp.c_fc.bias", w(p + "mlp.c_fc.bias"))], domain=MS)
        pending = _linear(g, activated, p + "mlp.c_proj", w(p + "mlp.c_proj.weight"))
        pending_bias = g.weight(p + "mlp.c_proj.bias", w(p + "mlp.c_proj.bias"))
    final = [pending, residual, g.weight("ln_f.weight", w("ln_f.weight")), g.weight("ln_f.bias", w("ln_f.bias")), pending_bias]
    hidden = g.op("SkipLayerNormalization", final, 4, domain=MS, epsilon=eps)[0]
    tied = config.get("tie_word_embeddings", True)
    head = wte if tied else ckpt.get("lm_head.weight")
    _logits(g, hidden, width, head, quantize, w("ln_f.weight"))
    return g


def _layer_rotary_tables(g: GraphBuilder, config: dict, rotated: int, positions: int) -> list:
    """Each layer's cos and sin initializers: one pair per distinct RoPE (config.layer_rope; Gemma 3: its
    sliding layers' and its full ones')."""
    ropes, tables = layer_rope(config), {}
    for params in ropes:
        if id(params) not in tables:
            cos, sin = rope_tables(config, rotated, positions, params)
            suffix = f"_{len(tables)}" if tables else ""
            tables[id(params)] = g.weight("rope_cos" + suffix, cos), g.weight("rope_sin" + suffix, sin)
    return [tables[id(params)] for params in ropes]


def build_llama(config: dict, ckpt: NumpyCheckpoint, quantize: str) -> onnx.ModelProto:
    def w(name):
        return ckpt.get("model." + name)

    def maybe(name):
        return w(name) if "model." + name in ckpt else None

    shape = model_shape(config)
    width, heads, kv_heads, head_dim = shape.width, shape.n_heads, shape.n_kv_heads, shape.head_dim
    eps = float(config.get("rms_norm_eps", 1e-6))
    style = norms(config)
    g = GraphBuilder()
    _declare_io(g, shape)

    def norm_array(name):  # Gemma stores its RMSNorm weights centred on 0: applied as 1 + weight
        return w(name) + np.float32(style.offset) if style.offset else w(name)

    def norm_weight(name):
        return g.weight(name, norm_array(name))

    embed = w("embed_tokens.weight")
    scales = multipliers(config)
    residual_scale = _scalar(g, "residual_multiplier", scales.residual)

    def branch_output(x, post_norm):
        """A residual branch's output as added to the stream: Gemma 3 normalises it, Granite scales it."""
        if style.sandwich:
            x = g.op("SimplifiedLayerNormalization", [x, norm_weight(post_norm)], epsilon=eps, axis=-1)
        return _times(g, x, residual_scale)

    x = _times(g, _embedding(g, embed, quantize), _scalar(g, "embedding_multiplier", scales.embedding))
    rotated = rotary_dim(config, head_dim)
    uses_rope, windows = rope_layers(config), attention_windows(config)
    rotary = _layer_rotary_tables(g, config, rotated, shape.context)
    gelu = mlp_activation(config) == "gelu_pytorch_tanh"
    ffn = config["intermediate_size"]
    split_gate_up = g.weight("gate_up_split", np.array([ffn, ffn], dtype=np.int64))
    qkv_widths = np.array([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], dtype=np.int64)
    # GroupQueryAttention rotates whole heads only, and wants them a multiple of 16 wide.
    op_rotates = rotated == head_dim and head_dim % 16 == 0
    h = g.op("SimplifiedLayerNormalization", [x, norm_weight("layers.0.input_layernorm.weight")], epsilon=eps, axis=-1)
    residual = x
    for i in range(shape.n_layers):
        p = f"layers.{i}."
        attn, mlp = p + "self_attn.", p + "mlp."
        if i > 0:
            norm_w = norm_weight(p + "input_layernorm.weight")
            h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", [pending, residual, norm_w], 4, domain=MS, epsilon=eps)
        # One fused q/k/v projection (Qwen2 has biases on all three), rotary on q and k at their own positions.
        # Phi-3's checkpoints store them fused already.
        fused = maybe(attn + "qkv_proj.weight")
        qkv_w = (fused if fused is not None else np.concatenate([w(attn + f"{n}_proj.weight") for n in "qkv"])).T
        biases = [maybe(attn + f"{n}_proj.bias") for n in "qkv"]
        qkv_b = np.concatenate(biases) if all(b is not None for b in biases) else None
        qkv = _to_rows(g, _linear(g, h, attn + "qkv_proj", qkv_w, qkv_b))
        layer_rotary = rotary[i] if uses_rope[i] else None  # SmolLM3 leaves RoPE out of every fourth layer
        head_norms = maybe(attn + "q_norm.weight") is not None
        if not head_norms and (layer_rotary is None or op_rotates):  # packed: the op splits q/k/v and rotates
            attended = _attention(g, i, qkv, None, None, heads, kv_heads, windows[i], scales.attention, layer_rotary)
        else:  # Qwen3, Gemma 3: RMSNorm over each head before the rotation; Phi-4-mini: 3/4 of each head rotated
            q, k, v = g.op("Split", [qkv, g.shared_weight("qkv_split", qkv_widths)], 3, axis=-1)
            if head_norms:
                q = _head_norm(g, q, attn + "q_norm.weight", norm_array(attn + "q_norm.weight"), heads, eps)
                k = _head_norm(g, k, attn + "k_norm.weight", norm_array(attn + "k_norm.weight"), kv_heads, eps)
            if layer_rotary is not None:
                cos, sin = layer_rotary
                q = g.op("RotaryEmbedding", [q, "position_ids", cos, sin], domain=MS, num_heads=heads, rotary_embedding_dim=rotated)
                k = g.op("RotaryEmbedding", [k, "position_ids", cos, sin], domain=MS, num_heads=kv_heads, rotary_embedding_dim=rotated)
            attended = _attention(g, i, q, k, v, heads, kv_heads, windows[i], scales.attention)
        o_bias = maybe(attn + "o_proj.bias")
        if residual_scale is None and not style.sandwich:  # the bias is added by the norm below
            projected = _linear(g, attended, attn + "o_proj", w(attn + "o_proj.weight").T)
        else:  # the whole branch, its bias included, before the residual add
            branch = _linear(g, attended, attn + "o_proj", w(attn + "o_proj.weight").T, o_bias)
            projected, o_bias = branch_output(branch, p + "post_attention_layernorm.weight"), None
        norm_w = norm_weight(p + ("pre_feedforward_layernorm" if style.sandwich else "post_attention_layernorm") + ".weight")
        skip_inputs = [projected, residual, norm_w, None if o_bias is None else g.weight(attn + "o_proj.bias", o_bias)]
        h, _, _, residual = g.op("SkipSimplifiedLayerNormalization", skip_inputs, 4, domain=MS, epsilon=eps)
        # Gated MLP: act(gate) * up, then down; act SiLU (SwiGLU) or Gemma 3's tanh-approximated GELU.
        # One fused gate/up projection, as llama.py has it: one matmul (one pass over h) instead of two.
        fused = maybe(mlp + "gate_up_proj.weight")  # Phi-3: [gate; up] already
        gate_up_w = (fused if fused is not None else np.concatenate([w(mlp + "gate_proj.weight"), w(mlp + "up_proj.weight")])).T
        gate, up = g.op("Split", [_linear(g, h, mlp + "gate_up_proj", gate_up_w), split_gate_up], 2, axis=-1)
        activated = g.op("FastGelu", [gate], domain=MS) if gelu else g.op("Mul", [gate, g.op("Sigmoid", [gate])])
        down = _linear(g, g.op("Mul", [activated, up]), mlp + "down_proj", w(mlp + "down_proj.weight").T)
        pending = branch_output(down, p + "post_feedforward_layernorm.weight")
    norm_w = norm_weight("norm.weight")
    hidden = g.op("SkipSimplifiedLayerNormalization", [pending, residual, norm_w], 4, domain=MS, epsilon=eps)[0]
    tied = config.get("tie_word_embeddings", False) or "lm_head.weight" not in ckpt
    head = embed if tied else ckpt.get("lm_head.weight")
    if scales.logits != 1.0:  # Granite divides the logits: folded into the head, stored apart from the embedding
        head = (head / np.float32(scales.logits)).astype(np.float32)
    _logits(g, hidden, width, head, quantize, norm_array("norm.weight"))
    return g


class BuiltGraph(NamedTuple):
    model: onnx.ModelProto
    embedding: tuple  # the token table, as embedding_table.write_table takes it


def build_model(source_dir: str, quantize: str) -> BuiltGraph:
    if quantize != "none" and quantize not in SCHEMES:
        raise ValueError(f"quantize must be 'none', {', '.join(map(repr, SCHEMES))}, not {quantize!r}")
    config = read_config(source_dir)
    family = native_family(config)
    if family is None:
        raise ValueError(f"no ONNX graph builder for model_type {config.get('model_type')!r} with this config")
    ckpt = NumpyCheckpoint(source_dir)
    build = build_gpt2 if family == "gpt2" else build_llama
    g = build(config, ckpt, quantize)
    model = g.model()
    if quantize in SCHEMES:
        model = quantize_weights(model, SCHEMES[quantize], "logits")
    # Read back by OnnxModel through the session's metadata (no onnx import at run time).
    helper.set_model_props(model, {"textgen.quantize": quantize, "textgen.graph_version": str(GRAPH_VERSION)})
    return BuiltGraph(model, g.embedding)


def build_graph(source_dir: str, out_dir: str, quantize: str) -> str:
    """Build the graph into `out_dir` (model.onnx plus its weights in model.onnx.data, so that graphs
    past protobuf's 2 GB limit save the same way, and the token table in embedding.bin); returns the
    .onnx path. Usable at image build time."""
    model, embedding = build_model(source_dir, quantize)
    os.makedirs(out_dir, exist_ok=True)
    entry = model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, write_table(out_dir, *embedding)
    path = os.path.join(out_dir, GRAPH_FILE)
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location=DATA_FILE, size_threshold=1024)
    return path
