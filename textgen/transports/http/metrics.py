"""GET /metrics: Prometheus text format, TGI-like names under `textgen_` (no API key: monitors scrape it).

Three sources:
- every HTTP answer (an app `after_request`): requests by route and outcome, and their duration;
- the engine, through its listener hook: per finished generation its queue time, time per token,
  prompt and generated tokens and compute time; per decode step the number of rows in the batch;
- `engine.stats()`, read at scrape time: running and waiting requests; and `engine.prefix_cache_stats()`:
  the prefix cache's tokens held, its budget, and the prompt tokens it saved prefilling.

gunicorn runs a single worker (gunicorn.conf.py), so the one registry of this process holds every
number and no multiprocess mode is needed. The registry belongs to the app (not prometheus_client's
global one): tests build many apps in one process, and each gets its own metrics.
"""

from __future__ import annotations

import time

from flask import Blueprint, Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from ...engine.handle import GenerationResult

bp = Blueprint("metrics", __name__)

_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300)
_TOKEN_SECONDS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)
_TOKENS = tuple(2**i for i in range(14))  # 1 .. 8192
_ROWS = tuple(2**i for i in range(8))  # 1 .. 128


class Metrics:
    """The app's registry and metrics; also the engine listener (`on_outcome`, `on_decode_step`)."""

    def __init__(self, engine) -> None:
        self.registry = registry = CollectorRegistry()
        self.requests = Counter(
            "textgen_requests", "HTTP requests by route and outcome", ["route", "outcome"], registry=registry
        )
        self.request_duration = Histogram(
            "textgen_request_duration_seconds",
            "HTTP request duration, until the last byte of the answer (streams included)",
            ["route"],
            buckets=_SECONDS,
            registry=registry,
        )
        # Per finished generation, and per decode step: (attribute, name, help, buckets).
        for attribute, name, help_text, buckets in (
            ("queue_duration", "request_queue_duration_seconds", "Time a generation waited for a batch slot", _SECONDS),
            ("time_per_token", "request_mean_time_per_token_duration_seconds",
             "Compute time of a generation divided by its generated tokens", _TOKEN_SECONDS),
            ("input_length", "request_input_length", "Prompt tokens per generation", _TOKENS),
            ("generated_tokens", "request_generated_tokens", "Generated tokens per generation", _TOKENS),
            ("inference_duration", "request_inference_duration_seconds",
             "Time from joining the batch (prefill included) to the last token", _SECONDS),
            ("batch_decode_size", "batch_decode_size", "Rows in the batch per decode step", _ROWS),
        ):
            setattr(self, attribute, Histogram("textgen_" + name, help_text, buckets=buckets, registry=registry))
        if hasattr(engine, "stats"):
            Gauge("textgen_queue_size", "Requests waiting for a batch slot", registry=registry).set_function(
                lambda: engine.stats()["waiting"]
            )
            Gauge("textgen_batch_current_size", "Requests in the batch", registry=registry).set_function(
                lambda: engine.stats()["running"]
            )
        if hasattr(engine, "prefix_cache_stats"):
            registry.register(_PrefixCacheCollector(engine))

    # -- engine listener (called on the engine thread; must stay quick) -----------------------------
    def on_outcome(self, outcome) -> None:
        if not isinstance(outcome, GenerationResult):
            return  # errors are counted per HTTP answer (textgen_requests_total{outcome=...})
        self.queue_duration.observe(outcome.queue_time)
        self.time_per_token.observe(outcome.time_per_token)
        self.input_length.observe(outcome.prompt_tokens)
        self.generated_tokens.observe(outcome.generated_tokens)
        self.inference_duration.observe(outcome.compute_time)

    def on_decode_step(self, batch_size: int) -> None:
        self.batch_decode_size.observe(batch_size)


class _PrefixCacheCollector:
    """The prefix cache's counters, read from the engine at scrape time (all zero when it is off)."""

    def __init__(self, engine) -> None:
        self.engine = engine

    def describe(self):
        return self.collect(empty=True)

    def collect(self, empty: bool = False):
        stats = {} if empty else (self.engine.prefix_cache_stats() or {})
        for kind, name, key, help_text in (
            (CounterMetricFamily, "textgen_prefix_cache_hit_tokens", "hit_tokens",
             "Prompt tokens whose prefill was skipped: their keys and values came from the prefix cache"),
            (CounterMetricFamily, "textgen_prefix_cache_lookup_tokens", "looked_up_tokens",
             "Prompt tokens of the requests looked up in the prefix cache (hit ratio: hit / lookup)"),
            (GaugeMetricFamily, "textgen_prefix_cache_tokens", "tokens", "Prompt tokens the prefix cache holds now"),
            (GaugeMetricFamily, "textgen_prefix_cache_capacity_tokens", "capacity_tokens",
             "The prefix cache's budget in tokens (PREFIX_CACHE_TOKENS in whole blocks; 0: off)"),
        ):
            yield kind(name, help_text, value=stats.get(key, 0))


def init_metrics(app: Flask, engine) -> Metrics:
    """Create the app's registry, listen to `engine`, time and count every answer, serve /metrics."""
    if "textgen.metrics" in app.extensions:
        return app.extensions["textgen.metrics"]
    metrics = app.extensions["textgen.metrics"] = Metrics(engine)
    # The engine keeps its listeners weakly: this one lives as long as the app that holds it, so tests
    # that build many apps over one shared engine leave nothing behind.
    if hasattr(engine, "add_listener"):
        engine.add_listener(metrics)

    @app.before_request
    def _start_timer():
        g.metrics_started = time.perf_counter()

    @app.after_request
    def _count(response):
        if request.endpoint == "metrics.scrape":
            return response
        route = request.url_rule.rule if request.url_rule is not None else "unmatched"
        outcome = g.get("error_type") or ("success" if response.status_code < 400 else f"http_{response.status_code}")
        # Counted when the headers go out: a stream that fails later still counts as a success here
        # (its error travels as an SSE event).
        metrics.requests.labels(route, outcome).inc()
        started = g.get("metrics_started", time.perf_counter())
        # The duration is taken when the server closes the response, after a stream's last event.
        response.call_on_close(lambda: metrics.request_duration.labels(route).observe(time.perf_counter() - started))
        return response

    app.register_blueprint(bp)
    return metrics


@bp.get("/metrics")
def scrape():
    registry = current_app.extensions["textgen.metrics"].registry
    # prometheus_client 0.26's CONTENT_TYPE_LATEST says version=1.0.0; the classic text format is 0.0.4.
    return Response(generate_latest(registry), content_type=CONTENT_TYPE_PLAIN_0_0_4)
