"""render.yaml (the Render Blueprint) says what the service reads and what a free instance needs."""

import ast
import json
import os
import re
import subprocess

import pytest
import yaml

from devtools.models import DISTILGPT2_CONFIG
from devtools.servers import ROOT
from textgen.engine.prefix_cache import PrefixCache
from textgen.model.config import model_shape
from textgen.model.kv_cache import KVCache
from textgen.settings import Settings

# Peak summed PSS of the container's processes serving 40 short requests from 8 clients under Render's
# limits, their KV cache included (tests/test_render_simulation.py; docs/deploy/render.md), in MiB.
MEASURED_SERVER_PSS_MB = 260
FREE_INSTANCE_MB = 512  # Render's free instance (`plan: free`), as the simulation limits it
MARGIN_MB = 32  # left unplanned: one measurement, on one machine
# Generated tokens per second, all rows together, at 8 clients on the reproduced free instance with
# MAX_BATCH_SIZE=8 (docs/deploy/render.md: 23-25 across runs; the low end, for a worst case).
MEASURED_TOKENS_PER_S, MEASURED_BATCH = 23.0, 8
# Render's health checks (render.com/docs/health-checks): an instance failing them for 15 consecutive
# seconds gets no more traffic; they come "every few seconds" (taken as at most 5).
RENDER_UNROUTED_AFTER_S, RENDER_CHECK_INTERVAL_S = 15, 5
RENDER_SHUTDOWN_DELAY_RANGE = (1, 300)  # maxShutdownDelaySeconds, Render's Blueprint spec (default 30)


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


def _glob_regex(pattern: str) -> "re.Pattern":
    """A Render buildFilter glob as a regex: `**/` any directories (none included), `**` anything,
    `*` and `?` within one path segment."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out + r"\Z")


def _repo_imports(path: str) -> set:
    """The repository's top-level packages a Python file imports."""
    with open(os.path.join(ROOT, path), encoding="utf-8") as f:
        tree = ast.parse(f.read())
    names = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    names |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    return {name.split(".")[0] for name in names if os.path.isdir(os.path.join(ROOT, name.split(".")[0]))}


def image_inputs() -> set:
    """The tracked files the Docker image is built from: the Dockerfile and .dockerignore, what its COPY
    lines name (other than the whole context, which only the model stage copies), the scripts its RUN
    lines run, and every file of the repository packages those scripts and the copied code import."""
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True).stdout.split()
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        dockerfile = f.read()
    used = {"Dockerfile", ".dockerignore"}
    for line in re.findall(r"^COPY (?!--from)(.+)$", dockerfile, re.M):
        for source in line.split()[:-1]:
            if source != ".":
                used |= {name for name in tracked if name == source or name.startswith(source.rstrip("/") + "/")}
    used |= set(re.findall(r"\b(scripts/\w+\.py)\b", dockerfile))
    packages, pending = set(), [n for n in used if n.endswith(".py")]
    while pending:  # the imported packages' own imports, and theirs
        for package in _repo_imports(pending.pop()) - packages:
            packages.add(package)
            pending += [name for name in tracked if name.startswith(package + "/") and name.endswith(".py")]
    used |= {name for name in tracked if name.split("/")[0] in packages}
    assert {"gunicorn.conf.py", "scripts/build_graph.py", "textgen/server.py"} <= used  # the reading works
    return used


def test_ignored_paths_cover_no_file_the_image_is_built_from(service):
    """A commit touching only ignored paths is not deployed: safe only if the image never uses them
    (devtools/ and .ci/ are the test and CI helpers; the image's code imports textgen alone)."""
    inputs = image_inputs()
    assert not any(name.startswith(("devtools/", ".ci/")) for name in inputs)
    for pattern in service["buildFilter"]["ignoredPaths"]:
        regex = _glob_regex(pattern)
        assert not [name for name in inputs if regex.match(name)], pattern
    for pattern, example in [("**/*.md", "docs/a.md"), ("**/*.md", "a.md"), ("devtools/**", "devtools/models.py")]:
        assert _glob_regex(pattern).match(example)  # the glob reading itself
    assert not _glob_regex("bench/**").match("textgen/bench/x.py")


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
    capacity it reaches growing to that length, whatever path it grows by, is at most this), plus a full
    prefix cache (PREFIX_CACHE_TOKENS in whole blocks), for the model the image serves (DistilGPT2's
    config), stays within what 512 MB leaves beside the server."""
    with open(os.path.join(ROOT, service["dockerfilePath"]), encoding="utf-8") as f:
        assert "ARG MODEL_ID=distilbert/distilgpt2\n" in f.read()  # what DISTILGPT2_CONFIG describes
    settings = Settings.from_env(environ=render_environment(service))
    with open(DISTILGPT2_CONFIG, encoding="utf-8") as f:  # the image's model's config (devtools.models)
        shape = model_shape(json.load(f))
    longest = min(settings.max_total_tokens or shape.context, shape.context)  # as the engine caps it
    cache = KVCache(shape.n_layers, shape.n_kv_heads, shape.head_dim)
    cache.reserve(settings.max_batch_size, longest)
    worst_mb = cache.nbytes() / 2**20
    prefixes = PrefixCache(shape.n_layers, shape.n_kv_heads, shape.head_dim, settings.prefix_cache_tokens)
    prefix_mb = prefixes.capacity_tokens * prefixes.bytes_per_token / 2**20
    print(f"worst-case KV cache: {settings.max_batch_size} rows x {cache.time_capacity} positions = {worst_mb:.1f} MB; "
          f"prefix cache: {prefixes.capacity_tokens} tokens = {prefix_mb:.1f} MB")
    assert MEASURED_SERVER_PSS_MB + worst_mb + prefix_mb <= FREE_INSTANCE_MB - MARGIN_MB, (worst_mb, prefix_mb)


def test_the_health_check_path_is_the_readiness_route(service, make_client):
    """Render routes to an instance while its health check passes: the path must be a route the app
    serves, and the readiness one (503 while draining, when /health stays 200)."""
    client, engine = make_client()
    path = service["healthCheckPath"]
    endpoint, _ = client.application.url_map.bind("localhost").match(path, method="GET")
    assert endpoint == "health.ready", endpoint
    assert client.get(path).status_code == 200
    engine.drain()  # what the gunicorn worker does on SIGTERM
    assert client.get(path).status_code == 503
    assert client.get("/health").status_code == 200


def longest_request_seconds(settings) -> float:
    """The longest a request admitted on the free instance can take: QUEUE_TIMEOUT waiting for a row,
    then the most tokens the limits let it generate, in a full batch at the measured rate."""
    assert settings.max_batch_size == MEASURED_BATCH, "the measured rate is for this batch size: measure again"
    most_tokens = min(settings.max_new_tokens_limit, settings.max_total_tokens - 1)
    per_row = MEASURED_TOKENS_PER_S / settings.max_batch_size
    return settings.queue_timeout + most_tokens / per_row


def test_the_shutdown_covers_the_drain_and_the_longest_request(service):
    settings = Settings.from_env(environ=render_environment(service))
    longest = longest_request_seconds(settings)
    print(f"drain {settings.drain_seconds:g} s + longest request {longest:.1f} s = "
          f"{settings.drain_seconds + longest:.1f} s <= GRACEFUL_TIMEOUT {settings.graceful_timeout} s "
          f"<= maxShutdownDelaySeconds {service['maxShutdownDelaySeconds']} s")
    # Render stops routing to the draining instance before the worker stops accepting.
    assert settings.drain_seconds >= RENDER_UNROUTED_AFTER_S + RENDER_CHECK_INTERVAL_S
    # A request admitted at the drain's last moment still finishes before gunicorn kills the worker.
    assert settings.graceful_timeout >= settings.drain_seconds + longest
    # ... and gunicorn gives up before Render's SIGKILL, within what Render allows.
    low, high = RENDER_SHUTDOWN_DELAY_RANGE
    assert low <= settings.graceful_timeout <= service["maxShutdownDelaySeconds"] <= high
