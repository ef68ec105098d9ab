"""int8 weights: the quantized matmul this depends on, its accuracy, and rows that stay independent."""

import numpy as np
import pytest
import torch

from tests.batching import DecodeSteps, assert_decoded_together, submit_together
from textgen.model.torch_backend import int8
from textgen.model.torch_backend.int8 import Int8Linear
from textgen.model.torch_backend.layers import FileEmbedding
from textgen.model.loader import load_model
from textgen.settings import Settings


def test_the_quantized_matmul_torch_provides_still_works():
    """torch.ao's quantized ops are deprecated in torch 2.13: if they go, this fails first and loudly."""
    assert int8.int8_available()
    weight = torch.randn(96, 64)
    q, scale = int8.quantize_rows(weight)
    x = torch.rand(3, 64) * 2 - 1
    out = int8._int8_matmul(torch.cat([x, torch.ones(1, 64), -torch.ones(1, 64)]), int8._pack(q, scale))[:3]
    expected = x @ (q.float() * scale[:, None]).t()
    assert out.shape == (3, 96)
    assert (out - expected).abs().max() < 0.05 * expected.abs().max()


def test_the_activation_grid_is_what_int8_assumes():
    """Over the pinned range [-1, 1] FBGEMM rounds activations to multiples of STEP."""
    eye = int8._pack(torch.eye(256, dtype=torch.int8) * 127, torch.full((256,), 1 / 127))
    x = torch.linspace(-1, 1, 256)[None]
    out = int8._int8_matmul(torch.cat([x, torch.ones(1, 256), -torch.ones(1, 256)]), eye)[0]
    assert torch.allclose(out, torch.round(x[0] / int8.STEP) * int8.STEP, atol=1e-6)


def test_int8_linear_is_close_to_float32_even_with_outlier_channels():
    torch.manual_seed(0)
    weight, bias = torch.randn(300, 128) * 0.05, torch.randn(300)
    x = torch.randn(5, 128)
    x[:, 7] *= 150  # an outlier channel, as in Llama-family activations
    expected = torch.nn.functional.linear(x, weight, bias)
    got = Int8Linear(weight, bias)(x)
    relative = (got - expected).norm() / expected.norm()
    assert relative < 0.01  # one int8 pass alone gives ~5% here


def test_rows_are_independent_of_their_neighbours():
    """A row's result is the same alone or beside any other rows: seeded sampling stays reproducible."""
    torch.manual_seed(1)
    layer = Int8Linear(torch.randn(200, 64))
    rows = torch.randn(6, 64) * torch.tensor([1, 100, 0.01, 5, 1000, 0.3])[:, None]
    together = layer(rows)
    for i in range(6):
        assert torch.equal(layer(rows[i : i + 1])[0], together[i])


def test_large_matrices_are_packed_in_slices_with_the_same_result(monkeypatch):
    weight = torch.randn(100, 32)
    whole = Int8Linear(weight)
    monkeypatch.setattr(int8, "ROWS_PER_SLICE", 24)
    monkeypatch.setattr(int8, "ROWS_PER_STEP", 7)
    sliced = Int8Linear(((100, 32), lambda a, b: weight[a:b]))
    assert len(sliced._packed) == 5
    x = torch.randn(3, 32)
    assert torch.equal(sliced(x), whole(x))


def test_int8_model_keeps_no_float32_copy_of_the_embedding(tiny_model_dir):
    model, _ = load_model(Settings.from_env(environ={}, model_id=tiny_model_dir, quantize="int8", model_backend="torch"))
    module = model.module
    assert model.dtype_name == "int8" and isinstance(module.wte, FileEmbedding)
    vocab, width = model.vocab_size, module.wpe.shape[1]
    tensors = [t for m in module.modules() for t in vars(m).values() if isinstance(t, torch.Tensor)]
    assert not any(tuple(t.shape) in ((vocab, width), (width, vocab)) for t in tensors)
    linears = [m for m in module.modules() if isinstance(m, Int8Linear)]
    assert len(linears) == 2 * 4 + 1  # every linear layer of both blocks, and the LM head


def test_file_embedding_reads_the_checkpoints_rows(tiny_model_dir):
    from textgen.model.torch_backend.checkpoint import Checkpoint

    checkpoint = Checkpoint(tiny_model_dir)
    table = checkpoint.get("transformer.wte.weight")
    embedding = FileEmbedding(*checkpoint.locate("transformer.wte.weight"))
    ids = torch.tensor([[3, 0, 3, len(table) - 1], [5, 6, 7, 8]])
    assert torch.equal(embedding(ids), table[ids])
    with pytest.raises(IndexError):
        embedding(torch.tensor([[len(table)]]))


@pytest.mark.parametrize("backend", ["onnx", "torch"])
def test_int8_engine_keeps_seeds_reproducible_under_batching(tiny_model_dir, backend, tmp_path):
    from textgen.engine import Engine
    from textgen.validation import validate_generate

    settings = Settings.from_env(
        environ={}, model_id=tiny_model_dir, quantize="int8", threads=2, model_backend=backend, cache_dir=str(tmp_path)
    )
    engine = Engine(*load_model(settings), settings).start()
    try:
        bodies = [{"inputs": "Hello " * (i + 1), "parameters": {"max_new_tokens": 12, "seed": i}} for i in range(6)]
        requests = [validate_generate(b, settings) for b in bodies]
        with DecodeSteps(engine) as steps:
            alone = [engine.submit(r).result() for r in requests]
            assert set(steps.rows) == {1}
            together = [h.result() for h in submit_together(engine, steps, requests)]
        assert together == alone and len({r.text for r in alone}) > 1
        # The six really were decoded together: int8 activations quantized per row keep each row's
        # tokens independent of its neighbours in the same step.
        assert steps.rows[0] == 6
        assert_decoded_together(steps.rows, together)
    finally:
        engine.stop()


def test_transformers_backend_takes_the_same_int8_layers(tiny_model_dir):
    """QUANTIZE=int8 on the fallback backend swaps transformers' linear layers (GPT-2's Conv1D
    included) for the same int8 layers: its logits equal the native int8 model's."""
    from textgen.model.kv_cache import KVCache

    ids = [5, 9, 14, 3, 27, 8, 2]

    def logits(backend):
        """At every position: row r holds the prompt's first r + 1 tokens (each row in its own slot)."""
        model, _ = load_model(
            Settings.from_env(environ={}, model_id=tiny_model_dir, model_backend=backend, quantize="int8")
        )
        assert model.backend == backend and model.dtype_name == "int8"
        n = len(ids)
        cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
        cache.reserve(n, n)
        tokens = np.tile(np.array(ids, dtype=np.int64), (n, 1))
        counts = np.arange(1, n + 1, dtype=np.int64)
        return model.forward(tokens, np.zeros(n, dtype=np.int64), counts, cache, 0, True)

    native, fallback = logits("torch"), logits("transformers")
    assert np.abs(native - fallback).max() < 1e-4
