"""`CausalLM` on ONNX Runtime: one session over the graph from `onnx_graph`, the engine's numpy KV
cache bound in place as each layer's past and present (GroupQueryAttention writes the new positions
into the same memory it reads; nothing is copied per step). Imports neither onnx nor torch.

Per call only the small inputs and the logits are bound anew; the cache bindings of a slot range are
kept in an IOBinding reused while the cache arrays, the range and the time capacity stay the same
(the engine alternates between a decode range and a prefill range, so a few are kept), per cache: the
engine's batch has one, its embeddings another (engine/embeddings.py), and neither evicts the other's.

`hidden_states` is the same pass asking for the graph's `hidden` output (the final-normed hidden states
at the positions named) instead of logits: embeddings from the same session, the same weights.
"""

from __future__ import annotations

import os
import weakref
from collections import OrderedDict
from typing import Optional, Set

import numpy as np
import onnxruntime as ort

from ..config import model_shape
from ..kv_cache import KVCache
from .embedding_table import METADATA_KEY, EmbeddingTable

BINDINGS_KEPT = 4  # slot ranges whose cache bindings are kept (decode, prefill, a few regrowths)
# "1": a pool thread out of work spin-waits for the step's next kernel instead of sleeping, and
# `session.force_spinning_stop` puts it to sleep as soon as `Run` returns, so nothing spins between steps,
# while the engine thread samples and the HTTP threads write. Measured on this 2-core machine,
# DistilGPT2 int8 over HTTP, 1 / 8 clients (docs/performance.md, "Spinning within a step"): quiet,
# 302 / 964 tokens/s against 265 / 816 asleep and 296 / 849 spinning between steps too; beside two busy
# loops 136 / 442 against 127 / 445 asleep and 112 / 375 spinning between steps too.
DEFAULT_SPINNING = "1"


def session_options(threads: int, allow_spinning: str = DEFAULT_SPINNING) -> ort.SessionOptions:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", allow_spinning)
    options.add_session_config_entry("session.force_spinning_stop", "1")
    # No arena: it keeps the largest prefill's activations for good (DistilGPT2 int8 after a 16 x 128
    # prefill: 449 MB RSS with it, 321 MB without, of which 112 MB KV cache); decode time unchanged.
    options.enable_cpu_mem_arena = False
    return options


class OnnxModel:
    backend = "onnx"

    def __init__(
        self,
        graph_path: str,
        config: dict,
        threads: int,
        allow_spinning: str = DEFAULT_SPINNING,
        eos_token_ids: Set[int] = frozenset(),
    ):
        self.threads = threads
        self.session = ort.InferenceSession(graph_path, session_options(threads, allow_spinning), providers=["CPUExecutionProvider"])
        metadata = self.session.get_modelmeta().custom_metadata_map
        quantize = metadata.get("textgen.quantize", "none")
        self.dtype_name = quantize if quantize in ("int8", "int4") else "float32"
        shape = model_shape(config)
        self.n_layers, self.n_kv_heads, self.head_dim = shape.n_layers, shape.n_kv_heads, shape.head_dim
        self.context, self.vocab_size = shape.context, shape.vocab_size
        # A graph prebuilt before embeddings existed (GRAPH_VERSION < 6) has no hidden output: None.
        inputs = {i.name for i in self.session.get_inputs()}
        self.width: Optional[int] = shape.width if "hidden_index" in inputs else None
        # Packed tokens, their rows read from embedding.bin; a graph prebuilt before GRAPH_VERSION 7 takes
        # right-padded token ids and looks them up itself.
        self.table = EmbeddingTable(os.path.dirname(graph_path), metadata[METADATA_KEY]) if "packed_index" in inputs else None
        self.packs_tokens = self.table is not None
        self.min_width = 2 if self.packs_tokens else 1  # _two_wide
        self.eos_token_ids: Set[int] = set(eos_token_ids)
        # Per cache (a weak key: a cache dropped takes its bindings along): the weak references to the
        # arrays its bindings point into, and the bindings by slot range.
        self._caches: "weakref.WeakKeyDictionary[KVCache, tuple]" = weakref.WeakKeyDictionary()
        self._no_rows = np.zeros(0, dtype=np.int64)

    def _binding(self, cache: KVCache, first_slot: int, rows: int) -> ort.IOBinding:
        """An IOBinding with every layer's past and present bound to the cache slots
        [first_slot, first_slot + rows); reused while the cache arrays are the same objects.

        The arrays are followed by weak references: a regrown or cleared cache frees them (a weak
        reference then answers None, where a kept id could match a new array), and holding them
        strongly would keep a released cache's memory alive."""
        arrays = cache.keys + cache.values
        bound, bindings = self._caches.get(cache, ([], None))
        if bindings is None or len(arrays) != len(bound) or any(ref() is not a for ref, a in zip(bound, arrays)):
            bindings = OrderedDict()
            self._caches[cache] = ([weakref.ref(a) for a in arrays], bindings)
        key = (first_slot, rows, cache.time_capacity)
        binding = bindings.get(key)
        if binding is not None:
            bindings.move_to_end(key)
            return binding
        binding = self.session.io_binding()
        shape = (rows, self.n_kv_heads, cache.time_capacity, self.head_dim)
        for kind, store in (("key", cache.keys), ("value", cache.values)):
            for layer, array in enumerate(store):
                pointer = array[first_slot].ctypes.data  # slots are contiguous: rows slots from here on
                binding.bind_input(f"past_{kind}_{layer}", "cpu", 0, np.float32, shape, pointer)
                binding.bind_output(f"present_{kind}_{layer}", "cpu", 0, np.float32, shape, pointer)
        bindings[key] = binding
        while len(bindings) > BINDINGS_KEPT:
            bindings.popitem(last=False)
        return binding

    def forward(
        self,
        tokens: np.ndarray,
        starts: np.ndarray,
        counts: np.ndarray,
        cache: KVCache,
        first_slot: int,
        want_logits: bool,
        logit_index: Optional[np.ndarray] = None,
    ) -> Optional[np.ndarray]:
        rows, width = tokens.shape
        if want_logits:
            if logit_index is None:
                index = np.arange(rows, dtype=np.int64) * width + np.maximum(np.asarray(counts, dtype=np.int64) - 1, 0)
            else:
                index = np.ascontiguousarray(logit_index, dtype=np.int64)
        else:
            index = self._no_rows
        logits = self._run(tokens, starts, counts, cache, first_slot, index, self._no_rows)[0]
        return logits if want_logits else None

    def hidden_states(
        self, tokens: np.ndarray, starts: np.ndarray, counts: np.ndarray, cache: KVCache, first_slot: int, index: np.ndarray,
    ) -> np.ndarray:
        """The final-normed hidden states [len(index), width] at flat positions `index` (row * width + s)
        of a pass like `forward`'s (which writes the cache the same way); no LM head work."""
        if self.width is None:
            raise RuntimeError("this ONNX graph predates the hidden-state output: rebuild it (scripts/build_graph.py)")
        return self._run(tokens, starts, counts, cache, first_slot, self._no_rows, np.ascontiguousarray(index, dtype=np.int64))[1]

    def _bind_packed(self, binding, tokens, positions, counts, logit_index, hidden_index) -> tuple:
        """Bind the real tokens packed (onnx_graph's layout) and return the two indices, given as padded
        positions row * width + s, as indices of packed tokens."""
        tokens = np.asarray(tokens, dtype=np.int64)
        rows, width = tokens.shape
        real = np.flatnonzero(np.arange(width) < counts[:, None])  # the real tokens' padded positions
        if not len(real):  # no row brings a token: one padding position stands in (written nowhere)
            real = np.zeros(1, dtype=np.int64)
        padded_index = np.zeros(rows * width, dtype=np.int64)
        padded_index[real] = np.arange(len(real))
        binding.bind_cpu_input("inputs_embeds", self.table.lookup(tokens.reshape(-1)[real]))
        binding.bind_cpu_input("position_ids", positions)
        binding.bind_cpu_input("padded_index", padded_index.reshape(rows, width))
        binding.bind_cpu_input("packed_index", np.stack(np.divmod(real, width), axis=1))
        return padded_index[logit_index], padded_index[hidden_index]

    @staticmethod
    def _two_wide(tokens, logit_index, hidden_index) -> tuple:
        """A one-token-wide pass as a two-wide one. GroupQueryAttention computes a one-wide pass with
        another kernel than a wider one, so a row's logits depended on what else its pass carried
        (SmolLM2 int8: by up to 1.36 between a decode step alone and one beside a joining prompt's
        chunk), and a seeded text on the traffic. Every width from two on gives a row the same logits,
        bit for bit, and the wider kernel is no slower (SmolLM2 int8, 16 rows: 16.79 against 17.13 ms
        a step; 1 row: 4.99 against 5.03). The second column is padding, written nowhere, but the cache
        must have its position: the engine reserves it (`min_width`, the contract)."""
        # Indices name padded positions row * width + s: with width 1, s is 0.
        return np.concatenate([tokens, np.zeros_like(tokens)], axis=1), logit_index * 2, hidden_index * 2

    def _run(self, tokens, starts, counts, cache: KVCache, first_slot: int, logit_index: np.ndarray, hidden_index: np.ndarray):
        """One pass; returns (logits [len(logit_index), vocab], hidden [len(hidden_index), width] or None)."""
        tokens = np.asarray(tokens, dtype=np.int64)
        starts = np.asarray(starts, dtype=np.int64)
        counts = np.asarray(counts, dtype=np.int64)
        if tokens.shape[1] == 1 and self.packs_tokens:
            tokens, logit_index, hidden_index = self._two_wide(tokens, logit_index, hidden_index)
        rows, width = tokens.shape
        assert first_slot + rows <= cache.slot_capacity, "cache has too few slots: reserve first"
        assert int(starts.max(initial=0)) + width <= cache.time_capacity, "cache too short: reserve first"
        # Padding positions may pass the context; they index the position/rotary tables, so clamp.
        positions = np.minimum(starts[:, None] + np.arange(width), self.context - 1)
        # P + Q - 1; an idle row keeps P - 1, an idle empty slot needs 0 (-1 is refused).
        seqlens_k = np.maximum(starts + counts - 1, 0).astype(np.int32)
        binding = self._binding(cache, first_slot, rows)
        if self.table is not None:
            logit_index, hidden_index = self._bind_packed(binding, tokens, positions, counts, logit_index, hidden_index)
        else:
            binding.bind_cpu_input("input_ids", np.ascontiguousarray(tokens, dtype=np.int64))
            binding.bind_cpu_input("position_ids", positions)
        binding.bind_cpu_input("seqlens_k", seqlens_k)
        binding.bind_cpu_input("query_seqlens", counts.astype(np.int32))
        # An upper bound of every row's P + Q, which never pass the context; no larger than the rotary
        # tables (`context` rows), which GroupQueryAttention's own rotation requires.
        binding.bind_cpu_input("total_sequence_length", np.array(min(cache.time_capacity, self.context), dtype=np.int32))
        logits = np.empty((len(logit_index), self.vocab_size), dtype=np.float32)
        binding.bind_cpu_input("logit_index", logit_index)
        binding.bind_output("logits", "cpu", 0, np.float32, logits.shape, logits.ctypes.data)
        hidden = None
        if self.width is not None:
            hidden = np.empty((len(hidden_index), self.width), dtype=np.float32)
            binding.bind_cpu_input("hidden_index", hidden_index)
            binding.bind_output("hidden", "cpu", 0, np.float32, hidden.shape, hidden.ctypes.data)
        self.session.run_with_iobinding(binding)
        return logits, hidden
