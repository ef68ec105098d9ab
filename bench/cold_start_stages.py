"""Run inside the service image by bench/cold_start.py --stages: the start-up's stages in the order
gunicorn's master and worker run them, in one process, each stage's CPU-seconds (time.process_time)
printed as "seconds<TAB>stage". Not the real start (one process, no fork, no engine thread, no HTTP):
its parts, measured apart."""

import importlib
import importlib.util
import os
import pkgutil
import sys
import time

MARKS = [("python itself (interpreter, site)", time.process_time())]


def mark(stage: str) -> None:
    MARKS.append((stage, time.process_time()))


def imported(stage: str, *modules: str) -> None:
    for module in modules:
        importlib.import_module(module)
    mark(stage)


sys.path.insert(0, "/app")
os.chdir("/app")
imported("gunicorn's imports", "gunicorn.app.wsgiapp", "gunicorn.arbiter", "gunicorn.workers.gthread")
spec = importlib.util.spec_from_file_location("gunicorn_conf", "/app/gunicorn.conf.py")
conf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conf)
conf.on_starting(None)
mark("gunicorn.conf.py and the start-up check (numpy's import)")
imported("flask (werkzeug, jinja2, click)", "flask")
imported("onnxruntime's and tokenizers' imports", "onnxruntime", "tokenizers")
imported("pydantic", "pydantic.main", "pydantic.fields")
# What create_app imports (textgen/server.py: every module of textgen/transports/http/ but the OpenAPI
# document's, imported on its first request), the engine and the ONNX backend.
HTTP = os.path.join("/app", "textgen", "transports", "http")
ROUTES = [m.name for m in pkgutil.iter_modules([HTTP]) if not m.name.startswith("openapi")]
imported("the service's modules (request models, routes, prometheus_client)", "textgen.server", "textgen.engine.core",
         "textgen.model.onnx_backend.onnx_model", *(f"textgen.transports.http.{name}" for name in ROUTES))

from textgen.model.config import read_config  # noqa: E402
from textgen.model.onnx_backend.graph_files import prebuilt_graph  # noqa: E402
from textgen.model.onnx_backend.onnx_model import OnnxModel  # noqa: E402
from textgen.model.tokenizer import LeanTokenizer  # noqa: E402

model_dir, quantize = os.environ["MODEL_ID"], os.environ.get("QUANTIZE", "int8")
LeanTokenizer(model_dir)
mark("the tokenizer's load (tokenizer.json)")
OnnxModel(prebuilt_graph(model_dir, quantize), read_config(model_dir), 1)
mark("the ONNX Runtime session (graph load, optimisation passes, weights pre-packed)")

previous = 0.0
for stage, at in MARKS:
    print(f"{at - previous:.4f}\t{stage}")
    previous = at
print(f"{MARKS[-1][1]:.4f}\ttotal")
