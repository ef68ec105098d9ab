"""The torch backends behind the numpy contract (`contract.CausalLM`): `torch`, the native GPT-2 and
Llama modules (gpt2.py, llama.py), and `transformers`, AutoModelForCausalLM wrapped by hf.py.

Both modules take torch tensors (tokens, positions, the slots' first index, the positions whose
logits are wanted, and `hidden`: the final-normed hidden states there instead, for embeddings);
`TorchModel` turns the engine's numpy arrays into those with `torch.from_numpy` (no copies) and hands
the logits (or hidden states) back as numpy. torch's thread pools are sized here, since only
these backends use them.
"""

from __future__ import annotations

from typing import Optional, Set

import numpy as np
import torch

from ...settings import Settings
from ..config import native_family
from ..kv_cache import KVCache
from ..threads import available_cpus
from .checkpoint import Checkpoint


class TorchModel:
    """A native or transformers module as a `CausalLM`."""

    backend: str  # "torch" or "transformers"
    dtype_name: str
    n_layers: int
    n_kv_heads: int
    head_dim: int
    context: int
    vocab_size: int
    eos_token_ids: Set[int]
    packs_tokens = False  # right-padded rows: a prompt chunk beside decode rows would pad them all
    min_width = 1
    threads: int  # torch's intra-op threads (what /info reports)
    width: int  # the hidden states' width (what embeddings have)

    def __init__(self, module: torch.nn.Module, backend: str, dtype_name: str, eos_token_ids: Set[int], threads: int):
        self.module = module
        self.backend, self.dtype_name, self.threads = backend, dtype_name, threads
        self.eos_token_ids = set(eos_token_ids)
        self.n_layers, self.n_kv_heads, self.head_dim = module.n_layers, module.n_kv_heads, module.head_dim
        self.context, self.vocab_size = module.context, module.vocab_size
        self.width = module.width

    def forward(
        self,
        tokens: np.ndarray,
        starts: np.ndarray,
        counts: np.ndarray,
        cache: KVCache,
        first_slot: int,
        want_logits: bool,
        logit_index: Optional[np.ndarray] = None,
    ) -> Optional[np.ndarray]:
        # Padding runs through the model like real tokens, at the positions after the row's real ones:
        # it writes there, past the row's cached length, and the row's next tokens overwrite it before
        # anything reads it. A row with count 0 thus only writes at its start and beyond.
        with torch.inference_mode():
            positions = torch.from_numpy(starts)[:, None] + torch.arange(tokens.shape[1])
            last = torch.from_numpy(np.maximum(counts - 1, 0)) if want_logits else None
            if want_logits and logit_index is not None:  # (row, position) pairs, as the contract's flat index
                rows, where = np.divmod(np.asarray(logit_index, dtype=np.int64), tokens.shape[1])
                last = (torch.from_numpy(rows), torch.from_numpy(where))
            logits = self.module(torch.from_numpy(tokens), positions, cache, first_slot, last)
        return None if logits is None else logits.float().numpy()

    def hidden_states(
        self, tokens: np.ndarray, starts: np.ndarray, counts: np.ndarray, cache: KVCache, first_slot: int, index: np.ndarray,
    ) -> np.ndarray:
        """The final-normed hidden states [len(index), width] at flat positions `index` (row * width + s)
        of a pass like `forward`'s (which writes the cache the same way); no LM head work."""
        with torch.inference_mode():
            positions = torch.from_numpy(starts)[:, None] + torch.arange(tokens.shape[1])
            rows, where = np.divmod(np.asarray(index, dtype=np.int64), tokens.shape[1])
            picked = (torch.from_numpy(rows), torch.from_numpy(where))
            return self.module(torch.from_numpy(tokens), positions, cache, first_slot, picked, hidden=True).float().numpy()


def load_torch_model(backend: str, config: dict, source: str, settings: Settings, eos_token_ids: Set[int]) -> TorchModel:
    """The `torch` (native module) or `transformers` backend for a checkpoint directory, float32 or int8."""
    if settings.quantize == "int8":
        from .int8 import int8_available

        if not int8_available():
            raise ValueError("QUANTIZE=int8: this torch build has no quantized engine (x86/fbgemm/qnnpack)")
    threads = configure_threads(settings.threads)
    with torch.inference_mode():
        if backend == "torch":
            module = _native_module(config, source, settings)
        else:
            module = _transformers_module(source, settings)
    dtype_name = "int8" if settings.quantize == "int8" else "float32"
    return TorchModel(module, backend, dtype_name, eos_token_ids, threads)


def configure_threads(threads: Optional[int]) -> int:
    """One engine thread drives torch: give it every usable CPU for intra-op work and no inter-op pool.

    Request threads never run torch, so more intra-op threads than CPUs would only oversubscribe.
    (Measured on this 2-core machine over HTTP: one thread instead of two halved float32's tokens/s at
    8 clients, 270 -> 132, and left int8's level, 405 -> 413.)
    """
    threads = threads or available_cpus()
    torch.set_num_threads(threads)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (or already used) in this process: keep what is there
        pass
    return threads


def _native_module(config: dict, source: str, settings: Settings) -> torch.nn.Module:
    from .gpt2 import GPT2
    from .llama import Llama

    module_class = {"gpt2": GPT2, "llama": Llama}[native_family(config)]
    module = module_class(config, Checkpoint(source), quantize=settings.quantize, skinny=settings.skinny_matmul)
    module.eval()
    return module


def _transformers_module(source: str, settings: Settings) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    from .hf import TransformersModel

    model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, attn_implementation="sdpa")
    model.eval()  # no dropout
    model.requires_grad_(False)  # inference only: no autograd bookkeeping
    if settings.quantize == "int8":
        _swap_linears(model, "int8")
    elif settings.skinny_matmul:
        _swap_linears(model, "skinny")
    return TransformersModel(model)


def _swap_linears(model: torch.nn.Module, kind: str) -> int:
    """Replace every nn.Linear and GPT-2 Conv1D by an int8 or skinny float32 layer (a module swap)."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    from .int8 import Int8Linear
    from .skinny import SkinnyLinear

    replaced = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, nn.Linear):
                weight = child.weight
            elif isinstance(child, Conv1D):
                weight = child.weight.detach().t().contiguous()  # Conv1D stores [in, out]
            else:
                continue
            bias = None if child.bias is None else child.bias.detach()
            layer = Int8Linear(weight.detach(), bias) if kind == "int8" else SkinnyLinear(weight, child.bias)
            setattr(parent, name, layer)
            replaced += 1
    return replaced
