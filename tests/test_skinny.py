"""The skinny-matmul rewrite (float32 decode) changes the BLAS call, not the model's numbers."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from textgen.model.torch_backend.torch_model import _swap_linears
from textgen.model.torch_backend.skinny import SKINNY_MAX_ROWS, SkinnyLinear


@pytest.mark.parametrize("rows", [1, 2, 4, 5, 8, 9, 12, 16, 20, SKINNY_MAX_ROWS, SKINNY_MAX_ROWS + 7])
def test_skinny_linear_equals_linear(rows):
    linear = torch.nn.Linear(48, 80)
    skinny = SkinnyLinear(linear.weight, linear.bias)
    x = torch.randn(rows, 1, 48)
    assert torch.allclose(skinny(x), linear(x), atol=1e-5)


def test_whole_transformers_model_gives_the_same_logits(tiny_model_dir):
    plain = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    fast = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    replaced = _swap_linears(fast, "skinny")
    assert replaced == 2 * 4 + 1  # 4 Conv1D per block, 2 blocks, and the LM head
    assert fast.lm_head.weight is fast.transformer.wte.weight  # the tied head stays tied, no copy
    ids = torch.randint(0, plain.config.vocab_size, (3, 9))
    with torch.inference_mode():
        assert torch.allclose(fast(ids).logits, plain(ids).logits, atol=1e-5)
        assert torch.allclose(fast(ids[:1, :1]).logits, plain(ids[:1, :1]).logits, atol=1e-5)
