"""Embeddings: the vectors against transformers' own last hidden state (mean-pooled, L2-normalised) on
every backend, ONNX Runtime in a process where torch cannot be imported; one text alike alone and in a
batch; the engine generating the same tokens while embedding jobs run beside it; the routes' errors in
each protocol's shape; and the clients unchanged against a live gunicorn server: the `ollama` package
(embed, embeddings), the `openai` SDK (float and base64) and langchain-ollama's OllamaEmbeddings."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import ollama
import openai
import pytest
import requests

from devtools.servers import ROOT
from tests.models import make_tiny_llama
from tests.no_torch import hidden_torch_env
from textgen.engine.embeddings import Embedder
from textgen.errors import Cancelled, Overloaded, ServiceError, Unavailable
from textgen.model.loader import load_model
from textgen.settings import Settings

TOLERANCE = 1e-4  # against transformers (float32 kernels of different shapes)
SAME_TEXT_TOLERANCE = 1e-5  # one text alone and in a batch, the same backend
CHUNK = 16  # the embedder's pass size in these tests: the 40-token input takes three passes
LENGTHS = (5, 17, 3, 40, 16)


def inputs(vocab: int, lengths=LENGTHS, seed: int = 0):
    rng = np.random.default_rng(seed)
    return [[int(t) for t in rng.integers(0, vocab, n)] for n in lengths]


def transformers_vectors(model_dir: str, sequences):
    """transformers' own final hidden states (the base model's last_hidden_state, after the final norm),
    mean over every token, divided by the L2 norm."""
    import torch
    from transformers import AutoModel

    model = AutoModel.from_pretrained(model_dir, dtype=torch.float32).eval()
    out = []
    with torch.no_grad():
        for ids in sequences:
            mean = model(torch.tensor([ids])).last_hidden_state[0].double().mean(0).numpy()
            out.append(mean / np.linalg.norm(mean))
    return np.stack(out)


def embed(model, sequences, chunk: int = CHUNK) -> np.ndarray:
    """What the engine thread does for one job, run here: passes until it is answered."""
    embedder = Embedder(model, chunk, lambda: None, max_jobs=4)
    handle = embedder.submit(sequences)
    while embedder.pending:
        embedder.step()
    return handle.result()


@pytest.fixture(scope="module")
def model_dirs(tiny_model_dir, tmp_path_factory):
    base = tmp_path_factory.mktemp("embedding-models")
    dirs = {"gpt2": tiny_model_dir}
    for variant in ("llama", "qwen2", "gemma3"):
        dirs[variant] = make_tiny_llama(str(base / variant), tiny_model_dir, variant)
    return dirs


def loaded(model_dir: str, backend: str, cache_dir: str):
    settings = Settings.from_env(environ={}, model_id=model_dir, threads=2, model_backend=backend, cache_dir=cache_dir)
    return load_model(settings)[0]


# The transformers backend (the fallback for other architectures) is left out on Gemma 3: its sliding layers
# ignore the window there, in generation's logits as in these states (the native backends serve Gemma 3).
@pytest.mark.parametrize(
    "backend, arch",
    [(b, a) for b in ("onnx", "torch", "transformers") for a in ("gpt2", "llama", "qwen2", "gemma3") if (b, a) != ("transformers", "gemma3")],
)
def test_vectors_are_transformers_last_hidden_state_mean_pooled_and_normalised(arch, backend, model_dirs, tmp_path):
    model = loaded(model_dirs[arch], backend, str(tmp_path))
    sequences = inputs(model.vocab_size)
    got = embed(model, sequences)
    want = transformers_vectors(model_dirs[arch], sequences)
    assert got.shape == (len(sequences), model.width) and got.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(got, want, atol=TOLERANCE)
    # Not a vector any input would get: the inputs' vectors differ from each other by far more.
    assert min(np.abs(got[i] - got[j]).max() for i in range(len(got)) for j in range(i)) > 100 * TOLERANCE


def test_the_onnx_backend_embeds_without_torch(model_dirs, tmp_path):
    sequences = inputs(300)
    script = f"""
import json, sys
from textgen.model.config import read_config
from textgen.model.onnx_backend.graph_files import graph_path
from textgen.model.onnx_backend.onnx_model import OnnxModel
from textgen.engine.embeddings import Embedder
assert "torch" not in sys.modules
source = {model_dirs["gpt2"]!r}
model = OnnxModel(graph_path(source, {str(tmp_path / "cache")!r}, "none"), read_config(source), threads=2)
embedder = Embedder(model, {CHUNK}, lambda: None, 4)
handle = embedder.submit({sequences!r})
while embedder.pending:
    embedder.step()
assert "torch" not in sys.modules
print(json.dumps(handle.result().tolist()))
"""
    env = hidden_torch_env(tmp_path, model_dirs["gpt2"])
    out = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    got = np.array(json.loads(out.stdout.strip().splitlines()[-1]))
    np.testing.assert_allclose(got, transformers_vectors(model_dirs["gpt2"], sequences), atol=TOLERANCE)


@pytest.mark.parametrize("backend", ["onnx", "torch", "transformers"])
def test_a_text_gets_the_same_vector_alone_and_in_a_batch(backend, model_dirs, tmp_path):
    model = loaded(model_dirs["llama"], backend, str(tmp_path))
    batch = inputs(model.vocab_size, lengths=(7, 3, 12, 40, 5, 2))  # 12 and 7 share passes with others
    together = embed(model, batch)
    for i, ids in enumerate(batch):
        alone = embed(model, [ids])[0]
        np.testing.assert_allclose(alone, together[i], atol=SAME_TEXT_TOLERANCE)
    # The chunk size changes the passes, not the vectors.
    np.testing.assert_allclose(embed(model, batch, chunk=256), together, atol=SAME_TEXT_TOLERANCE)


def test_a_failed_pass_fails_its_job_only_and_cancelled_jobs_are_dropped(model_dirs, tmp_path):
    model = loaded(model_dirs["gpt2"], "onnx", str(tmp_path))
    embedder = Embedder(model, 4, lambda: None, max_jobs=3)  # one 3-token input a pass
    real, calls = model.hidden_states, []

    def fail_once(*args):
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return real(*args)

    model.hidden_states = fail_once
    failing, cancelled, fine = (embedder.submit([[1, 2, 3]] * 2) for _ in range(3))
    with pytest.raises(Overloaded):
        embedder.submit([[1]])  # max_jobs waiting: 429 at once
    cancelled.cancel()
    while embedder.pending:
        embedder.step()
    with pytest.raises(ServiceError, match="Embedding failed"):
        failing.result()
    assert cancelled.vectors == [None, None] and len(calls) == 3  # the failed one, then `fine`'s two
    with pytest.raises(Cancelled):  # its caller (a client that hung up) is woken, not left waiting
        cancelled.result()
    np.testing.assert_allclose(fine.result(), embed(model, [[1, 2, 3]] * 2), atol=SAME_TEXT_TOLERANCE)
    embedder.submit([[4]])  # the jobs ended: room again
    embedder.close(Unavailable("The server is shutting down"))
    with pytest.raises(Unavailable):
        embedder.submit([[5]])


def test_a_graph_built_before_the_hidden_output_serves_no_embeddings(model_dirs, tmp_path):
    """A graph prebuilt into a model directory before GRAPH_VERSION 6 (no `hidden_index` / `hidden`) still
    generates; embeddings are a clear 501 (a cached one is rebuilt: GRAPH_VERSION is in its key)."""
    import onnx

    from textgen.model.config import read_config
    from textgen.model.onnx_backend.embedding_table import METADATA_KEY, write_table
    from textgen.model.onnx_backend.onnx_graph import build_model
    from textgen.model.onnx_backend.onnx_model import OnnxModel

    old, table = build_model(model_dirs["gpt2"], "none")
    old.graph.node.remove(next(n for n in old.graph.node if "hidden" in n.output))
    old.graph.input.remove(next(i for i in old.graph.input if i.name == "hidden_index"))
    old.graph.output.remove(next(o for o in old.graph.output if o.name == "hidden"))
    path = str(tmp_path / "model.onnx")
    entry = old.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, write_table(str(tmp_path), *table)
    onnx.save_model(old, path, save_as_external_data=True, location="model.onnx.data")
    model = OnnxModel(path, read_config(model_dirs["gpt2"]), threads=2)
    assert model.width is None
    from textgen.model.kv_cache import KVCache

    cache = KVCache(model.n_layers, model.n_kv_heads, model.head_dim)
    cache.reserve(1, 8)
    logits = model.forward(np.array([[1, 2, 3]]), np.array([0]), np.array([3]), cache, 0, True)
    assert logits.shape == (1, model.vocab_size)
    with pytest.raises(ServiceError) as refused:
        Embedder(model, CHUNK, lambda: None, 4).submit([[1, 2]])
    assert refused.value.status == 501 and "rebuild" in refused.value.message


# -- the engine and the routes (every backend, through the shared session engine) ------------------------


def test_generation_is_unchanged_while_embedding_jobs_run_beside_it(client, app, engine):
    body = {"inputs": "The quick brown fox", "parameters": {"max_new_tokens": 12, "do_sample": False}}
    alone = client.post("/generate", json=body).get_json()["generated_text"]
    texts = ["lorem ipsum " * n for n in (1, 9, 30, 4)]
    want = client.post("/v1/embeddings", json={"input": texts}).get_json()["data"]
    results, errors = [], []

    def embed_loop():
        try:
            own = app.test_client()
            for _ in range(4):
                results.append(own.post("/v1/embeddings", json={"input": texts}).get_json()["data"])
        except Exception as error:  # pragma: no cover - shown by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=embed_loop) for _ in range(2)]
    for thread in threads:
        thread.start()
    beside = [client.post("/generate", json=body).get_json()["generated_text"] for _ in range(3)]
    for thread in threads:
        thread.join(120)
    assert not errors and len(results) == 8
    assert beside == [alone] * 3
    for data in results:
        np.testing.assert_allclose([d["embedding"] for d in data], [d["embedding"] for d in want], atol=SAME_TEXT_TOLERANCE)
    assert not engine.embeddings.pending and engine.embeddings._jobs == 0


def test_openai_route_shape_usage_and_base64(client, engine):
    texts = ["hello world", "a somewhat longer text about nothing"]
    floats = client.post("/v1/embeddings", json={"input": texts, "model": "anything", "user": "u"}).get_json()
    counts = [len(engine.prompts.encode(t)) for t in texts]
    assert floats["object"] == "list" and floats["model"] == "anything"
    assert floats["usage"] == {"prompt_tokens": sum(counts), "total_tokens": sum(counts)}
    assert [(d["object"], d["index"]) for d in floats["data"]] == [("embedding", 0), ("embedding", 1)]
    assert len(floats["data"][0]["embedding"]) == engine.embeddings.width
    encoded = client.post("/v1/embeddings", json={"input": texts, "encoding_format": "base64"}).get_json()
    decoded = [np.frombuffer(__import__("base64").b64decode(d["embedding"]), dtype="<f4") for d in encoded["data"]]
    np.testing.assert_array_equal(decoded, np.array([d["embedding"] for d in floats["data"]], dtype=np.float32))
    # Token ids give what their text gives; one list of ids is one input.
    ids = [engine.prompts.encode(t) for t in texts]
    by_ids = client.post("/v1/embeddings", json={"input": ids}).get_json()["data"]
    np.testing.assert_allclose([d["embedding"] for d in by_ids], [d["embedding"] for d in floats["data"]], atol=SAME_TEXT_TOLERANCE)
    one = client.post("/v1/embeddings", json={"input": ids[0], "dimensions": engine.embeddings.width}).get_json()
    assert len(one["data"]) == 1 and one["usage"]["prompt_tokens"] == counts[0]


@pytest.mark.parametrize(
    "body, param, words",
    [
        ({"input": ""}, "input", "cannot be empty"),
        ({"input": []}, "input", "at least 1"),
        ({"input": ["ok", ""]}, "input", "cannot be empty"),
        ({"input": [[]]}, "input", "at least 1"),
        ({"input": "x", "dimensions": 3}, "dimensions", "must be"),
        ({"input": "x", "encoding_format": "int8"}, "encoding_format", "encoding_format"),
        ({"input": [10**9]}, "input", "vocabulary size"),
        ({"input": "word " * 2000}, "input", "at most"),
        ({"input": ["x"] * 2049}, "input", "at most 2048"),
        ({"input": "x", "colour": "red"}, "colour", "Unknown field"),
    ],
)
def test_openai_route_errors_are_openai_400s(client, body, param, words):
    response = client.post("/v1/embeddings", json=body)
    error = response.get_json()["error"]
    assert response.status_code == 400, error
    assert error["type"] == "invalid_request_error" and error["param"] == param and words in error["message"]


def test_ollama_routes_shape_truncation_and_errors(client, engine, base_settings):
    model = base_settings.model_name
    vectors = client.post("/api/embed", json={"model": model, "input": ["hi there", "bye"]}).get_json()
    assert len(vectors["embeddings"]) == 2 and vectors["prompt_eval_count"] == sum(len(engine.prompts.encode(t)) for t in ["hi there", "bye"])
    assert vectors["model"] == model and vectors["total_duration"] > 0 and vectors["load_duration"] == 0
    legacy = client.post("/api/embeddings", json={"model": model + ":latest", "prompt": "bye"}).get_json()
    np.testing.assert_allclose(legacy["embedding"], vectors["embeddings"][1], atol=SAME_TEXT_TOLERANCE)
    assert client.post("/api/embed", json={"model": model, "input": []}).get_json()["embeddings"] == []
    assert client.post("/api/embeddings", json={"model": model}).get_json() == {"embedding": []}
    # truncate (the default): an over-long input is cut to its first max_input_tokens tokens.
    long_text = "word " * 2000
    cut = client.post("/api/embed", json={"model": model, "input": long_text}).get_json()
    assert cut["prompt_eval_count"] == engine.max_input_tokens
    first = engine.prompts.encode(long_text)[: engine.max_input_tokens]
    same = client.post("/v1/embeddings", json={"input": first}).get_json()["data"][0]["embedding"]
    np.testing.assert_allclose(cut["embeddings"][0], same, atol=SAME_TEXT_TOLERANCE)
    short = client.post("/api/embed", json={"model": model, "input": long_text, "options": {"num_ctx": 8}}).get_json()
    assert short["prompt_eval_count"] == 8
    refused = client.post("/api/embed", json={"model": model, "input": long_text, "truncate": False})
    assert refused.status_code == 400 and "at most" in refused.get_json()["error"]
    unknown = client.post("/api/embed", json={"model": "nope", "input": "x"})
    assert unknown.status_code == 404 and unknown.get_json() == {"error": f"model 'nope' not found; this server serves '{model}:latest'"}
    assert client.post("/api/embeddings", json={"model": "nope", "prompt": "x"}).status_code == 404
    wrong = client.post("/api/embed", json={"model": model, "input": "x", "dimensions": 2})
    assert wrong.status_code == 400 and set(wrong.get_json()) == {"error"} and "dimensions" in wrong.get_json()["error"]


# -- unchanged clients against gunicorn ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def live(gunicorn_url):
    model = ollama.Client(host=gunicorn_url, timeout=60).list().models[0].model
    return gunicorn_url, model


def test_the_ollama_package_embeds(live):
    url, model = live
    client = ollama.Client(host=url, timeout=60)
    both = client.embed(model=model, input=["The sky is blue", "Grass is green"])
    assert len(both.embeddings) == 2 and both.prompt_eval_count > 0
    one = client.embed(model=model, input="Grass is green")
    np.testing.assert_allclose(one.embeddings[0], both.embeddings[1], atol=SAME_TEXT_TOLERANCE)
    np.testing.assert_allclose(np.linalg.norm(one.embeddings[0]), 1.0, atol=1e-6)
    legacy = client.embeddings(model=model, prompt="Grass is green")
    np.testing.assert_allclose(legacy.embedding, one.embeddings[0], atol=SAME_TEXT_TOLERANCE)
    with pytest.raises(ollama.ResponseError) as missing:
        client.embed(model="no-such-model", input="x")
    assert missing.value.status_code == 404 and "not found" in missing.value.error


def test_the_openai_sdk_embeds_in_base64_and_floats(live):
    url, _ = live
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused")
    texts = ["The sky is blue", "Grass is green"]
    default = client.embeddings.create(model="m", input=texts)  # the SDK asks for base64 and decodes it
    floats = client.embeddings.create(model="m", input=texts, encoding_format="float")
    assert [d.index for d in default.data] == [0, 1] and default.usage.prompt_tokens == floats.usage.prompt_tokens > 0
    np.testing.assert_array_equal(np.array([d.embedding for d in default.data], dtype=np.float32),
                                  np.array([d.embedding for d in floats.data], dtype=np.float32))
    via_ollama = requests.post(url + "/api/embed", json={"model": live[1], "input": texts}, timeout=60).json()
    np.testing.assert_allclose([d.embedding for d in floats.data], via_ollama["embeddings"], atol=SAME_TEXT_TOLERANCE)
    with pytest.raises(openai.BadRequestError) as refused:
        client.embeddings.create(model="m", input="x", dimensions=7)
    assert refused.value.status_code == 400 and "dimensions" in refused.value.message


def test_langchain_ollama_embeddings(live):
    from langchain_ollama import OllamaEmbeddings

    url, model = live
    embeddings = OllamaEmbeddings(model=model, base_url=url, validate_model_on_init=True)
    documents = embeddings.embed_documents(["The sky is blue", "Grass is green"])
    query = embeddings.embed_query("Grass is green")
    assert len(documents) == 2 and len(query) == len(documents[0])
    np.testing.assert_allclose(query, documents[1], atol=SAME_TEXT_TOLERANCE)
