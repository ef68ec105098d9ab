"""bench/ and scripts/ are leaves: what is there is run, never imported. What tests, benchmarks and scripts
share lives in devtools/. The one exception: a test imports the script it tests.

The model's backends keep their libraries to themselves: in textgen/, only textgen/model/torch_backend/
imports torch or transformers, only textgen/model/onnx_backend/ imports onnx or onnxruntime, and neither
backend imports the other (so serving with one never loads the other's runtime).

Every module is parsed with `ast` (nothing is imported or run), imports inside functions included, so
this takes well under a second."""

from __future__ import annotations

import ast
import os

import pytest

from devtools.servers import ROOT

LEAVES = ("bench", "scripts")
SCANNED = ("bench", "scripts", "devtools", "tests", "textgen")
# test file -> the one script it may import (it tests it)
TESTED_SCRIPTS = {
    "tests/test_update_readme_insight.py": "scripts.update_readme_insight",
    "tests/test_deploy_lambda.py": "scripts.deploy_lambda",
}


def project_files() -> list:
    """Relative paths of the .py files under SCANNED and at the top level."""
    files = [name for name in os.listdir(ROOT) if name.endswith(".py")]
    for top in SCANNED:
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__" and not d.startswith("."))
            rel = os.path.relpath(dirpath, ROOT)
            files += [os.path.join(rel, f).replace(os.sep, "/") for f in filenames if f.endswith(".py")]
    return sorted(files)


def leaf_module_names() -> set:
    """The modules in bench/ and scripts/ by their bare names (`run`, `make_model`...): a script run
    as `python bench/x.py` has bench/ on sys.path, so `import run` would reach a sibling."""
    names = set()
    for top in LEAVES:
        for name in os.listdir(os.path.join(ROOT, top)):
            if name.endswith(".py") and name != "__init__.py":
                names.add(name[:-3])
    return names


def imported_modules(source: str, path: str) -> list:
    """(line, module) for every import in `source` (the file at `path`, relative to the root): absolute
    names, relative ones resolved against the file's package; `from a import b` counts as `a.b` (b may
    be a module); `importlib.import_module("...")` and `__import__("...")` with a literal name too."""
    package = os.path.dirname(path).replace("/", ".")
    found = []
    for node in ast.walk(ast.parse(source, filename=path)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".") if package else []
                parts = parts[: len(parts) - (node.level - 1)] if node.level > 1 else parts
                base = ".".join(parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            found.append((node.lineno, base))
            found += [(node.lineno, f"{base}.{alias.name}" if base else alias.name) for alias in node.names]
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def leaf_imports(source: str, path: str, siblings: set) -> list:
    """The imports in `source` that reach into bench/ or scripts/ and are not allowed."""
    allowed = TESTED_SCRIPTS.get(path)
    by_line = {}
    for line, module in imported_modules(source, path):
        top = module.split(".")[0]
        if top in LEAVES:
            if allowed and (module in ("scripts", allowed) or module.startswith(allowed + ".")):
                continue
            by_line.setdefault(line, set()).add(module)
        elif "." not in module and module in siblings:
            by_line.setdefault(line, set()).add(module + " (a module of bench/ or scripts/ by its bare name)")
    bad = []
    for line, modules in sorted(by_line.items()):
        # One message per module named: `from bench.run import A, B` is bench.run, `from bench import run`
        # bench.run (not the package bench too).
        named = sorted(modules - set(LEAVES)) or sorted(modules)
        named = [m for m in named if not any(m.startswith(other + ".") for other in named)]
        bad += [f"{path}:{line} imports {m}" for m in named]
    return bad


def test_nothing_imports_bench_or_scripts():
    files = project_files()
    # The walk must see what it guards (a wrong root would find nothing and pass).
    assert {"bench/run.py", "scripts/make_model.py", "devtools/benchmark.py", "tests/conftest.py"} <= set(files)
    siblings = leaf_module_names()
    bad = []
    for path in files:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            bad += leaf_imports(f.read(), path, siblings)
    assert not bad, "bench/ and scripts/ are not libraries; move what is shared to devtools/:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "path, source",
    [
        ("tests/test_x.py", "from scripts.make_model import make_tiny"),
        ("tests/test_x.py", "import bench.run"),
        ("tests/test_x.py", "from bench import run"),
        ("devtools/x.py", "def f():\n    from bench.run import PROMPTS"),
        ("bench/x.py", "from . import run"),
        ("bench/x.py", "from .run import prepare_model"),
        ("bench/x.py", "import run"),
        ("scripts/x.py", "from make_model import make_tiny"),
        ("tests/test_x.py", "import importlib\nimportlib.import_module('bench.run')"),
        # a test may import its own script only
        ("tests/test_deploy_lambda.py", "from scripts import update_readme_insight"),
        ("tests/test_deploy_lambda.py", "from scripts.make_model import make_tiny"),
    ],
)
def test_the_check_catches(path, source):
    assert leaf_imports(source, path, {"run", "make_model"})


@pytest.mark.parametrize(
    "path, source",
    [
        ("tests/test_deploy_lambda.py", "from scripts import deploy_lambda as dl"),
        ("tests/test_update_readme_insight.py", "from scripts.update_readme_insight import main"),
        ("tests/test_x.py", "from devtools.models import make_tiny\nfrom tests.models import add_chat_template"),
        ("tests/reliability/test_x.py", "from . import helpers"),
        ("bench/x.py", "from devtools.benchmark import PROMPTS\nfrom textgen.settings import Settings"),
    ],
)
def test_the_check_allows(path, source):
    assert not leaf_imports(source, path, {"run", "make_model"})


# backend folder -> the libraries only it may import (within textgen/)
BACKENDS = {
    "textgen/model/torch_backend/": ("torch", "transformers"),
    "textgen/model/onnx_backend/": ("onnx", "onnxruntime"),
}


def _package(folder: str) -> str:
    return folder.rstrip("/").replace("/", ".")


def backend_import_errors(source: str, path: str) -> list:
    """The imports in `source` (a module of textgen/ at `path`) that break the backends' walls: a backend's
    library imported outside its folder, or one backend's package imported by the other."""
    home = next((folder for folder in BACKENDS if path.startswith(folder)), None)
    bad = set()
    for line, module in imported_modules(source, path):
        top = module.split(".")[0]
        for folder, libraries in BACKENDS.items():
            if top in libraries and folder != home:
                bad.add(f"{path}:{line} imports {top}, which only {folder} may import")
            package = _package(folder)
            if home and folder != home and (module == package or module.startswith(package + ".")):
                bad.add(f"{path}:{line} imports {package}: one backend never imports the other")
    return sorted(bad)


def test_each_backend_keeps_its_libraries_and_neither_imports_the_other():
    files = [path for path in project_files() if path.startswith("textgen/")]
    # The walk must see what it guards: both backends' runtimes, and the loader that chooses between them.
    assert {"textgen/model/loader.py", "textgen/model/torch_backend/torch_model.py",
            "textgen/model/onnx_backend/onnx_model.py"} <= set(files)
    bad, seen = [], set()
    for path in files:
        with open(os.path.join(ROOT, path), encoding="utf-8") as f:
            source = f.read()
        bad += backend_import_errors(source, path)
        seen |= {module.split(".")[0] for _, module in imported_modules(source, path)}
    assert {"torch", "transformers", "onnx", "onnxruntime"} <= seen  # the libraries are looked for by their real names
    assert not bad, "a backend's library or package imported where it does not belong:\n" + "\n".join(bad)


@pytest.mark.parametrize(
    "path, source",
    [
        # torch and transformers outside torch_backend/
        ("textgen/model/loader.py", "import torch"),
        ("textgen/model/loader.py", "def f():\n    from transformers import AutoTokenizer"),
        ("textgen/engine/core.py", "import torch.nn.functional as F"),
        ("textgen/model/onnx_backend/onnx_model.py", "def f():\n    import torch"),
        ("textgen/model/kv_cache.py", "import importlib\nimportlib.import_module('transformers')"),
        # onnx and onnxruntime outside onnx_backend/
        ("textgen/model/loader.py", "def f():\n    import onnxruntime as ort"),
        ("textgen/model/config.py", "from onnx import helper"),
        ("textgen/model/torch_backend/hf.py", "import onnx"),
        # one backend importing the other, absolutely or relatively, lazily or not
        ("textgen/model/torch_backend/checkpoint.py", "from ..onnx_backend.onnx_weights import weight_files"),
        ("textgen/model/torch_backend/checkpoint.py", "def f():\n    from .. import onnx_backend"),
        ("textgen/model/onnx_backend/onnx_graph.py", "from textgen.model.torch_backend.layers import Linear"),
        ("textgen/model/onnx_backend/onnx_graph.py", "def f():\n    from ..torch_backend import hf_files"),
    ],
)
def test_the_backend_check_catches(path, source):
    assert backend_import_errors(source, path)


@pytest.mark.parametrize(
    "path, source",
    [
        ("textgen/model/torch_backend/gpt2.py", "import torch\nfrom torch import nn\nfrom ..config import gpt2_shape"),
        ("textgen/model/torch_backend/hf_files.py", "def f():\n    from transformers import AutoTokenizer"),
        ("textgen/model/onnx_backend/onnx_graph.py", "import onnx\nfrom .quantize import BLOCK_SIZE\nfrom ..safetensors import tensors"),
        ("textgen/model/onnx_backend/onnx_model.py", "import onnxruntime as ort\nfrom ..kv_cache import KVCache"),
        # the loader chooses a backend: it may import both packages (lazily), never their libraries
        ("textgen/model/loader.py", "def f():\n    from .torch_backend.torch_model import load_torch_model"),
        ("textgen/model/loader.py", "from .onnx_backend.graph_files import prebuilt_dir"),
        # names that only begin like a library's
        ("textgen/model/loader.py", "import onnx_ir\nimport torchvision_like_name"),
    ],
)
def test_the_backend_check_allows(path, source):
    assert not backend_import_errors(source, path)


# Packages whose docstring is their file map (docs keep none by hand): every module in them is named there.
MAPPED_PACKAGES = ("textgen/engine", "textgen/validation", "textgen/transports/http", "textgen/model", "textgen/model/onnx_backend", "textgen/model/torch_backend")


def unmapped_files(package_dir: str, docstring: str) -> list:
    """The modules (and subpackages, as `name/`) of `package_dir` its docstring does not name."""
    missing = []
    for name in sorted(os.listdir(os.path.join(ROOT, package_dir))):
        full = os.path.join(ROOT, package_dir, name)
        if name.endswith(".py") and name != "__init__.py":
            shown = name
        elif os.path.isfile(os.path.join(full, "__init__.py")):
            shown = name + "/"
        else:
            continue
        if shown not in docstring:
            missing.append(f"{package_dir}/{shown}")
    return missing


@pytest.mark.parametrize("package_dir", MAPPED_PACKAGES)
def test_package_docstring_maps_every_module(package_dir):
    with open(os.path.join(ROOT, package_dir, "__init__.py"), encoding="utf-8") as f:
        docstring = ast.get_docstring(ast.parse(f.read())) or ""
    assert docstring, f"{package_dir}/__init__.py has no docstring"
    assert not unmapped_files(package_dir, docstring), f"not in {package_dir}/__init__.py's file map"


def test_the_file_map_check_catches_a_module_left_out():
    missing = unmapped_files("textgen/model/onnx_backend", "- onnx_model.py: ...\n- onnx_graph.py: ...")
    assert "textgen/model/onnx_backend/quantize.py" in missing
    assert not {"textgen/model/onnx_backend/onnx_model.py", "textgen/model/onnx_backend/onnx_graph.py"} & set(missing)
    assert "textgen/model/torch_backend/" in unmapped_files("textgen/model", "- contract.py: ...")
