"""Every setting of the service in one dataclass, read from the environment once at startup.

Each field's environment variable is its name in upper case (``max_batch_size`` -> ``MAX_BATCH_SIZE``).
Code below this module receives a ``Settings`` object; nothing else reads ``os.environ``.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field, fields
from typing import Any, Mapping, Optional, get_type_hints


@dataclass(frozen=True)
class Settings:
    # Hub id or a local directory written by `save_pretrained`; DistilGPT2 is the product's default model.
    model_id: str = "distilbert/distilgpt2"
    # A .gguf file inside `model_id` (a directory); transformers dequantises it, so it is done once and cached.
    model_gguf_file: Optional[str] = None
    # Where built artefacts are cached (ONNX graphs, GGUF conversions; a directory each per checkpoint and
    # quantization, and a rebuild removes the one it replaces); must be writable (/tmp on Lambda).
    cache_dir: str = field(default_factory=lambda: os.path.join(os.path.expanduser("~"), ".cache", "textgen"))

    # Longest prompt accepted, in tokens; None = MAX_TOTAL_TOKENS - 1 (TGI's default).
    max_input_tokens: Optional[int] = None
    # Prompt + generated tokens; None = the model's context (1024 for DistilGPT2), never more than that.
    max_total_tokens: Optional[int] = None
    # Upper bound a client may ask for: keeps one request from holding a batch slot for minutes.
    max_new_tokens_limit: int = 512
    # What a request gets when it does not say; the text-generation pipeline's DistilGPT2 default is 50.
    default_max_new_tokens: int = 50

    # Defaults of the seed's `pipeline("text-generation")` for DistilGPT2: sampling with top_k=50.
    # Greedy decoding of a small model repeats itself; a client sends `"do_sample": false` to get it.
    default_do_sample: bool = True
    default_temperature: float = 1.0
    default_top_k: int = 50
    default_top_p: float = 1.0
    default_repetition_penalty: float = 1.0

    # Requests decoded together in one forward pass; bounds the KV cache (memory) of the engine.
    max_batch_size: int = 16
    # KV-cache budget in tokens (TGI's MAX_BATCH_TOTAL_TOKENS): a waiting request joins the running batch
    # only while the rows running and it, each counted as prompt + max_new_tokens (times `n`), fit; the
    # rest wait in the queue as for a full batch, and one request larger than the whole budget is a 422
    # (MAX_TOTAL_TOKENS is capped at it). None = derived at start and logged: the memory the process may
    # use (cgroup v2 memory.max or v1 memory.limit_in_bytes; physical RAM if unlimited), minus what the
    # process holds once the model is loaded (weights, runtime), minus the prefix cache's
    # PREFIX_CACHE_TOKENS (counted apart: they are copied into a row's slot, which counts whole), minus a
    # margin of a quarter of the limit (activations, the gunicorn master, allocator slack), divided by the
    # KV bytes a token (layers x 2 x kv_heads x head_dim x 4: SmolLM2-135M 46,080, DistilGPT2 36,864).
    # SmolLM2 int8 in a 1 GiB container: 9,324 (docs/performance.md, KV-cache budget). /info shows it.
    max_batch_total_tokens: Optional[int] = None
    # Admitted requests (running + waiting); beyond it clients get an immediate 429 instead of a long wait.
    max_concurrent_requests: int = 32
    # Completions one request may ask for (OpenAI's `n`, TGI's `best_of`). Each is a row of the batch
    # and counts against MAX_CONCURRENT_REQUESTS; the prompt is prefilled once. Never more than
    # MAX_BATCH_SIZE or MAX_CONCURRENT_REQUESTS (`best_of_limit`).
    max_best_of: int = 4
    # Seconds a request may wait for a batch slot before it is answered 503 rather than left hanging.
    queue_timeout: float = 60.0

    # "auto": ONNX Runtime when the architecture has a native definition (GPT-2, Llama, Qwen2), else
    # transformers' AutoModelForCausalLM; "onnx", "torch" (the native plain-torch modules, the readable
    # reference) or "transformers" force one (onnx and torch fail on others). "native" still means
    # "torch": its name from before the ONNX backend, kept so that existing configurations keep working.
    # torch and transformers need requirements-torch.txt (docs/models.md, Backends).
    model_backend: str = "auto"
    # "int8": 8-bit weights (onnx: blocks of 32, one scale each; torch: one scale per output channel), ~4x
    # less memory for the weights and 2-4x faster decoding on a CPU, at under 1% perplexity (docs/models.md,
    # int8); the Docker image is built with it. "int4" (onnx backend only): the MLPs' weights in 4 bits
    # (blocks of 32 with zero points), attention, embedding and LM head in 8: a Llama-3.2-1B shape's weights
    # in ~1.0 GB instead of ~1.4, at +8% perplexity on SmolLM2 (docs/models.md, int4 weights). "none"
    # keeps the checkpoint's float32 numbers.
    quantize: str = "none"
    # Prompt tokens prefilled per engine step: a long prompt is cut into chunks between decode steps,
    # so the streams already running pause for one chunk at a time, never for a whole long prompt.
    prefill_chunk_tokens: int = 256
    # Prompt tokens whose keys and values are kept for later prompts that begin the same way (a system
    # prompt, few-shot examples): those skip prefilling the longest cached prefix, in blocks of 16 tokens,
    # least recently used out first; 0 = off (engine/prefix_cache.py). Memory: tokens x layers x 2 x
    # kv_heads x head_dim x 4 bytes, DistilGPT2's 36,864 bytes a token: 2048 tokens = 72 MiB, beside a
    # worst-case KV cache of 720 MiB at the defaults (16 rows x 1,280 positions); it holds two of the
    # longest prompts (1,023 tokens) or sixteen 128-token ones. A 900-token prefix then costs a copy of a
    # few ms instead of its prefill (docs/performance.md, Prefix cache).
    prefix_cache_tokens: int = 2048
    # torch backend: float32 decode matmuls as (W @ x.T).T with MKL-friendly widths, 1.3-2x faster steps here
    # (docs/performance.md); false = plain F.linear.
    skinny_matmul: bool = True
    # Intra-op threads of the model runtime (ONNX Runtime or torch); None = the CPUs this process may
    # use (affinity and cgroup v1/v2 quota aware: `--cpus 0.1` gives 1).
    threads: Optional[int] = None
    # ONNX Runtime's pool threads spin-wait between a step's kernels instead of sleeping, and sleep as soon
    # as the step returns. None (unset): on, unless a CPU quota is smaller than the threads (a spinning
    # thread would spend the quota on waiting). Measured in docs/performance.md ("Spinning within a step").
    intra_op_spinning: Optional[bool] = None
    # Largest request body in bytes (413 beyond it); prompts are short, 1 MB is generous.
    max_request_bytes: int = 1_000_000
    # Largest grammar (a JSON schema, as compact JSON, or a regex) in bytes (422/400 beyond it): compiling
    # takes the request thread 1-2 ms per KB of schema here (32 ms for a 32 KB object of 660 properties,
    # 38 ms for a 20 KB anyOf of 200 objects), and a schema of a few KB is already a large one.
    max_grammar_bytes: int = 32_768
    # HTTP port (Render and most PaaS set $PORT); read by gunicorn.conf.py and the dev server.
    port: int = 5000
    # Python logging level for the service's own loggers.
    log_level: str = "INFO"
    # On SIGTERM: seconds during which /ready answers 503 while the worker still serves everything, in
    # flight or newly arriving, so that load balancers polling /ready stop sending first; then it stops
    # accepting and exits once idle (gunicorn_worker.py).
    drain_seconds: float = 5.0
    # On SIGTERM: seconds until the worker is killed whatever is still running (gunicorn's graceful
    # timeout), the drain included; at least DRAIN_SECONDS + the longest generation the limits allow.
    graceful_timeout: int = 60

    # Bearer keys for the generation routes, comma-separated (several: rotate one without downtime);
    # unset = open. /health, /info, /metrics, /openapi.json, /docs and the playground page stay open.
    api_key: Optional[str] = None
    # Browser origins allowed to call the API (CORS), comma-separated, or "*"; unset = no CORS headers.
    cors_allow_origins: Optional[str] = None
    # The name /v1/models and OpenAI responses give the model; unset = the last part of MODEL_ID.
    served_model_name: Optional[str] = None

    @property
    def api_keys(self) -> tuple:
        return tuple(k.strip() for k in (self.api_key or "").split(",") if k.strip())

    @property
    def cors_origins(self) -> tuple:
        return tuple(o.strip() for o in (self.cors_allow_origins or "").split(",") if o.strip())

    @property
    def best_of_limit(self) -> int:
        """The most completions one request may ask for: what MAX_BEST_OF allows, if the batch and the
        admission limit hold that many rows."""
        return max(1, min(self.max_best_of, self.max_batch_size, self.max_concurrent_requests))

    @property
    def model_name(self) -> str:
        return self.served_model_name or self.model_id.rstrip("/").split("/")[-1]

    @classmethod
    def from_env(cls, environ: Optional[Mapping[str, str]] = None, **overrides: Any) -> "Settings":
        """Build settings from environment variables (upper-case field names), then apply overrides."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw = environ.get(f.name.upper())
            if raw is not None and raw.strip() != "":
                values[f.name] = _parse(f.name, raw.strip(), hints[f.name])
        values.update(overrides)
        return cls(**values)

    def __post_init__(self) -> None:
        for name, allowed in (("model_backend", ("auto", "onnx", "torch", "native", "transformers")), ("quantize", ("none", "int8", "int4"))):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name.upper()}={getattr(self, name)!r}: expected one of {', '.join(allowed)}")
        if self.quantize == "int4" and self.model_backend not in ("auto", "onnx"):
            raise ValueError(f"QUANTIZE=int4 is served by the onnx backend only, not MODEL_BACKEND={self.model_backend}")
        if self.prefill_chunk_tokens < 1:
            raise ValueError("PREFILL_CHUNK_TOKENS must be at least 1")
        if self.max_best_of < 1:
            raise ValueError("MAX_BEST_OF must be at least 1")
        if self.max_batch_total_tokens is not None and self.max_batch_total_tokens < 1:
            raise ValueError("MAX_BATCH_TOTAL_TOKENS must be at least 1 (unset: derived from the memory limit)")
        if self.prefix_cache_tokens < 0:
            raise ValueError("PREFIX_CACHE_TOKENS must be 0 (off) or more")

    def replace(self, **changes: Any) -> "Settings":
        return dataclasses.replace(self, **changes)


def _parse(name: str, raw: str, hint: Any) -> Any:
    target = next((t for t in getattr(hint, "__args__", (hint,)) if t is not type(None)), str)
    try:
        if target is bool:
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        return target(raw)
    except ValueError:
        raise ValueError(f"environment variable {name.upper()}={raw!r} is not a valid {target.__name__}") from None
