"""A child process in which torch and transformers cannot be imported or found, as in the service image
(which installs requirements-serve.txt alone): a `sitecustomize` on PYTHONPATH that `site` loads at
start-up puts a finder first on sys.meta_path that refuses them."""

import os

from devtools.servers import ROOT

NO_TORCH = '''
import sys

class _Absent:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "transformers"):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
        return None

sys.meta_path.insert(0, _Absent())
'''


def hidden_torch_env(tmp_path, model_dir: str, **extra: str) -> dict:
    """The environment of a process run from the project root with MODEL_ID=model_dir, offline, and
    torch and transformers hidden."""
    hide = tmp_path / "no_torch"
    hide.mkdir(exist_ok=True)
    (hide / "sitecustomize.py").write_text(NO_TORCH)
    return {**os.environ, "PYTHONPATH": f"{hide}{os.pathsep}{ROOT}", "MODEL_ID": model_dir, "HF_HUB_OFFLINE": "1", **extra}
