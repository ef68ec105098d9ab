"""GET /metrics: request counters and durations, the engine's per-generation histograms, the gauges."""

import gc
import weakref

import pytest
from prometheus_client.parser import text_string_to_metric_families

from devtools.servers import wait_until
from textgen.server import create_app
from textgen.validation import validate_generate


def scrape(client) -> dict:
    """{(sample name, ((label, value), ...)): value} from the client's /metrics."""
    response = client.get("/metrics")
    assert response.status_code == 200
    samples = {}
    for family in text_string_to_metric_families(response.get_data(as_text=True)):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))))


def request_counts(samples) -> dict:
    return {
        (dict(labels)["route"], dict(labels)["outcome"]): v
        for (name, labels), v in samples.items()
        if name == "textgen_requests_total"
    }


def generate(client, max_new_tokens=6, path="/generate", **parameters):
    body = {"inputs": "Hello there", "parameters": {"max_new_tokens": max_new_tokens, "details": True, **parameters}}
    response = client.post(path, json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response


def test_requests_are_counted_by_route_and_outcome(make_client):
    client, _ = make_client()
    generate(client)
    generate(client)
    assert client.post("/generate", json={"inputs": "Hi", "parameters": {"top_p": 2}}).status_code == 422
    assert client.get("/nope").status_code == 404
    client.get("/metrics")  # scrapes are not counted
    samples = scrape(client)
    assert request_counts(samples) == {
        ("/generate", "success"): 2,
        ("/generate", "validation"): 1,
        ("unmatched", "not_found"): 1,
    }


def test_metrics_is_open_and_refused_requests_are_counted(make_client):
    client, engine = make_client(api_key="secret", max_concurrent_requests=1, max_batch_size=1)
    response = client.get("/metrics")  # no key needed
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert client.post("/generate", json={"inputs": "Hi"}).status_code == 401
    busy = engine.submit(validate_generate({"inputs": "Hi", "parameters": {"max_new_tokens": 250}}, engine.settings))
    try:
        response = client.post("/generate", json={"inputs": "Hi"}, headers={"Authorization": "Bearer secret"})
        assert response.status_code == 429
    finally:
        busy.cancel()
    assert request_counts(scrape(client)) == {("/generate", "unauthorized"): 1, ("/generate", "overloaded"): 1}


def test_token_histograms_match_the_generations(make_client):
    client, _ = make_client()
    details = [generate(client, n).get_json()["details"] for n in (6, 3)]
    samples = scrape(client)
    generated = sum(d["generated_tokens"] for d in details)
    assert generated > 2  # otherwise the decode-step checks below would prove little
    assert value(samples, "textgen_request_generated_tokens_count") == 2
    assert value(samples, "textgen_request_generated_tokens_sum") == generated
    assert value(samples, "textgen_request_input_length_count") == 2
    assert value(samples, "textgen_request_input_length_sum") == sum(d["prompt_tokens"] for d in details)
    for name in (
        "textgen_request_queue_duration_seconds",
        "textgen_request_mean_time_per_token_duration_seconds",
        "textgen_request_inference_duration_seconds",
    ):
        assert value(samples, f"{name}_count") == 2, name
        assert value(samples, f"{name}_bucket", le="+Inf") == 2, name
    assert value(samples, "textgen_request_inference_duration_seconds_sum") > 0
    # Alone in the batch: the first token comes from the prefill, every other one from a 1-row decode step.
    assert value(samples, "textgen_batch_decode_size_count") == generated - 2
    assert value(samples, "textgen_batch_decode_size_sum") == generated - 2
    assert value(samples, "textgen_batch_decode_size_bucket", le="1.0") == generated - 2


def test_batch_decode_size_sees_requests_decoded_together(make_engine, slow_forward):
    engine = make_engine(max_batch_size=4)
    client = create_app(engine.settings, engine=engine).test_client()
    slow_forward(engine, 0.01)
    request = validate_generate({"inputs": "Hi", "parameters": {"max_new_tokens": 20}}, engine.settings)
    handles = [engine.submit(request) for _ in range(2)]
    results = [h.result() for h in handles]
    samples = scrape(client)
    steps = value(samples, "textgen_batch_decode_size_count")
    rows = value(samples, "textgen_batch_decode_size_sum")
    assert rows == sum(r.generated_tokens - 1 for r in results)  # one row per token after the first
    assert steps < rows  # some steps decoded both requests at once
    assert value(samples, "textgen_batch_decode_size_bucket", le="1.0") < steps


def test_gauges_read_running_and_waiting(make_client, slow_forward):
    client, engine = make_client(max_batch_size=1)
    samples = scrape(client)
    assert value(samples, "textgen_batch_current_size") == 0
    assert value(samples, "textgen_queue_size") == 0
    slow_forward(engine)
    request = validate_generate({"inputs": "Hi", "parameters": {"max_new_tokens": 250}}, engine.settings)
    handles = [engine.submit(request) for _ in range(2)]
    try:
        assert wait_until(lambda: engine.stats()["running"] == 1)
        samples = scrape(client)
        assert value(samples, "textgen_batch_current_size") == 1
        assert value(samples, "textgen_queue_size") == 1
    finally:
        for handle in handles:
            handle.cancel()


def test_request_duration_covers_the_whole_stream(make_client, slow_forward):
    client, engine = make_client()
    engine.eos_token_ids = frozenset()  # sampled tokens could end the stream early: exactly 10 come
    slow_forward(engine, 0.02)
    generate(client, 3).close()  # the server closes every response; the test client only when told
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 10}}
    with client.post("/generate_stream", json=body) as response:
        assert response.get_data(as_text=True).count("data:") == 10
    samples = scrape(client)
    assert value(samples, "textgen_request_duration_seconds_count", route="/generate") == 1
    assert value(samples, "textgen_request_duration_seconds_count", route="/generate_stream") == 1
    # 10 forward passes of at least 20 ms each: measured until the stream ended, not when headers went out.
    assert value(samples, "textgen_request_duration_seconds_sum", route="/generate_stream") >= 0.2


def test_apps_sharing_an_engine_have_their_own_registries(engine, base_settings):
    first, second = (create_app(base_settings, engine=engine).test_client() for _ in range(2))
    generate(first, 2)
    assert request_counts(scrape(first)) == {("/generate", "success"): 1}
    assert request_counts(scrape(second)) == {}


class _Recorder:
    def __init__(self):
        self.outcomes, self.steps = [], []

    def on_outcome(self, outcome):
        self.outcomes.append(outcome)

    def on_decode_step(self, rows):
        self.steps.append(rows)


class _Broken:
    def on_outcome(self, outcome):
        raise RuntimeError("listener bug")

    def on_decode_step(self, rows):
        raise RuntimeError("listener bug")


def test_a_failing_listener_never_breaks_the_engine(make_engine, caplog):
    engine = make_engine()
    broken, recorder = _Broken(), _Recorder()
    engine.add_listener(broken)
    engine.add_listener(recorder)
    request = validate_generate({"inputs": "Hi", "parameters": {"max_new_tokens": 4}}, engine.settings)
    handle = engine.submit(request)
    assert wait_until(lambda: recorder.outcomes)  # a crashed engine thread would never answer
    result = handle.result()
    assert recorder.outcomes == [result]
    assert sum(recorder.steps) == result.generated_tokens - 1
    assert "listener bug" in caplog.text and engine.healthy()


def test_listeners_are_held_weakly_and_can_be_removed(make_engine):
    engine = make_engine()
    kept, dropped = _Recorder(), _Recorder()
    dropped_ref = weakref.ref(dropped)
    engine.add_listener(kept)
    engine.add_listener(dropped)
    del dropped
    gc.collect()
    assert dropped_ref() is None  # the engine does not keep an app's metrics alive
    request = validate_generate({"inputs": "Hi", "parameters": {"max_new_tokens": 2}}, engine.settings)
    engine.submit(request).result()
    assert len(kept.outcomes) == 1
    engine.remove_listener(kept)
    engine.submit(request).result()
    assert len(kept.outcomes) == 1


@pytest.mark.parametrize("path", ["/generate", "/"])
def test_route_label_is_the_url_rule(client, path):
    generate(client, 2, path=path)
    assert request_counts(scrape(client)) == {(path, "success"): 1}
