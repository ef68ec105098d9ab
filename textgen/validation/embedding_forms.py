"""Embedding request forms: OpenAI's /v1/embeddings, Ollama's /api/embed and its legacy /api/embeddings,
and their inputs as token ids within the limits. Pure like `validation`: no Flask, no engine.

Limits: at most MAX_INPUTS inputs a request (OpenAI's own bound); each input at least one token and at
most the server's MAX_INPUT_TOKENS. An input past it is refused (OpenAI; Ollama's `truncate: false`), or,
Ollama's default, cut to its first MAX_INPUT_TOKENS tokens (to `options.num_ctx` if lower), as Ollama
cuts an input to its context. `dimensions` is accepted only as the model's width: the vectors are the
hidden states' mean, and a shorter prefix of them means nothing here.
"""

from __future__ import annotations

from typing import Annotated, Any, List, Literal, Optional, Sequence, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from ..errors import ValidationError
from .body import NonEmpty, OptionalInteger, parse_model, whole_number
from .ollama_forms import Options

MAX_INPUTS = 2048  # inputs in one request (OpenAI's bound)

TokenId = Annotated[int, Field(ge=0), BeforeValidator(whole_number)]  # 5.0 is an integer, as JSON Schema says
Texts = Annotated[List[NonEmpty], Field(min_length=1, max_length=MAX_INPUTS)]
Ids = Annotated[List[TokenId], Field(min_length=1)]
IdLists = Annotated[List[Ids], Field(min_length=1, max_length=MAX_INPUTS)]


class OpenAIEmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    input: Union[NonEmpty, Texts, Ids, IdLists] = Field(
        description=f"A text, a list of up to {MAX_INPUTS} texts, a list of token ids, or a list of such lists."
    )
    # One model per server: any name is accepted, as on the other /v1 routes.
    model: Optional[str] = None
    encoding_format: Literal["float", "base64"] = Field(
        "float", description="base64: each vector's float32 little-endian bytes (the SDK's default)."
    )
    dimensions: OptionalInteger = Field(None, gt=0, description="Accepted only as the model's width.")
    user: Optional[str] = Field(None, description="Accepted, unused.")


class OllamaEmbedRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str = Field(min_length=1, description="The served model's name (with or without `:latest`).")
    input: Union[str, Annotated[List[NonEmpty], Field(max_length=MAX_INPUTS)]] = Field(
        "", description='A text or a list of texts; "" or [] only loads the model (no vectors).'
    )
    truncate: bool = Field(True, description="Cut an input past the context to it; false: such an input is a 400.")
    options: Optional[Options] = Field(None, description="`num_ctx` bounds the truncation; the rest is accepted, unused.")
    keep_alive: Union[str, float, int, None] = Field(None, description="Accepted, ignored: the model stays loaded.")
    dimensions: OptionalInteger = Field(None, gt=0, description="Accepted only as the model's width.")


class OllamaEmbeddingsRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str = Field(min_length=1, description="The served model's name (with or without `:latest`).")
    prompt: str = Field("", description='The text; "" only loads the model (an empty vector).')
    options: Optional[Options] = Field(None, description="Accepted, unused.")
    keep_alive: Union[str, float, int, None] = Field(None, description="Accepted, ignored: the model stays loaded.")


def openai_request(body: Any) -> OpenAIEmbeddingRequest:
    return parse_model(OpenAIEmbeddingRequest, body)


def ollama_embed_request(body: Any) -> OllamaEmbedRequest:
    return parse_model(OllamaEmbedRequest, body)


def ollama_embeddings_request(body: Any) -> OllamaEmbeddingsRequest:
    return parse_model(OllamaEmbeddingsRequest, body)


def check_dimensions(dimensions: Optional[int], width: Optional[int]) -> None:
    if dimensions is not None and width is not None and dimensions != width:
        raise ValidationError(
            f"`dimensions` must be {width} (the model's hidden size: vectors are not shortened). Given: {dimensions}",
            "dimensions",
        )


def as_list(value: Union[str, Sequence[Any]]) -> list:
    """One input or a list of them -> a list of inputs (a text, or a list of token ids)."""
    if isinstance(value, str) or (value and isinstance(value[0], int)):
        return [value]
    return list(value)


def input_ids(
    prompts, inputs: Sequence[Union[str, Sequence[int]]], max_tokens: int, truncate: bool, field: str = "input",
) -> List[List[int]]:
    """Each input as token ids (`prompts`: the server's `PromptTokens`): texts tokenized, ids checked
    against the vocabulary; none empty, none past `max_tokens` unless `truncate` (then cut to it)."""
    out = []
    for index, item in enumerate(inputs):
        if isinstance(item, str):
            ids = prompts.encode(item)
        else:
            ids = list(item)
            bad = next((i for i in ids if i >= prompts.vocab_size), None)
            if bad is not None:
                raise ValidationError(f"`{field}` token ids must be < {prompts.vocab_size} (the vocabulary size). Given: {bad}", field)
        where = f" (input {index})" if len(inputs) > 1 else ""
        if not ids:
            raise ValidationError(f"`{field}` cannot be empty{where}: it has no tokens", field)
        if len(ids) > max_tokens:
            if not truncate:
                raise ValidationError(f"`{field}` must have at most {max_tokens} tokens{where}. Given: {len(ids)}", field)
            ids = ids[:max_tokens]
        out.append(ids)
    return out
