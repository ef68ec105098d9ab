"""Shared fixtures: a tiny GPT-2 built and saved here, loaded through the real `from_pretrained` path."""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from datetime import datetime, timezone

import pytest

from devtools.images import prune_dangling_images
from devtools.models import make_tiny
from devtools.servers import chromium_path, gunicorn_server, haproxy_path, reap_retired, thread_server
from tests.models import add_chat_template
from textgen.engine import Engine
from textgen.model.loader import load_model
from textgen.server import create_app
from textgen.settings import Settings


@functools.lru_cache(maxsize=1)
def container_engine_problem():
    """Why no container engine answers here (None when `docker info` works)."""
    if shutil.which("docker") is None:
        return "no `docker` command on PATH"
    try:
        info = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "`docker info` did not answer in 60 s"
    if info.returncode != 0:
        last = (info.stderr or info.stdout).strip().splitlines()[-1:] or [f"exit {info.returncode}"]
        return f"`docker info` failed: {last[0]}"
    return None


def _chromium_problem():
    path = chromium_path()
    return None if os.path.exists(path) else f"no Chromium at {path} (apt-get install chromium, or set CHROMIUM_PATH)"


def _haproxy_problem():
    path = haproxy_path()
    return None if os.path.exists(path) else f"no haproxy at {path} (apt-get install haproxy, or set HAPROXY_PATH)"


# Tests that need something outside Python: why it is missing here (None when it is there).
_OUTSIDE_TOOLS = {"container": container_engine_problem, "browser": _chromium_problem, "haproxy": _haproxy_problem}


def pytest_runtest_setup(item):
    """Container, browser and haproxy tests skip, saying why, where their tool is missing (a `docker` client
    without a daemon included); checked before their fixtures build images or start browsers. Under CI
    they fail instead: .ci/run deselects them itself, saying why, or runs them."""
    for marker, problem_of in _OUTSIDE_TOOLS.items():
        if item.get_closest_marker(marker) is None:
            continue
        problem = problem_of()
        if problem is None:
            continue
        if os.environ.get("CI"):
            pytest.fail(f"{marker} tests selected but {problem}")
        pytest.skip(f"{marker} tests need what is missing here: {problem}")


@pytest.fixture(scope="session", autouse=True)
def _retired_servers_reaped():
    """Servers stopped without waiting out their drain (devtools.servers.retire) have all exited by the
    end of the session."""
    yield
    reap_retired()


@pytest.fixture(scope="session")
def image_builds():
    """For the fixtures that build images: at the end of the session, the untagged images older than it
    are removed (devtools.images.prune_dangling_images)."""
    started = datetime.now(timezone.utc)
    yield
    prune_dangling_images(started)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return str(make_tiny(str(tmp_path_factory.mktemp("tiny-gpt2"))))


@pytest.fixture(scope="session")
def gunicorn_url(tiny_model_dir):
    """`gunicorn app:app` (gunicorn.conf.py) on the tiny model with the default settings, one for the
    session: the tests that only send it requests share it (test_live_server, test_tgi_clients,
    test_update_readme_insight). Its shutdown is nobody's subject: not waited for."""
    with gunicorn_server(tiny_model_dir, wait_for_exit=False) as (url, _):
        yield url


@pytest.fixture(scope="session")
def chat_model_dir(tiny_model_dir, tmp_path_factory):
    """The tiny model with a chat template added to its tokenizer config."""
    target = tmp_path_factory.mktemp("tiny-chat") / "model"
    shutil.copytree(tiny_model_dir, target)
    return add_chat_template(str(target))


@pytest.fixture(scope="session", params=["onnx", "torch", "transformers"])
def base_settings(tiny_model_dir, request):
    """Every test that uses the engine runs on all three backends behind the same contract: ONNX
    Runtime (the default), the native GPT-2 module in plain torch, and transformers'
    AutoModelForCausalLM."""
    # The environment of the machine running the tests must not change what they check.
    return Settings.from_env(environ={}, model_id=tiny_model_dir, threads=2, model_backend=request.param)


@pytest.fixture(scope="session")
def reference_model(tiny_model_dir):
    """transformers' own model on the same weights: what the engine's output is compared with."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()


@pytest.fixture(scope="session")
def loaded(base_settings):
    """Model and tokenizer, loaded once for the whole session (engines below share them; the loader
    sizes the runtime's threads)."""
    return load_model(base_settings)


@pytest.fixture(scope="session")
def engine(loaded, base_settings):
    model, tokenizer = loaded
    engine = Engine(model, tokenizer, base_settings).start()
    yield engine
    engine.stop()


@pytest.fixture
def make_engine(loaded, base_settings):
    """A fresh engine with some settings changed (batch size, admission limit, ...) on the shared model."""
    started = []

    def factory(**overrides):
        model, tokenizer = loaded
        eng = Engine(model, tokenizer, base_settings.replace(**overrides)).start()
        started.append(eng)
        return eng

    yield factory
    for eng in started:
        eng.stop()


@pytest.fixture
def app(engine, base_settings):
    return create_app(base_settings, engine=engine)


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def make_client(make_engine):
    """A test client over an app whose engine has some settings changed."""

    def factory(**overrides):
        eng = make_engine(**overrides)
        return create_app(eng.settings, engine=eng).test_client(), eng

    return factory


@pytest.fixture
def fail_forward_call(monkeypatch):
    """Make the engine's model raise on its n-th forward pass (and only that one)."""

    def arm(engine, n):
        real_forward = engine.model.forward
        calls = {"n": 0}

        def flaky(*args, **kwargs):
            calls["n"] += 1
            if calls["n"] == n:
                raise RuntimeError("boom")
            return real_forward(*args, **kwargs)

        monkeypatch.setattr(engine.model, "forward", flaky)
        return lambda: monkeypatch.setattr(engine.model, "forward", real_forward)

    return arm


@pytest.fixture
def slow_forward(monkeypatch):
    """Make every forward pass of the engine's model take `seconds` longer: a long generation then
    lasts long enough that only a cancellation can end it early."""

    def slow(engine, seconds=0.02):
        import time

        real_forward = engine.model.forward

        def forward(*args, **kwargs):
            time.sleep(seconds)
            return real_forward(*args, **kwargs)

        monkeypatch.setattr(engine.model, "forward", forward)

    return slow


@pytest.fixture
def chat_live(chat_model_dir, base_settings):
    """A live server (in a thread) on the tiny model with a chat template, and its engine."""
    settings = base_settings.replace(model_id=chat_model_dir)
    model, tokenizer = load_model(settings)
    engine = Engine(model, tokenizer, settings).start()
    try:
        with thread_server(create_app(settings, engine=engine)) as url:
            yield url, engine
    finally:
        engine.stop()
