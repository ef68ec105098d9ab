"""The body of `POST /detokenize`, as vLLM's server takes it: ``{"tokens": [ids], "model": optional}``.
Pure: no Flask, no torch. The limits that need the tokenizer (at most `max_total_tokens` ids, each in
the vocabulary) are `tokens.PromptTokens.detokenize`'s."""

from __future__ import annotations

from typing import Annotated, Any, List, Optional

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field

from .body import parse_model, whole_number

TokenId = Annotated[int, Field(ge=0), BeforeValidator(whole_number)]  # 5.0 counts as 5, as elsewhere


class DetokenizeRequest(BaseModel):
    """vLLM's DetokenizeRequest. (llama.cpp's server takes the same `tokens` but answers `content`.)"""

    model_config = ConfigDict(extra="forbid", strict=True)

    tokens: List[TokenId] = Field(min_length=1, description="Token ids, each in the model's vocabulary.")
    # One model per server: any name is accepted, as on the /v1 routes.
    model: Optional[str] = None


def validate_detokenize(body: Any) -> List[int]:
    """A decoded JSON body -> its token ids, or a named error (400 not an object, 422 a broken rule)."""
    return parse_model(DetokenizeRequest, body).tokens
