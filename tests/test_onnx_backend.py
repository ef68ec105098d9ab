"""The ONNX Runtime backend against transformers' own forward pass, on tiny GPT-2, Llama and Qwen2.

Each scenario runs rows through `OnnxModel.forward` the way the engine does (prefill chunks of
different lengths, rows with different pasts, idle rows, decode steps, slots past 0) and compares every
returned row with the logits transformers computes for the whole sequence in one plain forward (a
longrope model past its original context: tests.models.transformers_logits says how).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from tests.models import ROPE_SCALINGS, VARIANTS, make_tiny_llama, transformers_logits
from textgen.model.onnx_backend import graph_files, onnx_graph
from textgen.model.kv_cache import KVCache
from textgen.model.onnx_backend.graph_files import graph_path
from textgen.model.onnx_backend.onnx_model import OnnxModel
from textgen.model.config import read_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLOAT_TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("onnx-models")
    dirs = {"gpt2": tiny_model_dir}
    for variant in VARIANTS:
        dirs[variant] = make_tiny_llama(str(base / variant), tiny_model_dir, variant)
    return dirs


@pytest.fixture(scope="module")
def graph_cache(tmp_path_factory):
    return str(tmp_path_factory.mktemp("onnx-graphs"))


def load(model_dirs, graph_cache, arch, quantize):
    source = model_dirs[arch]
    return OnnxModel(graph_path(source, graph_cache, quantize), read_config(source), threads=2)


def reference_logits(source: str, sequences):
    """transformers' logits at every position of each whole sequence (one call; for longrope past its
    original context, tests.models.transformers_logits's rule)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    with torch.no_grad():
        return [transformers_logits(model, torch.tensor(seq)[None]).numpy() for seq in sequences]


class Rows:
    """Rows living in consecutive cache slots from `first_slot`, each with its own full token sequence;
    `step` feeds each row its next `count` tokens and checks what must and must not change."""

    def __init__(self, model, sequences, first_slot, slots):
        self.model, self.sequences, self.first_slot = model, sequences, first_slot
        self.done = [0] * len(sequences)
        self.cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        self.cache.reserve(slots, max(len(s) for s in sequences) + 8)
        rng = np.random.default_rng(1)
        for array in self.cache.keys + self.cache.values:  # noise: writes out of place would show
            array[:] = rng.standard_normal(array.shape, dtype=np.float32)

    def step(self, counts, rows=None, want_logits=True):
        rows = list(range(len(self.sequences))) if rows is None else rows
        width = max(max(counts), 1)
        tokens = np.zeros((len(rows), width), dtype=np.int64)
        for i, (row, count) in enumerate(zip(rows, counts)):
            tokens[i, :count] = self.sequences[row][self.done[row] : self.done[row] + count]
        starts = np.array([self.done[r] for r in rows], dtype=np.int64)
        before = [a.copy() for a in self.cache.keys + self.cache.values]
        first = self.first_slot + rows[0]
        logits = self.model.forward(tokens, starts, np.array(counts), self.cache, first, want_logits)
        for i, (row, count) in enumerate(zip(rows, counts)):
            slot, end = first + i, self.done[row] + count
            for old, new in zip(before, self.cache.keys + self.cache.values):
                # Only [start, start + count) of a row's slot changes: padding never reaches the cache.
                assert np.array_equal(old[slot, :, end:], new[slot, :, end:])
                assert np.array_equal(old[slot, :, : self.done[row]], new[slot, :, : self.done[row]])
                if count == 0:
                    assert np.array_equal(old[slot], new[slot])
            self.done[row] = end
        outside = [s for s in range(self.cache.slot_capacity) if not first <= s < first + len(rows)]
        for old, new in zip(before, self.cache.keys + self.cache.values):
            assert np.array_equal(old[outside], new[outside])
        return logits

    def expect(self, logits, counts, rows, reference, tolerance):
        rows = list(range(len(self.sequences))) if rows is None else rows
        for i, (row, count) in enumerate(zip(rows, counts)):
            if count:
                want = reference[row][self.done[row] - 1]
                np.testing.assert_allclose(logits[i], want, atol=tolerance, rtol=0)


def scripted_run(model, sequences, reference, tolerance):
    """The engine's kinds of call, in one script. Rows live in slots 2..5 (first_slot > 0)."""
    rows = Rows(model, sequences, first_slot=2, slots=6)
    script = [
        ([5, 9, 3, 0], None, True),  # prefill, three lengths in one call; row 3 an idle empty slot
        ([7, 7, 4, 6], None, True),  # different pasts in one call: chunk 7 after 9 (row 1), a first chunk (row 3)
        ([3, 0, 5, 2], None, False),  # more chunks, no logits wanted; row 1 idle with a past
        ([0, 4, 1], [1, 2, 3], True),  # a sub-range of the slots (first slot 3)
        ([1, 1, 1, 1], None, True),  # decode steps
        ([1, 1, 0, 1], None, True),
        "grow",  # the cache regrows (new arrays): the bindings must follow
        ([1, 1, 1, 1], None, True),
    ]
    for item in script:
        if item == "grow":
            rows.cache.reserve(rows.cache.slot_capacity + 1, rows.cache.time_capacity)  # same time: same binding key
            continue
        counts, subset, want = item
        logits = rows.step(counts, subset, want)
        if want:
            assert logits.shape == (len(counts), model.vocab_size) and logits.dtype == np.float32
            rows.expect(logits, counts, subset, reference, tolerance)
        else:
            assert logits is None


def random_sequences(vocab, lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.integers(0, vocab, size=n).tolist() for n in lengths]


@pytest.mark.parametrize("arch", ["gpt2", *VARIANTS])
def test_float32_logits_match_transformers(model_dirs, graph_cache, arch):
    model = load(model_dirs, graph_cache, arch, "none")
    assert (model.backend, model.dtype_name) == ("onnx", "float32")
    sequences = random_sequences(model.vocab_size, [30, 30, 30, 30])
    scripted_run(model, sequences, reference_logits(model_dirs[arch], sequences), FLOAT_TOLERANCE)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_padding_past_the_context(model_dirs, graph_cache, arch):
    """A row ending at the last position of the context, right-padded beyond it, in a cache longer
    than the context: padding positions are clamped (learned and rotary tables have `context` rows)."""
    model = load(model_dirs, graph_cache, arch, "none")
    context = model.context
    sequences = random_sequences(model.vocab_size, [context, 12], seed=5)
    reference = reference_logits(model_dirs[arch], sequences)
    rows = Rows(model, sequences, first_slot=0, slots=2)
    rows.cache.reserve(2, context + 40)
    rows.step([context - 3, 0], want_logits=False)
    logits = rows.step([3, 9])  # row 0's padding reaches positions context .. context + 5
    rows.expect(logits, [3, 9], None, reference, FLOAT_TOLERANCE)


@pytest.mark.parametrize("quantize", ["int8", "int4"])
@pytest.mark.parametrize("arch", ["gpt2", *(v for v in VARIANTS if v not in ("linear-rope", "dynamic-rope"))])
def test_quantized_row_is_bit_identical_alone_and_batched(model_dirs, graph_cache, arch, quantize):
    model = load(model_dirs, graph_cache, arch, quantize)
    assert model.dtype_name == quantize
    sequences = random_sequences(model.vocab_size, [4, 11, 17])

    def run(rows_sequences, row):
        cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        cache.reserve(len(rows_sequences), 32)
        lengths = np.array([len(s) for s in rows_sequences])
        tokens = np.zeros((len(rows_sequences), lengths.max()), dtype=np.int64)
        for i, seq in enumerate(rows_sequences):
            tokens[i, : len(seq)] = seq
        prefill = model.forward(tokens, np.zeros(len(lengths), np.int64), lengths, cache, 0, True)[row]
        decode = model.forward(np.full((len(lengths), 1), 5), lengths, np.ones(len(lengths), np.int64), cache, 0, True)[row]
        return prefill, decode

    alone = run([sequences[1]], 0)
    batched = run(sequences, 1)
    assert np.array_equal(alone[0], batched[0]) and np.array_equal(alone[1], batched[1])


@pytest.mark.parametrize("quantize", ["none", "int8"])
@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen3"])
def test_a_decoding_rows_logits_do_not_depend_on_what_else_the_pass_carries(model_dirs, graph_cache, arch, quantize):
    """A row's next token alone, beside other decoding rows, and beside a joining prompt's chunk or a
    row's forced tokens (a pass wider than one token): the same logits, bit for bit. (GroupQueryAttention
    computed a one-token-wide pass with another kernel: SmolLM2 int8's logits moved by up to 1.36, so a
    seeded request's text depended on whether a prompt joined while it decoded.)"""
    model = load(model_dirs, graph_cache, arch, quantize)
    past, other = random_sequences(model.vocab_size, [20, 8], seed=7)

    def next_logits(tokens, counts):
        cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        cache.reserve(len(counts), 40)
        model.forward(np.array([past] * len(counts)), np.zeros(len(counts), np.int64), np.full(len(counts), 20), cache, 0, False)
        starts = np.array([20] + [0] * (len(counts) - 1))
        return model.forward(np.array(tokens), starts, np.array(counts), cache, 0, True)[0]

    alone = next_logits([[5]], [1])
    assert np.array_equal(alone, next_logits([[5], [6]], [1, 1]))
    assert np.array_equal(alone, next_logits([[5] + [0] * 7, other], [1, 8]))  # a prompt's chunk joins
    assert np.array_equal(alone, next_logits([[5, 0], [6, 7]], [1, 2]))  # another row's forced token


@pytest.mark.parametrize("quantize", ["none", "int8"])
@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_a_rows_logits_do_not_depend_on_the_caches_capacity(model_dirs, graph_cache, arch, quantize):
    """The cache grows for every row when a long prompt joins, and attention's `total_sequence_length`
    follows its capacity: a decoding row's logits stay the same, bit for bit, whether the cache holds 40
    positions or 1,000, for rows of unequal lengths alone and beside a joining prompt's chunk (else a
    seeded text would change with another request's prompt)."""
    model = load(model_dirs, graph_cache, arch, quantize)
    long, short, joining = random_sequences(model.vocab_size, [30, 9, 8], seed=11)

    def passes(capacity):
        cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        cache.reserve(3, capacity)
        tokens = np.zeros((2, 30), dtype=np.int64)
        tokens[0], tokens[1, :9] = long, short
        model.forward(tokens, np.zeros(2, np.int64), np.array([30, 9]), cache, 0, False)
        decode = model.forward(np.array([[5], [6]]), np.array([30, 9]), np.ones(2, np.int64), cache, 0, True)
        chunk = model.forward(np.array([[7] + [0] * 7, [8] + [0] * 7, joining]), np.array([31, 10, 0]),
                              np.array([1, 1, 8]), cache, 0, True)
        return decode, chunk

    small, large = passes(40), passes(1000)
    assert all(np.array_equal(a, b) for a, b in zip(small, large))


def last_logits_of_24_prompts(*models) -> list:
    """Each model's logits at the last position of 24 random prompts of 1 to 24 tokens, prefilled at once."""
    lengths = list(range(1, 25))
    sequences = random_sequences(models[0].vocab_size, lengths, seed=3)
    tokens = np.zeros((len(lengths), max(lengths)), dtype=np.int64)
    for i, seq in enumerate(sequences):
        tokens[i, : len(seq)] = seq
    outputs = []
    for model in models:
        cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        cache.reserve(len(lengths), 32)
        outputs.append(model.forward(tokens, np.zeros(len(lengths), np.int64), np.array(lengths), cache, 0, True))
    return outputs


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "gemma3"])
def test_int8_logits_close_to_float32(model_dirs, graph_cache, arch):
    exact = load(model_dirs, graph_cache, arch, "none")
    int8 = load(model_dirs, graph_cache, arch, "int8")
    want, got = last_logits_of_24_prompts(exact, int8)
    agree = np.mean(want.argmax(axis=1) == got.argmax(axis=1))
    relative = np.abs(got - want).max(axis=1) / np.abs(want).max(axis=1)
    assert agree >= 0.8, agree
    assert relative.max() < 0.1, relative.max()


def bits_of(model, op_type):
    """{node name: its `bits` attribute} of the graph's `op_type` nodes."""
    return {n.name: next(a.i for a in n.attribute if a.name == "bits") for n in model.graph.node if n.op_type == op_type}


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2"])
def test_int4_graph_has_4_bit_mlps_and_8_bit_attention_head_and_embedding(model_dirs, arch):
    model, embedding = onnx_graph.build_model(model_dirs[arch], "int4")
    config = read_config(model_dirs[arch])
    layers = config.get("num_hidden_layers", config.get("n_layer"))
    assert not [n for n in model.graph.node if n.op_type == "MatMul"]  # every weight quantized
    bits = {}  # what each MatMulNBits multiplies by (its weight's name, from the checkpoint's module) -> bits
    for node in model.graph.node:
        if node.op_type == "MatMulNBits":
            attrs = {a.name: a.i for a in node.attribute}
            assert (attrs["block_size"], attrs["accuracy_level"]) == (32, 4)
            part = "head" if "logits" in node.output else "attention" if "attn." in node.input[1] else "mlp"
            bits.setdefault(part, []).append(attrs["bits"])
            if attrs["bits"] == 4:
                assert len(node.input) > 3 and node.input[3], "int4 blocks carry zero points"
    assert bits == {"attention": [8] * 2 * layers, "mlp": [4] * 2 * layers, "head": [8]}
    data, scales, block = embedding  # the token table, looked up outside the graph: 8-bit blocks of 32
    assert data.dtype == np.uint8 and data.shape == (config["vocab_size"], scales.shape[1] * block) and block == 32
    assert {p.key: p.value for p in model.metadata_props}["textgen.quantize"] == "int4"


@pytest.mark.parametrize("arch", ["gpt2", "llama", "qwen2", "qwen3"])
def test_int4_logits_close_to_float32(model_dirs, graph_cache, arch):
    """How far 4 bits may move the logits. A 4-bit block of 32 Gaussian weights (with a zero point) has a
    step of (max - min) / 15 ~ 0.28 sigma, so each MLP weight is off by ~8% of sigma (int8's step is 17x
    finer); these tiny models' weights are all Gaussian, and int4 leaves attention and the head in 8 bits.
    Measured (relative RMS of the logits, 24 rows): gpt2 0.067, llama 0.029, qwen2 0.012, qwen3 0.027
    (with the attention in 4 bits too, 0.08-0.14). The bound, 0.15, is twice the largest; a wrong scale,
    zero point or nibble order gives ~1."""
    exact = load(model_dirs, graph_cache, arch, "none")
    int4 = load(model_dirs, graph_cache, arch, "int4")
    assert int4.dtype_name == "int4"
    want, got = last_logits_of_24_prompts(exact, int4)
    relative = np.linalg.norm(got - want) / np.linalg.norm(want)
    agree = np.mean(want.argmax(axis=1) == got.argmax(axis=1))
    print(f"\n{arch} int4: logits' relative RMS error {relative:.3f}, argmax agreement {agree:.2f}")
    assert relative < 0.15, relative
    assert agree >= 0.75, agree


def graph_as_before(source: str, quantize: str, out_dir: str) -> str:
    """The graph as GRAPH_VERSION 6 and before built it: right-padded rows throughout (`input_ids` [B, S]),
    the token table an initializer looked up inside the graph by Gather (float32) or GatherBlockQuantized
    (8 bits), no embedding.bin. Made from today's graph: the lookup put back in, and each scatter to
    rows and gather back to packed tokens made an identity."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model, table = onnx_graph.build_model(source, quantize)
    graph = model.graph
    for name in ("inputs_embeds", "padded_index", "packed_index"):
        graph.input.remove(next(i for i in graph.input if i.name == name))
    graph.input.insert(0, helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"]))
    # Each layer's scatter to rows (Gather by padded_index) and gather back (GatherND by packed_index)
    # become identities, and the rows layout runs throughout, as it did.
    for node in graph.node:
        if node.input[1:2] in (["padded_index"], ["packed_index"]):
            node.op_type, node.domain = "Identity", ""
            del node.input[1:], node.attribute[:]
    graph.initializer.append(numpy_helper.from_array(table[0], "table"))
    if len(table) == 3:
        data, scales, block = table
        graph.initializer.append(numpy_helper.from_array(scales, "table.scales"))
        lookup = helper.make_node("GatherBlockQuantized", ["table", "input_ids", "table.scales"], ["inputs_embeds"],
                                  domain="com.microsoft", bits=8, block_size=block, gather_axis=0, quantize_axis=1)
    else:
        lookup = helper.make_node("Gather", ["table", "input_ids"], ["inputs_embeds"])
    graph.node.insert(0, lookup)
    path = os.path.join(out_dir, "model.onnx")
    onnx.save_model(model, path, save_as_external_data=True, location="model.onnx.data")
    return path


@pytest.mark.parametrize("quantize", ["none", "int8"])
@pytest.mark.parametrize("arch", ["gpt2", "gemma3", "qwen3"])
def test_packed_tokens_and_the_table_outside_give_the_padded_graphs_logits(model_dirs, graph_cache, tmp_path, arch, quantize):
    """Today's graph (packed tokens, embedding.bin's rows dequantized in numpy) against the graph as it was
    (right-padded rows, ONNX Runtime's GatherBlockQuantized or Gather inside): the same logits, bit for bit
    in 8 bits, where a row's result never depends on the others (float32's matrix products may round
    differently with the number of rows). And a graph prebuilt that way still serves."""
    source = model_dirs[arch]
    before = OnnxModel(graph_as_before(source, quantize, str(tmp_path)), read_config(source), threads=2)
    packed = load(model_dirs, graph_cache, arch, quantize)
    assert before.table is None and packed.table is not None
    want, got = last_logits_of_24_prompts(before, packed)
    if quantize == "int8":
        np.testing.assert_array_equal(got, want)
    else:
        np.testing.assert_allclose(got, want, atol=FLOAT_TOLERANCE)


def test_the_table_is_read_not_mapped(model_dirs, graph_cache):
    """Every row of the vocabulary looked up (repeats and a batch's shape kept) leaves no mapping of
    embedding.bin in the process: its pages stay in the page cache, outside the worker's memory."""
    model = load(model_dirs, graph_cache, "llama", "int8")
    table = model.table
    ids = np.arange(table.rows)
    rows = table.lookup(np.stack([ids, ids[::-1]]))
    assert rows.shape == (2, table.rows, table.width) and rows.dtype == np.float32
    np.testing.assert_array_equal(rows[0], rows[1][::-1])
    with open("/proc/self/maps") as f:
        assert "embedding.bin" not in f.read()
    with pytest.raises(ValueError, match="out of range"):
        table.lookup(np.array([[table.rows]]))


def test_graph_is_built_once_per_key(model_dirs, tmp_path, monkeypatch):
    builds = []
    real_build = onnx_graph.build_graph
    monkeypatch.setattr(onnx_graph, "build_graph", lambda *a: builds.append(a) or real_build(*a))
    first = graph_path(model_dirs["gpt2"], str(tmp_path), "none")
    mtime = os.stat(first).st_mtime_ns
    assert graph_path(model_dirs["gpt2"], str(tmp_path), "none") == first
    assert len(builds) == 1 and os.stat(first).st_mtime_ns == mtime
    other = graph_path(model_dirs["gpt2"], str(tmp_path), "int8")
    assert other != first and len(builds) == 2
    int4 = graph_path(model_dirs["gpt2"], str(tmp_path), "int4")
    assert int4 not in (first, other) and len(builds) == 3
    assert sorted(os.listdir(tmp_path)) == sorted({os.path.basename(os.path.dirname(p)) for p in (first, other, int4)})
    keys = {q: graph_files.graph_key(model_dirs["gpt2"], q) for q in ("none", "int8", "int4")}
    assert len(set(keys.values())) == 3


def test_building_and_running_import_no_torch(model_dirs, graph_cache, tmp_path):
    """Running a built graph imports neither torch nor onnx, nor does finding it in the cache (the worker's
    every start after the first); building one does not import torch."""
    source = model_dirs["llama"]
    prebuilt = graph_path(source, graph_cache, "int8")
    code = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        from textgen.model.config import read_config
        from textgen.model.kv_cache import KVCache
        from textgen.model.onnx_backend.onnx_model import OnnxModel

        def run(path):
            model = OnnxModel(path, read_config({source!r}), threads=1)
            cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
            cache.reserve(1, 8)
            logits = model.forward(np.array([[1, 2, 3]]), np.array([0]), np.array([3]), cache, 0, True)
            assert logits.shape == (1, model.vocab_size)

        run({prebuilt!r})
        assert "torch" not in sys.modules and "onnx" not in sys.modules, "the runtime imported torch or onnx"
        from textgen.model.onnx_backend.graph_files import graph_path
        assert graph_path({source!r}, {graph_cache!r}, "int8") == {prebuilt!r}
        assert "onnx" not in sys.modules, "finding a cached graph imported onnx"
        for quantize in ("none", "int8", "int4"):
            run(graph_path({source!r}, {str(tmp_path)!r}, quantize))
        assert "torch" not in sys.modules, "building the graph imported torch"
        print("ok")
        """
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr[-2000:]


def test_checkpoint_reader_widens_half_precision(tmp_path):
    """bf16 (most Llama-family checkpoints) and f16 tensors come back as float32, values kept."""
    import json
    import struct

    from textgen.model.onnx_backend.onnx_weights import NumpyCheckpoint

    values = np.array([[1.0, -2.5, 0.15625], [3.0e4, -1.0e-3, 0.0]], dtype=np.float32)
    bf16 = (values.view(np.uint32) >> 16).astype(np.uint16)  # exact where the low 16 bits are 0
    tensors = {"a.bf16": ("BF16", bf16.tobytes()), "b.f16": ("F16", values.astype(np.float16).tobytes())}
    header, offset = {}, 0
    for name, (dtype, data) in tensors.items():
        header[name] = {"dtype": dtype, "shape": list(values.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
    encoded = json.dumps(header).encode()
    with open(tmp_path / "model.safetensors", "wb") as f:
        f.write(struct.pack("<Q", len(encoded)) + encoded + b"".join(data for _, data in tensors.values()))
    ckpt = NumpyCheckpoint(str(tmp_path))
    expected_bf16 = (bf16.astype(np.uint32) << 16).view(np.float32)
    assert ckpt.get("a.bf16").dtype == np.float32 and np.array_equal(ckpt.get("a.bf16"), expected_bf16)
    assert np.array_equal(ckpt.get("b.f16"), values.astype(np.float16).astype(np.float32))


def test_which_rope_variants_the_native_families_compute():
    """Every RoPE type of transformers' Llama-family models is computed here (logits above), in either
    key a config may use; one that is not (Gemma 4's `proportional`) goes to transformers rather than
    being served wrong, and so does a config that says no type we know."""
    from textgen.model.config import ROPE_TYPES, native_family

    llama = {"model_type": "llama"}
    assert native_family(llama) == "llama"
    assert set(ROPE_TYPES) == {"default", *ROPE_SCALINGS}
    for kind, rope in ROPE_SCALINGS.items():
        assert native_family({**llama, "rope_parameters": rope}) == "llama", kind
        assert native_family({**llama, "rope_scaling": rope}) == "llama", kind  # the older configs' key
    for kind in ("proportional", "su"):
        assert native_family({**llama, "rope_parameters": {"rope_type": kind, "factor": 2.0}}) is None, kind
    # Phi-3's older configs name longrope "su" (transformers reads it so, and so does config.rope_type).
    assert native_family({"model_type": "phi3", "rope_scaling": {"type": "su", **ROPE_SCALINGS["longrope"]}}) == "llama"


@pytest.mark.parametrize("spinning, entry", [(False, "0"), (True, "1"), (None, "auto")])
def test_intra_op_spinning_reaches_the_session(tiny_model_dir, tmp_path, spinning, entry):
    """INTRA_OP_SPINNING is ONNX Runtime's `session.intra_op.allow_spinning`, unset: on where the threads
    have whole CPUs of their own; whatever it is, the pool stops spinning when a step returns."""
    from textgen.model.loader import load_model
    from textgen.model.threads import whole_cpus_for
    from textgen.settings import Settings

    settings = Settings.from_env(environ={}, model_id=tiny_model_dir, model_backend="onnx", cache_dir=str(tmp_path),
                                 intra_op_spinning=spinning, threads=2)
    model = load_model(settings)[0]
    if entry == "auto":
        entry = "1" if whole_cpus_for(2) else "0"
    entries = model.session.get_session_options().get_session_config_entry
    assert entries("session.intra_op.allow_spinning") == entry
    assert entries("session.force_spinning_stop") == "1"
