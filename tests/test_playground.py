"""The playground page (GET /) in a real headless Chromium, driven by Playwright, against a live server.

One backend is enough here: the page only sees HTTP, which every backend answers alike (test_http.py).
"""

from __future__ import annotations

import json
import math
import os
import time
from contextlib import ExitStack

import jsonschema
import pytest
import requests
from playwright.sync_api import sync_playwright

from devtools.servers import ROOT, chromium_path, thread_server, wait_until
from textgen.engine import Engine
from textgen.model.loader import load_model
from textgen.server import create_app
from textgen.settings import Settings

pytestmark = pytest.mark.browser

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def artifacts_dir() -> str:
    path = os.environ.get("TEST_ARTIFACTS") or os.path.join(ROOT, "test-artifacts")
    os.makedirs(path, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True)
        yield browser
        browser.close()


@pytest.fixture(scope="module")
def native(tiny_model_dir):
    settings = Settings.from_env(environ={}, model_id=tiny_model_dir, threads=2, model_backend="torch")
    return settings, load_model(settings)


@pytest.fixture
def serve(native):
    """serve(**settings overrides) -> (url, engine): a fresh engine and app behind a live port."""
    with ExitStack() as stack:

        def start(**overrides):
            settings, (model, tokenizer) = native
            engine = Engine(model, tokenizer, settings.replace(**overrides)).start()
            stack.callback(engine.stop)
            return stack.enter_context(thread_server(create_app(engine.settings, engine=engine))), engine

        yield start


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    page.set_default_timeout(15_000)
    yield page
    context.close()


def state(page) -> str:
    return page.evaluate("document.body.dataset.state")


def wait_state(page, *states) -> str:
    page.wait_for_function(f"() => {list(states)}.includes(document.body.dataset.state)")
    return state(page)


def test_generate_streams_tokens_then_shows_the_finish(serve, page, slow_forward):
    url, engine = serve()
    slow_forward(engine, 0.03)  # 40 tokens take over a second: time to watch them arrive
    requested = []
    page.on("request", lambda req: requested.append(req.url))
    page.goto(url + "/")
    assert page.get_by_label("Prompt").is_visible()
    page.wait_for_function("() => !document.getElementById('model').textContent.startsWith('loading')")
    assert engine.settings.model_id in page.inner_text("#model")

    page.get_by_label("Prompt").fill("Once upon a time")
    page.get_by_label("max_new_tokens").fill("40")
    page.get_by_label("seed").fill("7")
    page.get_by_role("button", name="Generate").click()

    lengths = []
    while state(page) == "running":
        lengths.append(len(page.inner_text("#generated")))
        time.sleep(0.05)
    assert wait_state(page, "done", "error") == "done", page.inner_text("#status")
    grown = sorted({n for n in lengths if n > 0})
    assert len(grown) >= 2, f"output did not stream: lengths seen {lengths}"
    assert page.inner_text("#generated").strip()
    stats = page.inner_text("#stats")
    assert "finish reason: length" in stats and "40 tokens" in stats and " s" in stats
    assert [u for u in requested if not u.startswith(url + "/")] == []  # self-contained: nothing from elsewhere

    shot = os.path.join(artifacts_dir(), "playground.png")
    page.screenshot(path=shot, full_page=True)
    assert os.path.getsize(shot) > 0


def test_stop_cancels_the_generation_on_the_server(serve, page, slow_forward):
    url, engine = serve()
    slow_forward(engine, 0.05)  # 250 tokens would take over 12 s
    page.goto(url + "/")
    page.get_by_label("Prompt").fill("Hi")
    page.get_by_label("max_new_tokens").fill("250")
    page.get_by_label("do_sample").uncheck()
    page.get_by_role("button", name="Generate").click()
    started = time.monotonic()
    assert wait_until(lambda: engine.stats()["running"] == 1, timeout=10)
    page.wait_for_function("() => document.getElementById('generated').textContent.length > 0")

    page.get_by_role("button", name="Stop").click()
    stopped = time.monotonic()
    assert wait_until(lambda: engine.stats() == {"running": 0, "waiting": 0, "admitted": 0}, timeout=5)
    assert time.monotonic() - stopped < 2.0
    assert time.monotonic() - started < 8.0  # far sooner than the 250 tokens could have finished
    assert wait_state(page, "stopped", "done", "error") == "stopped"
    assert "Stopped" in page.inner_text("#status")
    assert page.get_by_role("button", name="Generate").is_enabled()
    assert page.get_by_role("button", name="Stop").is_disabled()


def test_api_key_is_asked_for_then_used(serve, page):
    url, _ = serve(api_key="k1")
    page.goto(url + "/")
    key_field = page.get_by_label("API key", exact=False)
    assert not key_field.is_visible()  # not asked for until the server does
    page.get_by_label("Prompt").fill("Hello")
    page.get_by_label("max_new_tokens").fill("5")
    page.get_by_role("button", name="Generate").click()
    assert wait_state(page, "error") == "error"
    assert "needs an API key" in page.inner_text("#status")
    assert key_field.is_visible()

    key_field.fill("wrong")
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => document.getElementById('status').textContent.includes('refused')")
    assert "Invalid API key" in page.inner_text("#status")

    key_field.fill("k1")
    key_field.press("Enter")  # the key field submits the form too
    assert wait_state(page, "done", "error") == "done", page.inner_text("#status")
    assert "finish reason" in page.inner_text("#stats")
    assert page.evaluate("sessionStorage.getItem('textgen.apiKey')") == "k1"


def test_validation_error_shows_the_servers_message(serve, page):
    url, engine = serve()
    page.goto(url + "/")
    page.get_by_label("Prompt").fill("Hello")
    page.get_by_label("top_p").fill("5")
    page.get_by_role("button", name="Generate").click()
    assert wait_state(page, "error") == "error"
    assert "`top_p` must be <= 1.0. Given: 5" in page.inner_text("#status")
    limit = engine.settings.max_new_tokens_limit
    page.get_by_label("top_p").fill("")
    page.get_by_label("max_new_tokens").fill(str(limit + 1))
    page.get_by_role("button", name="Generate").click()
    page.wait_for_function("() => document.getElementById('status').textContent.includes('max_new_tokens')")
    assert f"`max_new_tokens` must be <= {limit}. Given: {limit + 1}" in page.inner_text("#status")


def test_overload_says_try_again(serve, page, slow_forward):
    url, engine = serve(max_concurrent_requests=1)
    slow_forward(engine, 0.05)
    body = {"inputs": "Hi", "parameters": {"max_new_tokens": 200, "do_sample": False}}
    with requests.post(url + "/generate_stream", json=body, stream=True, timeout=30) as busy:
        assert wait_until(lambda: engine.stats()["admitted"] == 1)
        page.goto(url + "/")
        page.get_by_label("Prompt").fill("Hello")
        page.get_by_role("button", name="Generate").click()
        assert wait_state(page, "error") == "error"
        assert "busy" in page.inner_text("#status") and "Try again in 1 s" in page.inner_text("#status")
        busy.close()


def test_network_error_is_explained(serve, page):
    url, _ = serve()
    page.goto(url + "/")
    page.route("**/generate_stream", lambda route: route.abort())
    page.get_by_label("Prompt").fill("Hello")
    page.get_by_role("button", name="Generate").click()
    assert wait_state(page, "error") == "error"
    assert "Could not reach the server" in page.inner_text("#status")


def test_json_schema_box_constrains_the_answer(serve, page):
    """Structured output from the page: the schema typed in the box is sent, parsed, as TGI's `grammar`,
    and the answer is JSON valid for it; a schema the server cannot compile shows the server's 422
    message; text that is no JSON object is named in the page and nothing is sent."""
    url, engine = serve()
    schema = {"type": "object", "properties": {"pet": {"enum": ["cat", "dog"]}, "age": {"type": "integer", "minimum": 0, "maximum": 20}},
              "required": ["pet", "age"]}
    sent = []
    page.on("request", lambda req: sent.append(json.loads(req.post_data)) if req.url.endswith("/generate_stream") else None)
    page.goto(url + "/")
    page.get_by_label("Prompt").fill("A pet as JSON:")
    page.get_by_label("max_new_tokens").fill("60")
    page.get_by_label("seed").fill("3")
    page.get_by_label("JSON schema").fill(json.dumps(schema, indent=2))
    page.get_by_role("button", name="Generate").click()
    assert wait_state(page, "done", "error") == "done", page.inner_text("#status")
    assert sent[-1]["parameters"]["grammar"] == {"type": "json", "value": schema}
    answer = json.loads(page.inner_text("#generated"))
    jsonschema.validate(answer, schema)
    assert "finish reason: eos_token" in page.inner_text("#stats")
    page.screenshot(path=os.path.join(artifacts_dir(), "playground-json-schema.png"), full_page=True)

    page.get_by_label("JSON schema").fill('{"type": "strin"}')
    page.get_by_role("button", name="Generate").click()
    assert wait_state(page, "error") == "error"
    assert "The server rejected a parameter: `grammar` cannot be compiled: Invalid type: strin" in page.inner_text("#status")
    assert len(sent) == 2

    for text, message in (('{"type": "object",', "The JSON schema is not valid JSON ("), ("[1, 2]", "must be a JSON object")):
        page.evaluate("document.body.dataset.state = ''")
        page.get_by_label("JSON schema").fill(text)
        page.get_by_role("button", name="Generate").click()
        assert wait_state(page, "error") == "error"
        assert message in page.inner_text("#status") and "Nothing was sent" in page.inner_text("#status")
        assert page.get_by_role("button", name="Generate").is_enabled()
    assert len(sent) == 2  # neither reached the server


def test_log_probabilities_are_shown_per_token(serve, page):
    """"show log-probabilities" asks for `top_n_tokens` and lists every generated token with its
    log-probability and alternatives: the server's own figures, as /generate gives them."""
    url, engine = serve()
    page.goto(url + "/")
    assert not page.locator("#lp-box").is_visible()
    page.get_by_label("Prompt").fill("Hello world")
    page.get_by_label("max_new_tokens").fill("8")
    page.get_by_label("do_sample").uncheck()
    page.get_by_label("show log-probabilities").check()
    page.get_by_role("button", name="Generate").click()
    assert wait_state(page, "done", "error") == "done", page.inner_text("#status")
    rows = page.eval_on_selector_all(
        "#logprobs tbody tr", "rows => rows.map(r => Array.from(r.cells, c => c.textContent))"
    )
    body = {"inputs": "Hello world", "parameters": {"max_new_tokens": 8, "do_sample": False, "details": True, "top_n_tokens": 5}}
    details = requests.post(url + "/generate", json=body, timeout=30).json()["details"]
    assert len(rows) == len(details["tokens"]) == 8
    for (index, token, logprob, percent, alternatives), want, top in zip(rows, details["tokens"], details["top_tokens"]):
        assert json.loads(token) == want["text"]
        assert float(logprob) == pytest.approx(want["logprob"], abs=1e-3) and float(logprob) <= 0
        assert float(percent.rstrip("%")) == pytest.approx(100 * math.exp(want["logprob"]), abs=0.06)
        assert len(top) == 5 and alternatives.startswith(json.dumps(top[0]["text"]))
    assert [r[0] for r in rows] == [str(i) for i in range(1, 9)]
    page.screenshot(path=os.path.join(artifacts_dir(), "playground-logprobs.png"), full_page=True)

    page.get_by_label("show log-probabilities").uncheck()
    page.get_by_role("button", name="Generate").click()
    assert wait_state(page, "done", "error") == "done", page.inner_text("#status")
    assert not page.locator("#lp-box").is_visible()
    assert page.eval_on_selector_all("#logprobs tbody tr", "rows => rows.length") == 0
