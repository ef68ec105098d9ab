"""Every family starts with no torch in the process and generates what transformers generates (issue 25,
"Done when"): the real service (gunicorn, gunicorn.conf.py) with torch and transformers unimportable, as
in the image, the default backend (auto) and no quantization, one server per family; its greedy tokens
against transformers' own `generate` on the same checkpoint, computed here (this process has torch)."""

import pytest
import requests
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from devtools.servers import free_port, start_module, stop_process, wait_healthy
from tests.models import VARIANTS, make_tiny_llama, sharpen, transformers_logits
from tests.no_torch import hidden_torch_env

NEW_TOKENS = 12
PROMPTS = [
    "Hello",
    "The quick brown fox",
    # 63 tokens of the tiny tokenizer: past Mistral's window (8) and Phi-3's (12)
    "Once upon a time, in a land far away, there lived a small dragon who liked to read books about the sea.",
]


def served_tokens(url: str, prompt: str) -> list:
    """The greedy tokens the service at `url` generates after `prompt`."""
    body = {"inputs": prompt, "parameters": {"max_new_tokens": NEW_TOKENS, "do_sample": False, "details": True}}
    response = requests.post(url + "/generate", json=body, timeout=60)
    assert response.status_code == 200, response.text
    return [token["id"] for token in response.json()["details"]["tokens"]]


def transformers_tokens(model, tokenizer, prompt: str) -> list:
    """transformers' greedy tokens: its `generate`; for a longrope model, token by token under the rule
    the native backends follow past its original context (tests/models.transformers_logits: `generate`
    rotates a whole prompt past it with the long factors, so its keys depend on the prompt's length)."""
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    rope = getattr(model.config, "rope_parameters", None) or {}
    with torch.no_grad():
        if rope.get("rope_type") != "longrope":
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NEW_TOKENS, do_sample=False)
            return out[0, ids.shape[1] :].tolist()
        tokens = []
        while len(tokens) < NEW_TOKENS and (not tokens or tokens[-1] != model.config.eos_token_id):
            tokens.append(int(transformers_logits(model, torch.tensor([ids[0].tolist() + tokens]))[-1].argmax()))
    return tokens


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_the_family_serves_without_torch_what_transformers_generates(variant, tiny_model_dir, tmp_path):
    model_dir = sharpen(make_tiny_llama(str(tmp_path / variant), tiny_model_dir, variant))
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    reference = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    expected = [transformers_tokens(reference, tokenizer, prompt) for prompt in PROMPTS]
    assert len({token for tokens in expected for token in tokens}) > NEW_TOKENS  # no echo of one token
    if getattr(reference.config, "sliding_window", None):  # the window changes these tokens: a server ignoring it fails
        assert len(tokenizer(PROMPTS[-1]).input_ids) > reference.config.sliding_window
        unwindowed = AutoModelForCausalLM.from_pretrained(model_dir, sliding_window=1024).eval()  # wider than all
        assert transformers_tokens(unwindowed, tokenizer, PROMPTS[-1]) != expected[-1]

    port = free_port()
    env = hidden_torch_env(tmp_path, model_dir, PORT=str(port), THREADS="2", CACHE_DIR=str(tmp_path / "cache"))
    for name in ("MODEL_BACKEND", "QUANTIZE", "MODEL_GGUF_FILE"):  # the defaults: auto, none
        env.pop(name, None)
    proc = start_module(["gunicorn", "app:app"], env)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, timeout=120, proc=proc)
        info = requests.get(url + "/info", timeout=10).json()
        assert (info["model_backend"], info["quantize"]) == ("onnx", "none")
        assert [served_tokens(url, prompt) for prompt in PROMPTS] == expected
    finally:
        stop_process(proc)
        print(proc.stdout.read())  # shown by pytest when the test fails
