"""render.yaml (the Render Blueprint) says what the service reads and what a free instance needs."""

import os

import pytest
import yaml

from devtools.servers import ROOT
from textgen.model.kv_cache import KVCache
from textgen.settings import Settings

# Summed PSS of the container's processes serving 8 short requests under Render's limits, the KV cache
# of those requests included (tests/test_render_simulation.py; README, "Deploy to Render").
MEASURED_SERVER_PSS_MB = 256


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
    """DistilGPT2 (6 layers, 12 heads of 64, float32 keys and values): the KV cache of a full batch at
    the longest total length, as the cache itself grows to hold it (its headroom included), stays
    within what 512 MB leaves beside the server."""
    settings = Settings.from_env(environ=render_environment(service))
    cache = KVCache(n_layers=6, n_kv_heads=12, head_dim=64)
    cache.reserve(settings.max_batch_size, settings.max_total_tokens)
    worst = cache.nbytes() / 2**20
    measured_server_mb = MEASURED_SERVER_PSS_MB
    assert measured_server_mb + worst <= 480, worst


def test_the_health_check_path_answers(service, client):
    assert client.get(service["healthCheckPath"]).status_code == 200
