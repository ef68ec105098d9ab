"""Text Generation Inference's request forms -> the one `GenerationRequest` (validation/request.py).

Two body forms are accepted:
- the seed's flat form: ``{"prompt": "...", "max_new_tokens": 20, ...}`` (parameters beside the prompt);
- Text Generation Inference's form: ``{"inputs": "...", "parameters": {...}, "stream": false}``.
Messages use TGI's wording, naming the field and the limit: "`max_new_tokens` must be <= 512. Given: 100000".
"""

from __future__ import annotations

from typing import Any, List, Optional

from pydantic import BaseModel, ConfigDict, Field

from ..settings import Settings
from .body import NonEmpty, OptionalInteger, json_object, parse_model
from .grammar import Grammar
from .messages import invalid
from .request import MAX_SEED, MAX_STOP_SEQUENCES, MAX_TOP_N, FieldNames, GenerationRequest, generation_request

MAX_TOP_N_TOKENS = min(5, MAX_TOP_N)  # TGI's default `--max-top-n-tokens`, within what the engine lists


class Parameters(BaseModel):
    """TGI's `parameters` object. Bounds declared here also feed the OpenAPI schema."""

    # NaN and Infinity are valid JSON for Python's parser, but no valid value for any parameter.
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    max_new_tokens: OptionalInteger = Field(None, gt=0)
    do_sample: Optional[bool] = None
    temperature: Optional[float] = Field(None, gt=0)
    top_k: OptionalInteger = Field(None, gt=0)
    top_p: Optional[float] = Field(None, gt=0, le=1)
    typical_p: Optional[float] = Field(None, gt=0, le=1)
    # Bounded both ways: the penalty divides or multiplies logits, and near 0 (5e-324, found by the
    # schema fuzz) it overflows them to inf and sampling to NaN. 1.0 is off; 1.1-1.3 is typical.
    repetition_penalty: Optional[float] = Field(None, ge=0.01, le=100)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    seed: OptionalInteger = Field(None, ge=0, le=MAX_SEED)
    stop: List[NonEmpty] = Field(default_factory=list, max_length=MAX_STOP_SEQUENCES)
    return_full_text: Optional[bool] = None
    truncate: OptionalInteger = Field(None, gt=0)
    details: bool = Field(False, description="Return `details`: why generation stopped, the seed, every token with its log-probability.")
    decoder_input_details: bool = Field(
        False, description="With `details`: the prompt's tokens and their log-probabilities in `details.prefill` "
        "(streamed: on the last event's details)."
    )
    top_n_tokens: OptionalInteger = Field(
        None, ge=0, le=MAX_TOP_N_TOKENS, description="The most likely tokens at each generated position, with their log-probabilities."
    )
    best_of: OptionalInteger = Field(
        None, gt=0,
        description="Sample this many completions (the prompt prefilled once) and answer with the one whose tokens' "
        "log-probabilities sum highest; the others in `details.best_of_sequences`. Not when streaming.",
    )
    grammar: Optional[Grammar] = Field(
        None,
        description="Structured output: the text is generated to match a JSON schema "
        '(`{"type": "json", "value": <schema>}`) or a regular expression (`{"type": "regex", "value": "..."}`).',
    )
    # Sent by TGI clients (huggingface_hub's InferenceClient) with these neutral values; anything else is
    # a feature this server does not have, and saying so beats silently ignoring it. The schema shows
    # the one accepted value; the check (with its own message) is `_reject_unsupported`.
    watermark: bool = Field(False, json_schema_extra={"const": False})
    adapter_id: Optional[str] = Field(None, json_schema_extra={"anyOf": [{"type": "null"}]})


class TGIRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    inputs: NonEmpty
    parameters: Parameters = Field(default_factory=Parameters)
    stream: bool = False


class PromptRequest(Parameters):
    """The seed app's form: `{"prompt": "...", "max_new_tokens": 20}`, parameters beside the prompt."""

    prompt: NonEmpty
    stream: bool = False


def validate_generate(body: Any, settings: Settings, stream: Optional[bool] = None) -> GenerationRequest:
    """Turn a decoded JSON body into a `GenerationRequest` (defaults applied), or raise a named error.

    `stream` forces streaming on (the /generate_stream route) regardless of the body's own flag.
    """
    body = json_object(body)
    if "inputs" in body and "prompt" in body:
        raise invalid("inputs_and_prompt")
    if "prompt" in body:
        parsed = parse_model(PromptRequest, body)
        prompt, params = parsed.prompt, parsed
    else:
        parsed = parse_model(TGIRequest, body)
        prompt, params = parsed.inputs, parsed.parameters
    return tgi_request(prompt, params, settings, parsed.stream if stream is None else stream,
                       FieldNames(prompt="prompt" if "prompt" in body else "inputs"))


def tgi_request(prompt: str, p: Parameters, settings: Settings, stream: bool, fields: FieldNames) -> GenerationRequest:
    """TGI's parameters, field by field, as the protocol-neutral request."""
    _reject_unsupported(p)
    return generation_request(
        settings,
        fields,
        prompt=prompt,
        stream=stream,
        max_new_tokens=p.max_new_tokens,
        do_sample=p.do_sample,
        temperature=p.temperature,
        top_k=p.top_k,
        top_p=p.top_p,
        typical_p=p.typical_p,
        repetition_penalty=p.repetition_penalty,
        frequency_penalty=p.frequency_penalty,
        seed=p.seed,
        stop=p.stop,
        return_full_text=bool(p.return_full_text),
        truncate=p.truncate,
        details=p.details,
        decoder_input_details=p.decoder_input_details,
        top_n_tokens=p.top_n_tokens or 0,
        grammar=p.grammar,
        n=p.best_of or 1,
        pick_best=True,  # TGI's `best_of`: the likeliest of the n is the answer
    )


def _reject_unsupported(p: Parameters) -> None:
    if p.watermark:
        raise invalid("unsupported", "watermark", name="watermark")
    if p.adapter_id is not None:
        raise invalid("unsupported", "adapter_id", name="adapter_id")
