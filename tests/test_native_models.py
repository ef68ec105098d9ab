"""The native GPT-2 and Llama modules against transformers on the same weights, and backend choice."""

import importlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM

import transformers

from tests.models import ROPE_SCALINGS, VARIANTS, make_tiny_llama, transformers_logits
from textgen.engine import Engine
from textgen.model.kv_cache import KVCache
from textgen.model.config import read_config
from textgen.model.contract import CausalLM
from textgen.model.loader import choose_backend, load_model
from textgen.model.rope import rope_tables
from textgen.settings import Settings
from textgen.validation import validate_generate


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory, tiny_model_dir):
    return make_tiny_llama(str(tmp_path_factory.mktemp("tiny-llama")), tiny_model_dir)


@pytest.fixture(scope="module")
def qwen2_dir(tmp_path_factory, tiny_model_dir):
    return make_tiny_llama(str(tmp_path_factory.mktemp("tiny-qwen2")), tiny_model_dir, "qwen2")


def native(model_dir, quantize="none"):
    settings = Settings.from_env(environ={}, model_id=model_dir, model_backend="torch", quantize=quantize, threads=2)
    return load_model(settings)


def new_cache(model, length):
    cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
    cache.reserve(1, length)
    return cache


def every_position_logits(model, ids, chunk):
    """Prefill `ids` in chunks of `chunk` tokens (through the KV cache), logits at every position: the
    native module itself, whose torch signature can ask for several positions per row."""
    cache = new_cache(model, ids.shape[1])
    out = []
    for start in range(0, ids.shape[1], chunk):
        part = ids[:, start : start + chunk]
        positions = torch.arange(start, start + part.shape[1])[None]
        out.append(model.module(part, positions, cache, 0, torch.arange(part.shape[1])[None])[0])
    return torch.cat(out)


def last_logits(model, ids, chunk):
    """The same prefill through the contract (numpy, `forward`): the logits after the last token."""
    ids = ids.numpy()
    cache = new_cache(model, ids.shape[1])
    for start in range(0, ids.shape[1], chunk):
        part = ids[:, start : start + chunk]
        logits = model.forward(part, np.array([start]), np.array([part.shape[1]]), cache, 0, True)
    return logits[0]


@pytest.fixture(scope="module")
def family_dir(tmp_path_factory, tiny_model_dir):
    """A tiny checkpoint of each variant, made on first use: `family_dir("qwen3")`."""
    made = {"gpt2": tiny_model_dir}

    def get(variant: str) -> str:
        if variant not in made:
            made[variant] = make_tiny_llama(str(tmp_path_factory.mktemp("tiny-" + variant)), tiny_model_dir, variant)
        return made[variant]

    return get


FAMILIES = ["gpt2", *VARIANTS]


@pytest.mark.parametrize("which", FAMILIES)
@pytest.mark.parametrize("chunk", [1, 5, 64])
def test_native_logits_equal_transformers(which, chunk, family_dir):
    model_dir = family_dir(which)
    model, _ = native(model_dir)
    assert model.backend == "torch"
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, model.vocab_size, (1, 23), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = transformers_logits(reference, ids)
        got = every_position_logits(model, ids, chunk)
    assert got.shape == expected.shape
    assert (got - expected).abs().max() < 1e-4
    last = last_logits(model, ids, chunk)
    assert last.dtype == np.float32 and np.abs(last - expected[-1].numpy()).max() < 1e-4


SHORT, LONG = [1.0, 1.2, 1.5, 2.0, 2.6, 3.1, 4.0, 5.5], [2.0, 3.0, 4.5, 6.0, 8.0, 11.0, 15.0, 21.0]
# RoPE parameters beyond the tiny variants' (tests.models.ROPE_SCALINGS): each type's optional keys given,
# and left to their defaults. (family, config beyond a 64-wide, 4-head, 256-position shape)
ROPE_CASES = {
    **{kind: ("Llama", {"rope_parameters": rope}) for kind, rope in ROPE_SCALINGS.items() if kind != "longrope"},
    "yarn, attention_factor given, bounds truncated": ("Llama", {"rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16, "attention_factor": 0.8,
        "beta_fast": 8.0, "beta_slow": 0.5, "rope_theta": 100.0}}),
    "yarn, mscale alone": ("Llama", {"rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "mscale": 3.0, "rope_theta": 500.0}}),
    "yarn, defaults (Qwen3's)": ("Qwen3", {"head_dim": 24, "rope_parameters": {
        "rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64, "rope_theta": 1000.0}}),
    "longrope on a Llama": ("Llama", {"rope_parameters": {
        "rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG, "original_max_position_embeddings": 16}}),
    "longrope, factor and attention_factor given": ("Phi3", {"original_max_position_embeddings": 32, "rope_parameters": {
        "rope_type": "longrope", "short_factor": SHORT, "long_factor": LONG, "factor": 3.0, "attention_factor": 1.3}}),
    "longrope, factor given, 3/4 rotary": ("Phi3", {"original_max_position_embeddings": 16, "partial_rotary_factor": 0.75,
        "rope_parameters": {"rope_type": "longrope", "short_factor": SHORT[:6], "long_factor": LONG[:6], "factor": 3.0}}),
}


@pytest.mark.parametrize("case", ROPE_CASES)
def test_rope_tables_equal_transformers(case):
    """rope.py's cos and sin at every position of the context against transformers' rotary embedding
    module (attention factor included). longrope: below the original context against transformers
    called on a sequence within it (short factors), from it on against a sequence past it (long)."""
    family, extra = ROPE_CASES[case]
    shape = dict(hidden_size=64, num_attention_heads=4, max_position_embeddings=256, rope_theta=10000.0)
    config = getattr(transformers, family + "Config")(**{**shape, **extra})
    module = importlib.import_module(f"transformers.models.{family.lower()}.modeling_{family.lower()}")
    rotary = getattr(module, family + "RotaryEmbedding")(config)
    rope = config.rope_parameters
    dim = int((getattr(config, "head_dim", None) or 16) * rope.get("partial_rotary_factor", 1.0))
    cos, sin = rope_tables(config.to_dict(), dim, 256)
    assert cos.shape == sin.shape == (256, dim // 2) and cos.dtype == np.float32
    split = rope.get("original_max_position_embeddings") if rope["rope_type"] == "longrope" else None
    # longrope: one sequence within the original context, one past it
    for rows in [slice(0, split), slice(split, 256)] if split else [slice(0, 256)]:
        with torch.no_grad():
            want_cos, want_sin = rotary(torch.zeros(1), torch.arange(rows.stop)[None])
        np.testing.assert_allclose(cos[rows], want_cos[0, rows, : dim // 2].numpy(), atol=5e-5, rtol=0)
        np.testing.assert_allclose(sin[rows], want_sin[0, rows, : dim // 2].numpy(), atol=5e-5, rtol=0)


def test_longrope_rotates_each_position_with_its_own_factors(family_dir, tmp_path):
    """A 30-token prompt past the tiny Phi-3's original context (16), prefilled in one call: equal to
    transformers fed the 16 first tokens, then one at a time (rope.py's rule), and not to transformers'
    one call (long factors over the whole prompt). The long factors are used, from position 16 exactly:
    with them replaced by the short ones, the first 16 positions stay bit-identical and the rest change."""
    model_dir = family_dir("phi3-longrope")
    model, _ = native(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    ids = torch.randint(0, model.vocab_size, (1, 30), generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        got = every_position_logits(model, ids, 64)
        assert (got - transformers_logits(reference, ids)).abs().max() < 1e-4
        assert (got - reference(ids).logits[0]).abs().max() > 1e-3  # ten times the tolerance
    shorts_only = str(tmp_path / "shorts-only")
    shutil.copytree(model_dir, shorts_only)
    config = read_config(shorts_only)
    config["rope_scaling"]["long_factor"] = config["rope_scaling"]["short_factor"]
    with open(os.path.join(shorts_only, "config.json"), "w") as f:
        json.dump(config, f)
    with torch.inference_mode():
        changed = every_position_logits(native(shorts_only)[0], ids, 64)
    assert torch.equal(changed[:16], got[:16])
    assert (changed[16:] - got[16:]).abs().amax(dim=-1).min() > 1e-3


@pytest.mark.parametrize("backend", ["torch", "transformers"])
def test_a_forward_pass_writes_only_each_rows_new_positions(backend, tiny_model_dir):
    """Through the contract: row 0 adds two tokens at 4 and 5; row 1 only waits (count 0), and what
    either row already had in the cache stays as it was."""
    model, _ = load_model(Settings.from_env(environ={}, model_id=tiny_model_dir, model_backend=backend, threads=2))
    assert isinstance(model, CausalLM) and model.backend == backend
    cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
    cache.reserve(2, 8)
    prompts = np.array([[5, 6, 7, 8], [9, 10, 11, 0]])
    assert model.forward(prompts, np.array([0, 0]), np.array([4, 3]), cache, 0, False) is None
    before = [array.copy() for array in cache.keys + cache.values]
    logits = model.forward(np.array([[12, 13], [0, 0]]), np.array([4, 3]), np.array([2, 0]), cache, 0, True)
    assert logits.shape == (2, model.vocab_size) and logits.dtype == np.float32
    for old, new in zip(before, cache.keys + cache.values):
        assert np.array_equal(new[0, :, :4], old[0, :, :4]) and not np.array_equal(new[0, :, 4:6], old[0, :, 4:6])
        assert np.array_equal(new[1, :, :3], old[1, :, :3])


@pytest.mark.parametrize("which", ["llama", "qwen2"])
def test_native_llama_greedy_equals_generate(which, llama_dir, qwen2_dir):
    model_dir = llama_dir if which == "llama" else qwen2_dir
    model, tokenizer = native(model_dir)
    settings = Settings.from_env(environ={}, model_id=model_dir, threads=2)
    engine = Engine(model, tokenizer, settings).start()
    reference = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    try:
        for prompt in ["Hello world", "Technology and finance meet where"]:
            ids = tokenizer(prompt)["input_ids"]
            out = reference.generate(torch.tensor([ids]), max_new_tokens=20, do_sample=False, pad_token_id=0)
            expected = tokenizer.decode(out[0, len(ids) :].tolist(), skip_special_tokens=True)
            body = {"inputs": prompt, "parameters": {"max_new_tokens": 20, "do_sample": False}}
            assert engine.submit(validate_generate(body, settings)).result().text == expected
    finally:
        engine.stop()


def test_auto_backend_is_onnx_for_known_architectures_only(tiny_model_dir, llama_dir, tmp_path):
    assert choose_backend("auto", read_config(tiny_model_dir), tiny_model_dir) == "onnx"
    assert choose_backend("auto", read_config(llama_dir), llama_dir) == "onnx"
    assert choose_backend("torch", read_config(llama_dir), llama_dir) == "torch"
    assert choose_backend("native", read_config(llama_dir), llama_dir) == "torch"  # the old name
    assert choose_backend("transformers", read_config(llama_dir), llama_dir) == "transformers"
    # An architecture without a native module (GPT-Neo here) goes to transformers, or fails if forced.
    from transformers import GPTNeoConfig, GPTNeoForCausalLM

    neo = str(tmp_path / "neo")
    GPTNeoForCausalLM(
        GPTNeoConfig(vocab_size=100, hidden_size=32, num_layers=2, num_heads=4, attention_types=[[["global"], 2]])
    ).save_pretrained(neo)
    assert choose_backend("auto", read_config(neo), neo) == "transformers"
    with pytest.raises(ValueError, match="MODEL_BACKEND=torch: no native module for model_type 'gpt_neo'"):
        choose_backend("torch", read_config(neo), neo)
    with pytest.raises(ValueError, match="MODEL_BACKEND=onnx: no ONNX graph for model_type 'gpt_neo'"):
        choose_backend("onnx", read_config(neo), neo)
    # A directory holding only a graph built ahead of time (the image's) is served by onnx, for the
    # QUANTIZE it was built for.
    graph_only = tmp_path / "graph-only"
    (graph_only / "onnx-int8").mkdir(parents=True)
    (graph_only / "config.json").write_text(json.dumps(read_config(tiny_model_dir)))
    assert choose_backend("auto", read_config(str(graph_only)), str(graph_only), "int8") == "onnx"
    assert choose_backend("auto", read_config(str(graph_only)), str(graph_only), "none") == "transformers"
    # Scaled RoPE is computed natively (logits: test_native_logits_equal_transformers); a RoPE type that
    # is not (Gemma 4's `proportional`) sends such a Llama to transformers.
    config = dict(read_config(llama_dir), rope_scaling={"rope_type": "yarn", "factor": 8.0})
    assert choose_backend("auto", config, llama_dir) == "onnx"
    config = dict(read_config(llama_dir), rope_scaling={"rope_type": "proportional", "factor": 8.0})
    assert choose_backend("auto", config, llama_dir) == "transformers"


def test_gemma3_configs_read_as_transformers_reads_them():
    """Gemma 3's layers from both forms of its config: the Hub's (transformers 4.5x: `rope_theta` and
    `rope_scaling` for the full layers, `rope_local_base_freq` for the sliding ones, every
    `sliding_window_pattern`-th layer full) and transformers 5's (`layer_types`, `rope_parameters` by layer
    type): each layer's window and RoPE tables as transformers' own Gemma 3 has them. Logit
    soft-capping, which the native definitions do not compute, sends a config to transformers."""
    from transformers import Gemma3TextConfig
    from transformers.models.gemma3.modeling_gemma3 import Gemma3RotaryEmbedding

    from textgen.model.config import attention_windows, layer_rope, native_family
    from textgen.model.rope import rope_tables

    hub = {"model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 8, "num_attention_heads": 4, "head_dim": 32,
           "vocab_size": 400, "sliding_window": 16, "sliding_window_pattern": 3, "rope_theta": 5e5,
           "rope_local_base_freq": 2e4, "rope_scaling": {"rope_type": "linear", "factor": 8.0}}  # none of them the default
    theirs = Gemma3TextConfig.from_dict(hub)
    assert theirs.layer_types.count("full_attention") == 2
    rotary = Gemma3RotaryEmbedding(theirs)
    positions = torch.arange(64)[None]
    for config in (hub, theirs.to_dict()):
        assert native_family(config) == "llama"
        assert attention_windows(config) == [16 if kind == "sliding_attention" else None for kind in theirs.layer_types]
        for params, kind in zip(layer_rope(config), theirs.layer_types):
            want = rotary(torch.zeros(1), positions, kind)
            for got, expected in zip(rope_tables(config, 32, 64, params), want):
                np.testing.assert_allclose(got, expected[0, :, :16].numpy(), rtol=0, atol=1e-6)
        for capping in ("final_logit_softcapping", "attn_logit_softcapping"):
            assert native_family({**config, capping: 30.0}) is None


def test_serving_a_native_model_imports_neither_torch_nor_transformers(tiny_model_dir, tmp_path):
    """The default path (ONNX Runtime, graph built on first start) needs neither torch nor
    transformers' modeling classes nor (with tokenizer.json) its tokenizers: torch alone is ~220 MB
    of resident memory, and those imports cost seconds of CPU at start-up."""
    code = (
        "import json, sys\n"
        "from textgen.server import create_app\n"
        "from textgen.settings import Settings\n"
        f"app = create_app(Settings.from_env(environ={{}}, model_id={tiny_model_dir!r}, threads=1, cache_dir={str(tmp_path)!r}))\n"
        "assert app.extensions['textgen.engine'].model.backend == 'onnx'\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('transformers', 'torch'))))\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []
