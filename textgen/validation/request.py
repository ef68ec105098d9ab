"""The protocol-neutral request: what every protocol's body becomes, and the rules it must keep.

Each protocol's module (`tgi`, `openai_forms`) parses its own body with its own pydantic model and maps
it, field by field, into one call of `generation_request`: the server's defaults are applied and every
limit that needs no tokenizer is checked there, once, for all of them. The limits counted in tokens are
`tokens.PromptTokens`'s. The request carries the client's names for its fields (`FieldNames`), so that a
rule broken later (the token budget, the grammar's compilation) names them too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Optional, Union

from ..settings import Settings
from .grammar import GrammarForm, GrammarSpec, grammar_spec
from .messages import invalid

MAX_STOP_SEQUENCES = 4
MAX_SEED = 2**64 - 1
# The most likely alternatives the engine lists per token (engine/sampling.py computes at most these).
# Each protocol publishes its own bound within it: TGI's `top_n_tokens` 5 (its `--max-top-n-tokens`
# default), OpenAI's completions `logprobs` 5 and chat `top_logprobs` 20.
MAX_TOP_N = 20


@dataclass(frozen=True)
class FieldNames:
    """What the client called the request's fields, so that messages name its own."""

    prompt: str = "inputs"
    max_new_tokens: str = "max_new_tokens"
    grammar: str = "grammar"
    n: str = "best_of"
    top_n: str = "top_n_tokens"


TGI_FIELDS = FieldNames()


@dataclass(frozen=True)
class GenerationRequest:
    """A request with every default applied and every limit that needs no tokenizer checked (build it
    with `generation_request`; constructing it directly skips the rules)."""

    prompt: str
    max_new_tokens: int
    do_sample: bool
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filtering
    top_p: float = 1.0  # 1.0: no nucleus filtering
    typical_p: float = 1.0  # 1.0: no typical filtering
    repetition_penalty: float = 1.0  # 1.0: none
    frequency_penalty: float = 0.0  # 0.0: none
    seed: Optional[int] = None  # None: the engine draws one (and reports it in details)
    stop: tuple = ()
    return_full_text: bool = False
    truncate: Optional[int] = None  # keep only the last N prompt tokens
    details: bool = False  # the answer lists every generated token with its log-probability
    stream: bool = False
    grammar: Optional[GrammarSpec] = None  # structured output: the tokens are constrained to it
    top_n_tokens: int = 0  # each generated token's most likely alternatives (with `details` or a stream)
    n: int = 1  # completions of the prompt, each a row of the batch (OpenAI's `n`, TGI's `best_of`)
    pick_best: bool = False  # TGI's `best_of`: answer with the likeliest of the n, the others in details
    decoder_input_details: bool = False  # the prompt's tokens with their log-probabilities (with `details`)
    fields: FieldNames = TGI_FIELDS  # the client's names, for the messages of rules checked later

    @property
    def scores_prompt(self) -> bool:
        """The answer lists the prompt's tokens with their log-probabilities (every position's logits
        are computed: no prefix is taken from the prefix cache)."""
        return self.decoder_input_details and self.details


def generation_request(
    settings: Settings,
    fields: FieldNames,
    *,
    prompt: str,
    stream: bool,
    max_new_tokens: Optional[int] = None,
    do_sample: Optional[bool] = None,
    temperature: Optional[float] = None,
    top_k: Optional[int] = None,
    top_p: Optional[float] = None,
    typical_p: Optional[float] = None,
    repetition_penalty: Optional[float] = None,
    frequency_penalty: Optional[float] = None,
    seed: Optional[int] = None,
    stop: Iterable[str] = (),
    return_full_text: bool = False,
    truncate: Optional[int] = None,
    details: bool = False,
    decoder_input_details: bool = False,
    top_n_tokens: int = 0,
    grammar: Union[GrammarForm, GrammarSpec, None] = None,
    n: int = 1,
    pick_best: bool = False,
) -> GenerationRequest:
    """The one way a protocol's parsed body becomes a `GenerationRequest`: None means the server's
    default; a broken rule raises a ValidationError naming the client's `fields`. `pick_best`: `n` is
    TGI's `best_of` (answer with the likeliest of the n; sampled, never streamed). `grammar`: the
    client's form, or a `GrammarSpec` the server wrote (tool calls: `ToolUse.grammar`)."""
    if not prompt:
        raise invalid("string_too_short", fields.prompt, name=fields.prompt)
    if not _is_text(prompt):  # JSON's \ud800 escapes parse, but no tokenizer takes a lone surrogate
        raise invalid("string_unicode", fields.prompt, name=fields.prompt)
    max_new_tokens = _default(max_new_tokens, settings.default_max_new_tokens)
    if max_new_tokens > settings.max_new_tokens_limit:
        name = fields.max_new_tokens
        raise invalid("less_than_equal", name, name=name, limit=settings.max_new_tokens_limit, given=max_new_tokens)
    stop = tuple(stop)
    _check_stop(stop)
    if seed is not None and seed > MAX_SEED:
        raise invalid("less_than_equal", "seed", name="seed", limit=MAX_SEED, given=seed)
    if seed is not None and seed < 0:
        raise invalid("greater_than_equal", "seed", name="seed", limit=0, given=seed)
    spec = grammar if grammar is None or isinstance(grammar, GrammarSpec) else grammar_spec(
        grammar, settings.max_grammar_bytes, fields.grammar
    )
    _check_completions(n, pick_best, stream, settings, fields)

    # TGI's rule: asking for a sampling parameter means sampling, unless do_sample is explicitly false.
    warpers_given = any(v is not None for v in (temperature, top_k, top_p, typical_p))
    do_sample = do_sample if do_sample is not None else (warpers_given or settings.default_do_sample)
    if pick_best and n > 1 and not do_sample:  # TGI's rule and words: greedy completions would all be the same
        raise invalid("best_of_greedy", fields.n)
    if not 0 <= top_n_tokens <= MAX_TOP_N:
        raise invalid("less_than_equal", fields.top_n, name=fields.top_n, limit=MAX_TOP_N, given=top_n_tokens)
    sampling = {}
    if do_sample:
        sampling = dict(
            temperature=_default(temperature, settings.default_temperature),
            top_k=_default(top_k, settings.default_top_k),
            top_p=_default(top_p, settings.default_top_p),
            typical_p=_default(typical_p, 1.0),
        )
    return GenerationRequest(
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        do_sample=do_sample,
        repetition_penalty=_default(repetition_penalty, settings.default_repetition_penalty),
        frequency_penalty=_default(frequency_penalty, 0.0),
        seed=seed,
        stop=stop,
        return_full_text=return_full_text,
        truncate=truncate,
        details=details,
        stream=stream,
        grammar=spec,
        top_n_tokens=top_n_tokens,
        decoder_input_details=decoder_input_details,
        n=n,
        pick_best=pick_best and n > 1,
        fields=fields,
        **sampling,
    )


def _check_stop(stop: tuple) -> None:
    if len(stop) > MAX_STOP_SEQUENCES:
        raise invalid("too_long:stop", "stop", limit=MAX_STOP_SEQUENCES, count=len(stop))
    if any(s == "" for s in stop):
        raise invalid("string_too_short:stop", "stop")


def _check_completions(n: int, pick_best: bool, stream: bool, settings: Settings, fields: FieldNames) -> None:
    """`n` completions: within the batch's limit; TGI's `best_of` (pick the best) never streamed."""
    if pick_best:
        if not 0 < n <= settings.best_of_limit:
            raise invalid("best_of_limit", fields.n, limit=settings.best_of_limit, given=n)
        if n > 1 and stream:
            raise invalid("best_of_stream", fields.n)
    elif n < 1:
        raise invalid("greater_than_equal", fields.n, name=fields.n, limit=1, given=n)
    elif n > settings.best_of_limit:
        raise invalid("less_than_equal", fields.n, name=fields.n, limit=settings.best_of_limit, given=n)


def _is_text(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _default(value, default):
    return default if value is None else value


__all__ = [
    "MAX_SEED", "MAX_STOP_SEQUENCES", "MAX_TOP_N", "FieldNames", "TGI_FIELDS", "GenerationRequest",
    "generation_request",
]
