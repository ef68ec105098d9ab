"""deploy/kubernetes, offline (no cluster): the manifests are valid Kubernetes objects, the custom resources
have the fields that matter, and everything they name is something the service really serves or reads.

- Rendered by kustomize (`kubectl kustomize`, or `kustomize build`) where such a binary is on PATH: the base
  alone, with the ServiceMonitor component, and with the KEDA component too. Without one (a fresh CI
  machine), the files each kustomization lists, as they are: the base is plain resources, so this validates
  the same objects, only the KEDA component's deletion of the HPA is not applied (a patch, not an object).
- Built-in kinds pass `kubernetes-validate --strict` (schemas shipped in the PyPI package) for the oldest
  Kubernetes release upstream still supports and the newest the package ships.
- The ScaledObject, the ServiceMonitor and prometheus-adapter's rule are checked field by field.
- Probe paths against the Flask app's routes, metric names against its /metrics registry, environment
  variables against Settings and gunicorn.conf.py, the container port against the Dockerfile: a rename in
  the service breaks this test, not production.
- The sizing arithmetic of deployment.yaml against the figures measured with the image
  (bench/results/pod_sizing.json, from bench/pod_sizing.py).
"""

from __future__ import annotations

import copy
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from devtools.servers import ROOT
from textgen.server import create_app
from textgen.settings import Settings

K8S = os.path.join(ROOT, "deploy", "kubernetes")
NAME = "gpt2-text-generator"
# Kubernetes minor releases: upstream supports the last three. On 2026-11-29 the oldest still supported
# is 1.35 (1.34 reached end of life on 2026-10-27; 1.35's is 2027-02-28), and the newest whose schemas
# kubernetes-validate 1.37.0 ships is 1.37. Move both on as releases come and go.
OLDEST_SUPPORTED, NEWEST = "1.35.0", "1.37.0"
BUILTIN_GROUPS = {"v1", "apps/v1", "policy/v1", "autoscaling/v2"}
# The variants users apply: the base, and the base with components (docs/deploy/kubernetes.md).
VARIANTS = {
    "base": [],
    "servicemonitor": ["servicemonitor"],
    "keda": ["keda", "servicemonitor"],
}


# --- reading the manifests ------------------------------------------------------------------------------

def load_yaml(path: str) -> list:
    with open(path, encoding="utf-8") as f:
        return [doc for doc in yaml.safe_load_all(f) if doc]


def kustomize_command():
    """`kubectl kustomize` or `kustomize build`, whichever is on PATH; None when neither is."""
    if shutil.which("kubectl"):
        return ["kubectl", "kustomize"]
    if shutil.which("kustomize"):
        return ["kustomize", "build"]
    return None


def listed_files(directory: str, key: str = "resources") -> list:
    (kustomization,) = load_yaml(os.path.join(directory, "kustomization.yaml"))
    return [os.path.join(directory, name) for name in kustomization.get(key) or []]


def files_of(components: list) -> list:
    """What the base's and the components' kustomizations list as resources, each file as it is."""
    files = listed_files(K8S)
    for component in components:
        files += listed_files(os.path.join(K8S, "components", component))
    return [doc for path in files for doc in load_yaml(path)]


def render(components: list) -> list:
    """The objects kustomize renders for the base plus `components` (an overlay written beside, pointing at
    them by relative paths: kustomize takes neither absolute paths nor an overlay inside the base)."""
    command = kustomize_command()
    with tempfile.TemporaryDirectory() as overlay:
        base = os.path.relpath(K8S, overlay)
        kustomization = {
            "apiVersion": "kustomize.config.k8s.io/v1beta1",
            "kind": "Kustomization",
            "resources": [base],
            "components": [f"{base}/components/{c}" for c in components],
        }
        with open(os.path.join(overlay, "kustomization.yaml"), "w", encoding="utf-8") as f:
            yaml.safe_dump(kustomization, f)
        done = subprocess.run([*command, overlay], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


@functools.lru_cache(maxsize=None)
def _manifests(components: tuple) -> list:
    return render(list(components)) if kustomize_command() else files_of(list(components))


def manifests(components: list) -> list:
    """The objects users apply for the base plus `components`: rendered by kustomize where a binary is on
    PATH, else the listed files as they are (a copy: tests may not change what the next one reads)."""
    return copy.deepcopy(_manifests(tuple(components)))


def one(docs: list, kind: str) -> dict:
    (found,) = [d for d in docs if d["kind"] == kind]
    return found


@pytest.fixture(scope="module")
def base():
    return manifests([])


@pytest.fixture(scope="module")
def deployment(base):
    return one(base, "Deployment")


@pytest.fixture(scope="module")
def container(deployment):
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    return container


@pytest.fixture(scope="module")
def env(container) -> dict:
    """The container's literal environment (variables from a Secret are named but have no value here)."""
    return {item["name"]: item.get("value") for item in container["env"]}


@pytest.fixture(scope="module")
def keda_objects():
    return manifests(VARIANTS["keda"])


# --- what the service serves and reads ------------------------------------------------------------------

class StubEngine:
    """Enough of an engine for the app to build its routes and serve /health, /ready and /metrics."""

    draining = False

    def healthy(self):
        return True

    def info(self):
        return {}

    def stats(self):
        return {"waiting": 0, "running": 0}


@pytest.fixture(scope="module")
def app():
    return create_app(Settings(), engine=StubEngine())


@pytest.fixture(scope="module")
def get_routes(app) -> dict:
    """{path: endpoint} of every GET route the app serves."""
    return {rule.rule: rule.endpoint for rule in app.url_map.iter_rules() if "GET" in rule.methods}


@pytest.fixture(scope="module")
def metric_names(app) -> set:
    """The metric families GET /metrics exposes, as tests/test_metrics.py reads them."""
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    return {family.name for family in text_string_to_metric_families(response.get_data(as_text=True))}


def settings_variables() -> set:
    return {name.upper() for name in Settings.__dataclass_fields__}


def gunicorn_conf_variables() -> set:
    with open(os.path.join(ROOT, "gunicorn.conf.py"), encoding="utf-8") as f:
        return set(re.findall(r"""os\.environ(?:\.get\(|\[)\s*["']([A-Z0-9_]+)["']""", f.read()))


def dockerfile_port() -> int:
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        text = f.read()
    service = text[text.index("AS service"):]  # the default target: what the Deployment runs
    (expose,) = re.findall(r"^EXPOSE\s+(\d+)\s*$", service, re.M)
    (port,) = re.findall(r"^\s+PORT=(\d+)\s*$", text, re.M)
    assert expose == port, (expose, port)
    return int(expose)


def queried_metrics(promql: str) -> set:
    return set(re.findall(r"\b(textgen_[a-z_]+)\b", promql))


# --- the manifests are valid ----------------------------------------------------------------------------

@pytest.mark.parametrize("variant", VARIANTS)
def test_every_builtin_object_passes_kubernetes_validate_strict(variant, tmp_path):
    docs = manifests(VARIANTS[variant])
    builtin = [d for d in docs if d["apiVersion"] in BUILTIN_GROUPS]
    others = [d for d in docs if d["apiVersion"] not in BUILTIN_GROUPS]
    assert {d["apiVersion"] for d in others} <= {"keda.sh/v1alpha1", "monitoring.coreos.com/v1"}, others
    path = tmp_path / "objects.yaml"
    path.write_text(yaml.safe_dump_all(builtin), encoding="utf-8")
    done = subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", OLDEST_SUPPORTED, "-k", NEWEST, str(path)],
        capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    # It only warns about a kind it has no schema for: every object must have been checked, both versions.
    passed = set(re.findall(r"passed for resource (\S+) against version (\S+)", done.stdout))
    minor = lambda version: ".".join(version.split(".")[:2])  # noqa: E731
    expected = {(f"{d['kind'].lower()}/{d['metadata']['name']}", minor(v)) for d in builtin for v in (OLDEST_SUPPORTED, NEWEST)}
    assert passed == expected, done.stdout + done.stderr


def test_kubernetes_validate_strict_refuses_an_unknown_field(deployment, tmp_path):
    """The check above can fail: a misspelt field is an error in strict mode."""
    broken = copy.deepcopy(deployment)
    broken["spec"]["template"]["spec"]["containers"][0]["livenesProbe"] = {"httpGet": {"path": "/health", "port": 5000}}
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(broken), encoding="utf-8")
    done = subprocess.run([sys.executable, "-m", "kubernetes_validate", "--strict", "-k", NEWEST, str(path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "livenesProbe" in done.stdout + done.stderr


def test_the_variants_hold_the_objects_expected():
    kinds = {variant: sorted(d["kind"] for d in manifests(components)) for variant, components in VARIANTS.items()}
    assert kinds["base"] == ["Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget", "Service"]
    assert kinds["servicemonitor"] == sorted(kinds["base"] + ["ServiceMonitor"])
    if kustomize_command():  # the component's patch deletes the HPA: one autoscaler only
        assert kinds["keda"] == ["Deployment", "PodDisruptionBudget", "ScaledObject", "Service", "ServiceMonitor"]
    else:  # patches are applied by nothing here: the listed files, the HPA still among them
        assert kinds["keda"] == sorted(kinds["servicemonitor"] + ["ScaledObject"])


def test_rendering_changes_nothing_but_the_keda_patch():
    """Both paths validate the same objects: what kustomize renders is what the files say (so a machine
    without kubectl checks what a user applies), apart from the HPA the KEDA component deletes."""
    if not kustomize_command():
        pytest.skip("no kubectl or kustomize on PATH: nothing renders here (the files were validated as they are)")
    key = lambda d: (d["kind"], d["metadata"]["name"])  # noqa: E731
    for variant, components in VARIANTS.items():
        rendered = {key(d): d for d in render(components)}
        files = {key(d): d for d in files_of(components)}
        if "keda" in components:
            del files[("HorizontalPodAutoscaler", NAME)]
        assert rendered == files, variant


# --- the custom resources, field by field ---------------------------------------------------------------

def test_scaled_object_scales_the_deployment_on_the_queue_like_the_hpa(keda_objects, base, metric_names):
    scaled = one(keda_objects, "ScaledObject")
    deployment, hpa, service = one(base, "Deployment"), one(base, "HorizontalPodAutoscaler"), one(base, "Service")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    spec = scaled["spec"]
    target = spec["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment" and target.get("apiVersion", "apps/v1") == "apps/v1"
    # The same replicas, thresholds and behaviour as the HPA it replaces.
    assert (spec["minReplicaCount"], spec["maxReplicaCount"]) == (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"])
    assert spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"] == hpa["spec"]["behavior"]
    hpa_targets = {m["pods"]["metric"]["name"]: m["pods"]["target"]["averageValue"] for m in hpa["spec"]["metrics"]}
    keda_targets = {}
    for trigger in spec["triggers"]:
        assert trigger["type"] == "prometheus" and trigger.get("metricType", "AverageValue") == "AverageValue"
        query = trigger["metadata"]["query"]
        (metric,) = queried_metrics(query)
        # Summed over this Deployment's pods (the Service's name is the label the ServiceMonitor gives).
        assert query.startswith("sum(") and f'service="{service["metadata"]["name"]}"' in query, query
        keda_targets[metric] = trigger["metadata"]["threshold"]
    assert "textgen_queue_size" in keda_targets
    assert set(keda_targets) <= metric_names
    assert keda_targets == hpa_targets
    # Prometheus unreachable: never scale below the minimum or below what runs.
    assert spec["fallback"]["replicas"] >= spec["minReplicaCount"]


def test_service_monitor_scrapes_the_services_http_port_at_metrics(keda_objects, base, get_routes):
    monitor = one(keda_objects, "ServiceMonitor")
    service = one(base, "Service")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    labels = monitor["spec"]["selector"]["matchLabels"]
    assert labels.items() <= service["metadata"]["labels"].items()
    port_names = {p["name"] for p in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in port_names and endpoint["port"] == "http"
    assert get_routes.get(endpoint["path"]) == "metrics.scrape"


def test_prometheus_adapter_rule_serves_the_hpas_pod_metrics(base, metric_names):
    hpa = one(base, "HorizontalPodAutoscaler")
    wanted = {m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]}
    assert {m["type"] for m in hpa["spec"]["metrics"]} == {"Pods"}
    (config,) = load_yaml(os.path.join(K8S, "prometheus-adapter", "rules.yaml"))
    served = set()
    for rule in config["rules"]:
        series = queried_metrics(rule["seriesQuery"])
        assert series <= metric_names, series - metric_names
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        assert "<<.Series>>" in rule["metricsQuery"] and "<<.LabelMatchers>>" in rule["metricsQuery"]
        # The name the adapter gives each series: `matches` applied, `as` substituted (Go's ${1}).
        for name in series:
            match = re.fullmatch(rule["name"]["matches"], name)
            assert match, (rule["name"], name)
            served.add(re.sub(r"\$\{(\d+)\}", lambda m: match.group(int(m.group(1))), rule["name"]["as"]))
    assert wanted <= served, wanted - served


# --- every name the manifests use is one the service serves or reads --------------------------------------

def test_probes_and_scrape_paths_are_routes_the_app_serves(deployment, container, get_routes):
    assert get_routes.get(container["startupProbe"]["httpGet"]["path"]) == "health.health"
    assert get_routes.get(container["livenessProbe"]["httpGet"]["path"]) == "health.health"
    assert get_routes.get(container["readinessProbe"]["httpGet"]["path"]) == "health.ready"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert get_routes.get(annotations["prometheus.io/path"]) == "metrics.scrape"


def test_ports_are_the_one_the_image_listens_on(base, container, env, deployment):
    port = dockerfile_port()
    (container_port,) = container["ports"]
    assert container_port["containerPort"] == port and container_port["name"] == "http"
    assert env.get("PORT", str(port)) == str(port)
    assert Settings.from_env(environ={k: v for k, v in env.items() if v is not None}).port == port
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", port), probe
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(port)
    (service_port,) = one(base, "Service")["spec"]["ports"]
    assert service_port["name"] == "http" and service_port["targetPort"] in ("http", port)
    assert one(base, "Service")["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()


def test_every_variable_is_one_the_service_reads_with_a_value_it_accepts(env):
    known = settings_variables() | gunicorn_conf_variables()
    assert "GUNICORN_TIMEOUT" in known and "MAX_BATCH_SIZE" in known  # the readers above see something
    assert set(env) <= known, f"read by nothing: {set(env) - known}"
    Settings.from_env(environ={k: v for k, v in env.items() if v is not None})  # raises on a refused value


def test_hpa_metrics_are_gauges_the_app_exposes(base, metric_names):
    hpa = one(base, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": NAME}
    names = [m["pods"]["metric"]["name"] for m in hpa["spec"]["metrics"]]
    assert names[0] == "textgen_queue_size" and set(names) <= metric_names


# --- the Deployment's choices, and their arithmetic against what was measured -----------------------------

@pytest.fixture(scope="module")
def measured(container, env) -> dict:
    """bench/results/pod_sizing.json's run at this pod's CPU limit, if it was measured with these limits."""
    with open(os.path.join(ROOT, "bench", "results", "pod_sizing.json"), encoding="utf-8") as f:
        sizing = json.load(f)
    for name in ("MAX_BATCH_SIZE", "MAX_CONCURRENT_REQUESTS", "MAX_TOTAL_TOKENS", "MAX_NEW_TOKENS_LIMIT", "QUEUE_TIMEOUT"):
        assert sizing["environment"].get(name) == env.get(name), (
            f"{name} changed since the pod was sized: re-run bench/pod_sizing.py and check deployment.yaml's figures"
        )
    cpu = str(container["resources"]["limits"]["cpu"])
    (run,) = [r for r in sizing["results"] if float(r["cpus"]) == float(cpu)]
    # The worst case really ran: a full batch of the longest requests (else its memory and its longest
    # generation prove nothing; a CPU starved by other jobs can time them out before they join).
    assert run["worst_case"]["generated_tokens"] >= int(env["MAX_BATCH_SIZE"]) * int(env["MAX_NEW_TOKENS_LIMIT"]), run
    return run


def quantity_mib(value: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "M": 1e6 / 2**20, "G": 1e9 / 2**20}
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", value).groups()
    return float(number) * units.get(unit, 1 / 2**20)


def test_rolling_update_and_disruption_budget(base, deployment):
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pdb = one(base, "PodDisruptionBudget")
    assert pdb["spec"]["selector"] == spec["selector"] and pdb["spec"]["maxUnavailable"] == 1
    hpa = one(base, "HorizontalPodAutoscaler")
    assert hpa["spec"]["minReplicas"] == spec["replicas"]


def test_grace_period_outlasts_prestop_drain_and_the_longest_request(deployment, container, env, measured):
    pod = deployment["spec"]["template"]["spec"]
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    pre_stop = int(command[1])
    graceful, drain, queue_timeout = int(env["GRACEFUL_TIMEOUT"]), float(env["DRAIN_SECONDS"]), float(env["QUEUE_TIMEOUT"])
    # The endpoint removal has to reach the proxies before SIGTERM: longer than a readiness probe cycle.
    assert pre_stop >= 10
    # After SIGTERM: the drain, the longest wait for a slot, the longest generation the limits allow, and
    # that generation again as margin (a busier CPU than the measurement's).
    longest_generation = measured["worst_case"]["max_compute_s"]
    assert graceful >= drain + queue_timeout + 2 * longest_generation, (graceful, drain, queue_timeout, longest_generation)
    # The kubelet's SIGKILL comes after preStop + gunicorn's own graceful timeout, never before.
    assert pod["terminationGracePeriodSeconds"] > pre_stop + graceful


def test_memory_and_cpu_from_the_measured_worst_case(container, measured):
    resources = container["resources"]
    assert resources["requests"] == resources["limits"]  # Guaranteed QoS; the CPU limit sets THREADS
    limit = quantity_mib(resources["limits"]["memory"])
    # Measured under this very limit (docker's g/m are binary: GiB, MiB).
    docker_limit = re.fullmatch(r"(\d+)([gm])", measured["memory_limit"])
    assert int(docker_limit.group(1)) * {"g": 1024, "m": 1}[docker_limit.group(2)] == limit, measured["memory_limit"]
    assert not measured["worker_killed"]
    # The processes' peak with a full batch at the longest length, and the cgroup's (page cache included).
    assert measured["peak_pss_mb"] <= limit - 256, measured
    assert measured["cgroup_peak_usage_mb"] <= limit - 128, measured


def test_startup_probe_covers_the_model_load_many_times_over(container, measured):
    startup = container["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert startup["timeoutSeconds"] <= startup["periodSeconds"]
    # Measured at this pod's CPU; 0.1 CPU took 19-21 s (docs/deploy/render.md): the budget covers both.
    assert budget >= 10 * measured["seconds_to_healthy"] and budget >= 2 * 21, (budget, measured["seconds_to_healthy"])
    assert "initialDelaySeconds" not in container["livenessProbe"]  # the startup probe holds it back instead


def test_hpa_threshold_is_reachable_and_the_floor_is_a_full_batch(base, env):
    hpa = one(base, "HorizontalPodAutoscaler")
    targets = {m["pods"]["metric"]["name"]: float(m["pods"]["target"]["averageValue"]) for m in hpa["spec"]["metrics"]}
    batch, admitted = int(env["MAX_BATCH_SIZE"]), int(env["MAX_CONCURRENT_REQUESTS"])
    # Scaling starts before 429s: the queue per pod can reach the threshold (admitted - batch can wait).
    assert 0 < targets["textgen_queue_size"] < admitted - batch
    # Added latency in a saturated pod = threshold / MAX_BATCH_SIZE (hpa.yaml): 25% here.
    assert targets["textgen_queue_size"] / batch == 0.25
    # The running-requests metric only ever holds replicas: its target is a full batch.
    assert targets["textgen_batch_current_size"] == batch
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_hardened_pod(deployment, container):
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] == 10001
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False and security["readOnlyRootFilesystem"] is True
    assert security["capabilities"] == {"drop": ["ALL"]}
    with open(os.path.join(ROOT, "Dockerfile"), encoding="utf-8") as f:
        assert "\nUSER 10001:10001\n" in f.read()  # the image's user, which runAsUser repeats
    # The one writable place the image needs (Dockerfile: HF_HOME and CACHE_DIR under /tmp).
    (mount,) = container["volumeMounts"]
    (volume,) = pod["volumes"]
    assert mount == {"name": volume["name"], "mountPath": "/tmp"} and "emptyDir" in volume
