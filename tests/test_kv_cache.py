"""The in-place KV cache holds exactly what transformers' DynamicLayer holds."""

import torch
from transformers import AutoModelForCausalLM
from transformers.cache_utils import DynamicLayer

from textgen.engine.kv_cache import HEADROOM, GrowingLayer, new_cache, set_layer


def steps(n, batch=3, heads=2, dim=4, first=5):
    gen = torch.Generator().manual_seed(0)
    yield torch.randn(batch, heads, first, dim, generator=gen), torch.randn(batch, heads, first, dim, generator=gen)
    for _ in range(n):
        yield torch.randn(batch, heads, 1, dim, generator=gen), torch.randn(batch, heads, 1, dim, generator=gen)


def test_updates_match_dynamic_layer_across_regrowth():
    plain, growing = DynamicLayer(), GrowingLayer()
    for k, v in steps(3 * HEADROOM):  # forces several regrowths
        expected = plain.update(k, v)
        got = growing.update(k, v)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
    assert growing.get_seq_length() == plain.get_seq_length() == 5 + 3 * HEADROOM


def test_a_decode_step_does_not_reallocate():
    layer = GrowingLayer()
    for k, v in steps(1):
        layer.update(k, v)
    buffer = layer.keys.untyped_storage().data_ptr()
    for k, v in list(steps(10))[1:]:
        layer.update(k, v)
    assert layer.keys.untyped_storage().data_ptr() == buffer


def test_select_and_replace_keep_contents_and_room_to_grow():
    plain, growing = DynamicLayer(), GrowingLayer()
    for k, v in steps(4):
        plain.update(k, v)
        growing.update(k, v)
    index = torch.tensor([2, 0])
    plain.batch_select_indices(index)
    growing.batch_select_indices(index)
    assert torch.equal(growing.keys, plain.keys) and torch.equal(growing.values, plain.values)
    set_layer(growing, growing.keys[..., 2:, :], growing.values[..., 2:, :])
    k, v = torch.randn(2, 2, 1, 4), torch.randn(2, 2, 1, 4)
    keys, _ = growing.update(k, v)
    assert torch.equal(keys, torch.cat([plain.keys[..., 2:, :], k], dim=-2))


def test_model_with_growing_cache_matches_its_own_cache(tiny_model_dir):
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    ids = torch.randint(0, model.config.vocab_size, (2, 7))
    with torch.inference_mode():
        ours = new_cache(model.config)
        assert all(isinstance(layer, GrowingLayer) for layer in ours.layers)
        a = model(input_ids=ids, past_key_values=ours, use_cache=True)
        b = model(input_ids=ids, use_cache=True)
        for _ in range(3):
            nxt = a.logits[:, -1:].argmax(-1)
            a = model(input_ids=nxt, past_key_values=a.past_key_values, use_cache=True)
            b = model(input_ids=nxt, past_key_values=b.past_key_values, use_cache=True)
            assert torch.allclose(a.logits, b.logits, atol=1e-5)
