"""render.yaml (the Render Blueprint) says what the service reads and what a free instance needs."""

import json
import os

import pytest
import yaml

from devtools.models import DISTILGPT2_CONFIG
from devtools.servers import ROOT
from textgen.model.architectures import model_shape
from textgen.model.kv_cache import KVCache
from textgen.settings import Settings

# Peak summed PSS of the container's processes serving 40 short requests from 8 clients under Render's
# limits, their KV cache included (tests/test_render_simulation.py; README, "Deploy to Render"), in MiB.
MEASURED_SERVER_PSS_MB = 260
FREE_INSTANCE_MB = 512  # Render's free instance (`plan: free`), as the simulation limits it
MARGIN_MB = 32  # left unplanned: one measurement, on one machine


@pytest.fixture(scope="module")
def service():
    with open(os.path.join(ROOT, "render.yaml"), encoding="utf-8") as f:
        (service,) = yaml.safe_load(f)["services"]
    return service


def render_environment(service) -> dict:
    return {item["key"]: str(item["value"]) for item in service["envVars"]}


def test_a_free_docker_web_service_deployed_only_when_checks_pass(service):
    assert service["type"] == "web" and service["runtime"] == "docker" and service["plan"] == "free"
    assert os.path.exists(os.path.join(ROOT, service["dockerfilePath"]))
    assert service["autoDeployTrigger"] == "checksPass"
    # The nightly insight commit (README.md only) must not redeploy.
    assert "README.md" in service["buildFilter"]["ignoredPaths"]


def test_every_variable_is_a_setting_the_service_reads_with_a_valid_value(service):
    env = render_environment(service)
    fields = {name.upper() for name in Settings.__dataclass_fields__}
    assert set(env) <= fields, f"not read by the service: {set(env) - fields}"
    settings = Settings.from_env(environ=env)  # raises on a value the service would refuse
    assert settings.quantize == "int8" and settings.threads == 1
    assert settings.max_new_tokens_limit < settings.max_total_tokens


def test_the_worst_case_kv_cache_fits_beside_the_measured_server(service):
    """The KV cache of a full batch (MAX_BATCH_SIZE rows) at the longest total length (MAX_TOTAL_TOKENS,
    within the model's context), sized by the cache's own growth rule (its headroom included: the
    capacity it reaches growing to that length, whatever path it grows by, is at most this), for the
    model the image serves (DistilGPT2's config), stays within what 512 MB leaves beside the server."""
    with open(os.path.join(ROOT, service["dockerfilePath"]), encoding="utf-8") as f:
        assert "ARG MODEL_ID=distilbert/distilgpt2\n" in f.read()  # what DISTILGPT2_CONFIG describes
    settings = Settings.from_env(environ=render_environment(service))
    with open(DISTILGPT2_CONFIG, encoding="utf-8") as f:  # the image's model's config (devtools.models)
        shape = model_shape(json.load(f))
    longest = min(settings.max_total_tokens or shape.context, shape.context)  # as the engine caps it
    cache = KVCache(shape.n_layers, shape.n_kv_heads, shape.head_dim)
    cache.reserve(settings.max_batch_size, longest)
    worst_mb = cache.nbytes() / 2**20
    print(f"worst-case KV cache: {settings.max_batch_size} rows x {cache.time_capacity} positions = {worst_mb:.1f} MB")
    assert MEASURED_SERVER_PSS_MB + worst_mb <= FREE_INSTANCE_MB - MARGIN_MB, worst_mb


def test_the_health_check_path_answers(service, client):
    assert client.get(service["healthCheckPath"]).status_code == 200
