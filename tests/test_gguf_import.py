"""A GGUF file of each family, written as llama.cpp writes it (tests/gguf_files.py) from a tiny checkpoint,
served through MODEL_GGUF_FILE: the same logits as the checkpoint it came from where the import maps its
architecture, and one line at start where it does not."""

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, dequantize
from gguf.quants import quantize
import transformers
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
from transformers.modeling_gguf_pytorch_utils import GGUF_SUPPORTED_ARCHITECTURES

from tests.gguf_files import architecture_name, not_carried, write_gguf
from tests.models import VARIANTS, make_tiny_llama, transformers_logits
from textgen.model.gguf_metadata import GGUF_ARCHITECTURES
from textgen.model.kv_cache import KVCache
from textgen.model.loader import load_model
from textgen.model.preflight import NotServable, check_servable
from textgen.settings import Settings

# 23 tokens: past Mistral's window (8) and Phi-3's (12), then decode steps
PROMPT = [5, 17, 200, 33, 99, 1, 250, 7, 64, 300, 12, 13, 14, 150, 151, 152, 3, 4, 5, 6, 70, 71, 9]
DECODED = [41, 42, 43]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tiny_model_dir):
    """A tiny checkpoint of each variant, made on first use."""
    made = {}

    def get(variant):
        if variant not in made:
            made[variant] = make_tiny_llama(str(tmp_path_factory.mktemp("ckpt-" + variant)), tiny_model_dir, variant)
        return made[variant]

    return get


def gguf_settings(directory, name, cache_dir):
    return Settings.from_env(environ={}, model_id=str(directory), model_gguf_file=name, cache_dir=str(cache_dir), threads=2)


def served_logits(model):
    """Logits after the prompt's prefill (in chunks of 10, each after the last's past) and each decode step."""
    cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
    cache.reserve(1, len(PROMPT) + len(DECODED))
    ids = np.array([PROMPT])
    for start in range(0, len(PROMPT), 10):
        part = ids[:, start : start + 10]
        logits = model.forward(part, np.array([start]), np.array([part.shape[1]]), cache, 0, True)
    out = [logits[0]]
    for step, token in enumerate(DECODED):
        out.append(model.forward(np.array([[token]]), np.array([len(PROMPT) + step]), np.array([1]), cache, 0, True)[0])
    return np.stack(out)


def reference_logits(model):
    """transformers' own logits at the same positions (prompt and decoded tokens in one pass, but past a
    longrope model's original context: tests/models.transformers_logits)."""
    with torch.no_grad():
        logits = transformers_logits(model, torch.tensor([PROMPT + DECODED]))
    return logits[len(PROMPT) - 1 :].numpy()


def reference_model(path):
    """The checkpoint as its GGUF file describes it: what llama.cpp's format cannot say read its way
    (tests/gguf_files.not_carried: Mistral's sliding window, Gemma 3's layer pattern and score scale)."""
    config = AutoConfig.from_pretrained(path).to_dict()
    return AutoModelForCausalLM.from_pretrained(path, **not_carried(config)).eval()


def imported_variants():
    return [v for v in VARIANTS if architecture_name(_model_type(v)) in GGUF_ARCHITECTURES]


def refused_variants():
    return [v for v in VARIANTS if architecture_name(_model_type(v)) not in GGUF_ARCHITECTURES]


def _model_type(variant):
    return getattr(transformers, VARIANTS[variant][0] + "ForCausalLM").config_class.model_type


@pytest.mark.parametrize("variant", imported_variants())
def test_a_float32_gguf_serves_the_logits_of_its_checkpoint(variant, checkpoint, tmp_path):
    path = checkpoint(variant)
    write_gguf(path, str(tmp_path / "model-f32.gguf"))
    model, tokenizer = load_model(gguf_settings(tmp_path, "model-f32.gguf", tmp_path / "cache"))
    assert model.backend == "onnx"
    np.testing.assert_allclose(served_logits(model), reference_logits(reference_model(path)), atol=1e-4, rtol=0)
    text = "Hello world, the tokens of a GGUF file."
    assert tokenizer.encode(text) == AutoTokenizer.from_pretrained(path).encode(text)


def q8_0_round_trip(model):
    """The model with every weight llama.cpp stores in Q8_0 (2-D, not a norm) replaced by what the file holds."""
    with torch.no_grad():
        for name, weight in model.named_parameters():
            if weight.ndim == 2 and "norm" not in name:
                data = weight.numpy().astype(np.float32)
                held = dequantize(quantize(data, GGMLQuantizationType.Q8_0), GGMLQuantizationType.Q8_0)
                weight.copy_(torch.from_numpy(held.reshape(data.shape)))
    return model


@pytest.mark.parametrize("variant", imported_variants())
def test_a_q8_0_gguf_serves_what_its_file_holds(variant, checkpoint, tmp_path):
    """Q8_0 keeps one scale per block of 32 weights and rounds each weight to 1/127 of its block's
    largest. The import adds no error of its own to that: it is held to transformers on exactly the
    weights the file holds (1e-4, as float32). How far those are from the float checkpoint is Q8_0's
    own doing (on these tiny random models 2-16% of the logits' spread, Gemma 3's the most), so it is
    only checked to be there: the file really is quantized and the comparison above not float to float."""
    path = checkpoint(variant)
    write_gguf(path, str(tmp_path / "model-q8_0.gguf"), "Q8_0")
    model, _ = load_model(gguf_settings(tmp_path, "model-q8_0.gguf", tmp_path / "cache"))
    served = served_logits(model)
    held = reference_logits(q8_0_round_trip(reference_model(path)))
    np.testing.assert_allclose(served, held, atol=1e-4, rtol=0)
    assert np.abs(served - reference_logits(reference_model(path))).max() > 1e-3


@pytest.mark.parametrize("variant", refused_variants())
def test_an_architecture_the_import_does_not_map_is_one_line_at_start(variant, checkpoint, tmp_path):
    path = checkpoint(variant)
    arch = architecture_name(_model_type(variant))
    assert arch not in GGUF_SUPPORTED_ARCHITECTURES  # transformers' reader refuses it: nothing to convert
    write_gguf(path, str(tmp_path / "model.gguf"))
    with pytest.raises(NotServable) as info:
        check_servable(gguf_settings(tmp_path, "model.gguf", tmp_path / "cache"))
    message = str(info.value)
    assert "\n" not in message and f"'{arch}'" in message and ", ".join(GGUF_ARCHITECTURES) in message


def test_the_architectures_imported_are_those_transformers_maps_among_the_families():
    """Every variant's llama.cpp architecture that transformers' reader maps is imported (and tested
    above); the others are refused at start."""
    mapped = {architecture_name(_model_type(v)) for v in VARIANTS} & set(GGUF_SUPPORTED_ARCHITECTURES)
    assert mapped <= set(GGUF_ARCHITECTURES) <= set(GGUF_SUPPORTED_ARCHITECTURES)
