"""The native model layer on real weights (SmolLM2-135M-Instruct, Llama architecture): the torch
module's float32 logits equal transformers' on the same checkpoint and the ONNX graph's equal the
torch module's, greedy text through the engine equals transformers' `generate`, and 8-bit weights
cost little quality on both backends (perplexity, greedy continuations).

Uses the GGUF conversion cached by tests/test_real_weights.py (made on first use, ~40 s).
"""

import math
import os
import time

import numpy as np
import pytest
import torch

from tests.real_weights import GGUF_NAME, smollm2_dir
from textgen.engine import Engine
from textgen.model.kv_cache import KVCache
from textgen.model.loader import load_model, load_tokenizer, model_directory
from textgen.settings import Settings
from textgen.validation import validate_generate

pytestmark = pytest.mark.slow

PASSAGE = os.path.join(os.path.dirname(__file__), "data", "passage.txt")

# A ~30-token prompt for the logits comparison.
LOGITS_PROMPT = (
    "The printing press changed Europe within fifty years: books became cheaper, more people learned "
    "to read, and new ideas travelled faster than"
)

ENGINE_PROMPTS = ["The capital of France is", "def fibonacci(n):\n    ", "Three tips for staying healthy are"]

# Varied on purpose (facts, lists, code, instructions, chat turns): a quantization error that only
# shows on some kinds of text should still move the count.
GREEDY_PROMPTS = [
    "The capital of France is",
    "Water boils at a temperature of",
    "The largest planet in the solar system is",
    "Photosynthesis is the process by which plants",
    "The first man to walk on the Moon was",
    "Monday, Tuesday, Wednesday,",
    "1, 2, 3, 4, 5,",
    "A list of primary colours: red,",
    "Ingredients for pancakes:\n- flour\n-",
    "def add(a, b):\n    return",
    "import numpy as np\n\nx = np.",
    "for i in range(10):\n    print(",
    "SELECT name, age FROM users WHERE",
    "To make a cup of tea, first",
    "Instructions: write a short poem about the sea.\nPoem:",
    "Translate to French: 'Good morning' ->",
    "Once upon a time, in a small village,",
    "The main causes of the First World War were",
    [{"role": "user", "content": "What is the capital of Japan?"}],
    [{"role": "user", "content": "Give me two tips for learning to code."}],
]


BACKENDS = ["torch", "onnx"]


def settings(**overrides) -> Settings:
    # The environment of the machine running the tests must not change what they check (except where
    # the GGUF conversion is cached).
    return Settings.from_env(
        environ={k: v for k, v in os.environ.items() if k == "CACHE_DIR"},
        model_id=smollm2_dir(),
        model_gguf_file=GGUF_NAME,
        threads=2,
        **{"model_backend": "torch", **overrides},
    )


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(scope="module")
def fp32(backend):
    return load_model(settings(quantize="none", model_backend=backend))


@pytest.fixture(scope="module")
def int8(backend):
    return load_model(settings(quantize="int8", model_backend=backend))


@pytest.fixture(scope="module")
def reference():
    """transformers' own Llama on the same converted checkpoint, float32."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_directory(settings()), dtype=torch.float32)
    return model.eval()


@pytest.fixture(scope="module")
def reference_greedy(reference):
    """transformers' `generate`, greedy, 20 new tokens for each of ENGINE_PROMPTS: (text, token count),
    computed once for both backends' engines, with the tokenizer both load (load_model's)."""
    tokenizer = load_tokenizer(model_directory(settings()))
    expected = {}
    for prompt in ENGINE_PROMPTS:
        ids = torch.tensor([tokenizer(prompt)["input_ids"]])
        with torch.inference_mode():
            out = reference.generate(ids, do_sample=False, max_new_tokens=20, pad_token_id=tokenizer.eos_token_id)
        expected[prompt] = tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True), out.shape[1] - ids.shape[1]
    return expected


def new_cache(model, length: int) -> KVCache:
    cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
    cache.reserve(1, length)  # the model's attention writes into the cache: room must exist first
    return cache


def forward_all(model, cache: KVCache, ids, start: int) -> torch.Tensor:
    """Feed `ids` at positions start.. of the single row in slot 0; the logits at every one: [len, vocab]
    (the native module itself: its torch signature can ask for several positions per row)."""
    n = len(ids)
    tokens = torch.tensor([ids], dtype=torch.long)
    positions = torch.arange(start, start + n)[None]
    with torch.inference_mode():
        return model.module(tokens, positions, cache, 0, torch.arange(n)[None])[0]


def decoded_logits(model, ids, width: int = 128):
    """(position, logits after the token there) for every position of `ids`, through any backend's
    contract (logits after the last token of a call only): every scored logit comes from a decode step,
    one token per row per call. The sequence is cut into segments of `width` tokens, each in a cache
    slot of its own that first receives the keys and values of everything before the segment (prefilled
    once, chunk by chunk, in slot 0, and copied); then all segments step together, so a pass over n
    tokens takes `width` calls instead of n."""
    n = len(ids)
    segments = -(-n // width)
    cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
    cache.reserve(1 + segments, n)
    for s in range(1, segments):  # slot 1 + s: the context of segment s (slot 1, segment 0, has none)
        model.forward(np.array([ids[(s - 1) * width : s * width]]), np.array([(s - 1) * width]), np.array([width]), cache, 0, False)
        cache.move(0, 1 + s, s * width)
    for j in range(width):
        positions = np.arange(segments) * width + j
        positions = positions[positions < n]  # only the last segment can be shorter: rows end from the last
        tokens = np.array(ids)[positions][:, None]
        logits = model.forward(tokens, positions, np.ones(len(positions), dtype=np.int64), cache, 1, True)
        yield from zip(positions.tolist(), logits)


def tokenize(tokenizer, prompt):
    if isinstance(prompt, list):  # chat messages: the model's own template, then the plain tokenizer
        prompt = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return tokenizer(prompt, add_special_tokens=False)["input_ids"]
    return tokenizer(prompt)["input_ids"]


def test_native_logits_equal_transformers(reference):
    model, tokenizer = load_model(settings(quantize="none", model_backend="torch"))
    assert model.backend == "torch"
    ids = tokenizer(LOGITS_PROMPT)["input_ids"]
    assert 25 <= len(ids) <= 40
    steps = 5
    cache = new_cache(model, len(ids) + steps)
    with torch.inference_mode():
        # Prefill: every position of the prompt in one pass.
        native = forward_all(model, cache, ids, 0)
        expected = reference(torch.tensor([ids])).logits[0]
        prefill_diff = (native - expected).abs().max().item()
        # Decode: one token at a time through the KV cache, positions continuing; transformers
        # recomputes the whole sequence each time, so its side owes nothing to any cache.
        decode_diff = 0.0
        sequence = list(ids)
        for _ in range(steps):
            sequence.append(int(expected[-1].argmax()))
            native = forward_all(model, cache, sequence[-1:], len(sequence) - 1)[-1]
            expected = reference(torch.tensor([sequence])).logits[0]
            decode_diff = max(decode_diff, (native - expected[-1]).abs().max().item())
    scale = expected.abs().max().item()
    print(
        f"\nlogits max |native - transformers|: prefill {prefill_diff:.2e}, decode {decode_diff:.2e} "
        f"(logits up to {scale:.1f})"
    )
    assert prefill_diff <= 1e-4 and decode_diff <= 1e-4, (prefill_diff, decode_diff)


def test_onnx_logits_equal_the_torch_module():
    """float32 through ONNX Runtime (a chunked prefill, then decode steps) against the readable torch
    module on the same weights: within 1e-4."""
    onnx_model, tokenizer = load_model(settings(quantize="none", model_backend="onnx"))
    assert onnx_model.backend == "onnx"
    torch_model, _ = load_model(settings(quantize="none", model_backend="torch"))
    ids = tokenizer(LOGITS_PROMPT)["input_ids"]
    steps = 5
    reference_cache, cache = new_cache(torch_model, len(ids) + steps), new_cache(onnx_model, len(ids) + steps)
    expected = forward_all(torch_model, reference_cache, ids, 0).numpy()
    # Two prefill chunks, the second after a past; each returns the logits after its last token.
    cut = len(ids) // 2
    first = onnx_model.forward(np.array([ids[:cut]]), np.array([0]), np.array([cut]), cache, 0, True)[0]
    second = onnx_model.forward(np.array([ids[cut:]]), np.array([cut]), np.array([len(ids) - cut]), cache, 0, True)[0]
    diffs = [np.abs(first - expected[cut - 1]).max(), np.abs(second - expected[-1]).max()]
    sequence = list(ids)
    for _ in range(steps):
        sequence.append(int(expected[-1].argmax()))
        expected = forward_all(torch_model, reference_cache, sequence[-1:], len(sequence) - 1).numpy()
        got = onnx_model.forward(np.array([sequence[-1:]]), np.array([len(sequence) - 1]), np.array([1]), cache, 0, True)
        diffs.append(np.abs(got[0] - expected[-1]).max())
    print(f"\nlogits max |onnx - torch| (prefill chunks, then decode): {max(diffs):.2e}")
    assert max(diffs) <= 1e-4, diffs


def test_engine_greedy_equals_transformers_generate(fp32, reference_greedy):
    model, tokenizer = fp32
    config = settings(quantize="none")
    engine = Engine(model, tokenizer, config).start()
    try:
        for prompt in ENGINE_PROMPTS:
            expected, generated = reference_greedy[prompt]
            request = validate_generate(
                {"inputs": prompt, "parameters": {"do_sample": False, "max_new_tokens": 20}}, config
            )
            result = engine.submit(request).result()
            print(f"\n{prompt!r} -> {result.text!r}")
            assert result.text == expected
            assert result.generated_tokens == generated
    finally:
        engine.stop()


def perplexity(model, ids, chunk: int = 256) -> float:
    """exp(mean negative log-likelihood of each next token): the torch module prefills in chunks through
    the KV cache (logits at every position of a call); other backends decode (`decoded_logits`)."""
    nll, count = 0.0, 0
    if model.backend == "torch":
        cache = new_cache(model, len(ids))
        with torch.inference_mode():
            for start in range(0, len(ids), chunk):
                logits = forward_all(model, cache, ids[start : start + chunk], start)
                targets = torch.tensor(ids[start + 1 : start + chunk + 1])  # the last position has no next token
                logp = torch.log_softmax(logits[: len(targets)].double(), dim=-1)
                nll -= logp.gather(1, targets[:, None]).sum().item()
                count += len(targets)
    else:
        for position, logits in decoded_logits(model, ids):
            if position + 1 < len(ids):  # the last position has no next token
                nll -= torch.log_softmax(torch.from_numpy(logits).double(), dim=-1)[ids[position + 1]].item()
                count += 1
    assert count == len(ids) - 1
    return math.exp(nll / count)


def test_int8_perplexity_within_3_percent(fp32, int8):
    tokenizer = fp32[1]
    with open(PASSAGE, encoding="utf-8") as f:
        ids = tokenizer(f.read())["input_ids"]
    assert len(ids) >= 1000
    start = time.perf_counter()
    ppl_fp32 = perplexity(fp32[0], ids)
    ppl_int8 = perplexity(int8[0], ids)
    print(
        f"\n{fp32[0].backend}: perplexity over {len(ids)} tokens: float32 {ppl_fp32:.3f}, int8 {ppl_int8:.3f} "
        f"({100 * (ppl_int8 / ppl_fp32 - 1):+.2f}%; {time.perf_counter() - start:.1f} s)"
    )
    # A sanity floor: a broken model (wrong rotary layout, a missing norm) is far above this on English.
    assert ppl_fp32 < 30
    assert abs(ppl_int8 / ppl_fp32 - 1) <= 0.03, f"int8 perplexity {ppl_int8:.3f}, float32 {ppl_fp32:.3f}"


def greedy(model, prompts, n: int = 16):
    """n greedy tokens for each prompt: each prefilled alone in its own slot, then n - 1 decode steps
    through the KV cache with all the prompts' rows together, as the engine decodes. (Their tokens are
    those of each prompt decoded alone, on both backends, float32 and int8, measured when this replaced
    one prompt at a time; prompts prefilled together, right-padded, were not on torch int8: 2 of 20.)"""
    lengths = np.array([len(ids) for ids in prompts])
    cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
    cache.reserve(len(prompts), int(lengths.max()) + n)
    logits = np.stack(
        [model.forward(np.array([ids]), np.array([0]), np.array([len(ids)]), cache, row, True)[0] for row, ids in enumerate(prompts)]
    )
    out = []
    for step in range(n):
        out.append(logits.argmax(axis=-1))
        if step < n - 1:
            logits = model.forward(out[-1][:, None], lengths + step, np.ones(len(prompts), dtype=np.int64), cache, 0, True)
    return np.stack(out, axis=1).tolist()


def test_int8_greedy_continuations_mostly_match(fp32, int8):
    tokenizer = fp32[1]
    assert len(GREEDY_PROMPTS) == 20
    matches = 0
    prompts = [tokenize(tokenizer, prompt) for prompt in GREEDY_PROMPTS]
    for prompt, a, b in zip(GREEDY_PROMPTS, greedy(fp32[0], prompts), greedy(int8[0], prompts)):
        matches += a == b
        if a != b:
            print(f"\ndiffers: {prompt!r}\n  float32 {tokenizer.decode(a)!r}\n  int8    {tokenizer.decode(b)!r}")
    print(f"\n{fp32[0].backend} int8 greedy: first 16 tokens identical to float32 for {matches}/20 prompts")
    # A broken 8-bit path gets next to none. Exact agreement over 16 tokens also moves with rounding:
    # ONNX Runtime's decode steps went from a one-token-wide attention pass to a two-wide one (the same
    # text whatever the traffic, docs/performance.md) and this set went from 16/20 to 12/20, while 40
    # other prompts (12-token windows of the passage) stayed at 15/40 either way.
    assert matches >= 12, f"only {matches}/20 greedy continuations match"


# int4: the onnx backend's alone (the torch backends refuse it, tests/test_settings.py). The target
# is within 5% of float32; measured +8.0% with int4's scheme (onnx_backend/quantize.py: every variant
# tried, from +5.0% with half the layer weights in 8 bits to +34.7%). The bound guards that level, and
# is no claim that the target is met.
INT4_PERPLEXITY_BOUND = 0.10


@pytest.fixture(scope="module")
def onnx_models():
    """SmolLM2 on ONNX Runtime at each quantization: {QUANTIZE: (model, tokenizer)}."""
    return {quantize: load_model(settings(quantize=quantize, model_backend="onnx")) for quantize in ("none", "int8", "int4")}


def test_int4_perplexity_within_10_percent(onnx_models):
    tokenizer = onnx_models["none"][1]
    with open(PASSAGE, encoding="utf-8") as f:
        ids = tokenizer(f.read())["input_ids"]
    assert onnx_models["int4"][0].dtype_name == "int4"
    ppl = {quantize: perplexity(model, ids) for quantize, (model, _) in onnx_models.items()}
    change = {quantize: 100 * (ppl[quantize] / ppl["none"] - 1) for quantize in ("int8", "int4")}
    print(
        f"\nonnx: perplexity over {len(ids)} tokens: float32 {ppl['none']:.3f}, int8 {ppl['int8']:.3f} "
        f"({change['int8']:+.2f}%), int4 {ppl['int4']:.3f} ({change['int4']:+.2f}%)"
    )
    assert ppl["none"] < 30
    assert ppl["int4"] / ppl["none"] - 1 <= INT4_PERPLEXITY_BOUND, f"int4 perplexity {ppl['int4']:.3f}, float32 {ppl['none']:.3f}"


def test_int4_greedy_continuations_beside_int8(onnx_models):
    """The first 16 greedy tokens of each prompt at float32, int8 and int4, printed side by side (docs/models.md
    quotes them). int4's text is its own (measured: 2 of 20 equal to float32's for 16 tokens, int8 12 of 20),
    but its first token is float32's for 10 of 20 prompts; a broken graph (a wrong zero point, nibble order,
    block layout) gets next to none, and a random model one in ~50,000."""
    tokenizer = onnx_models["none"][1]
    prompts = [tokenize(tokenizer, prompt) for prompt in GREEDY_PROMPTS]
    tokens = {quantize: greedy(model, prompts) for quantize, (model, _) in onnx_models.items()}
    same = {quantize: 0 for quantize in ("int8", "int4")}
    first_token = 0
    for i, prompt in enumerate(GREEDY_PROMPTS):
        print(f"\n{prompt!r}")
        for quantize in ("none", "int8", "int4"):
            print(f"  {quantize:5} {tokenizer.decode(tokens[quantize][i])!r}")
        for quantize in same:
            same[quantize] += tokens[quantize][i] == tokens["none"][i]
        first_token += tokens["int4"][i][0] == tokens["none"][i][0]
    print(f"\nfirst 16 tokens identical to float32: int8 {same['int8']}/20, int4 {same['int4']}/20; int4's first token {first_token}/20")
    assert first_token >= 8, f"int4's first greedy token differs from float32's for {20 - first_token}/20 prompts"
