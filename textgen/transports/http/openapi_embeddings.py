"""The embedding routes in the OpenAPI document (openapi.py assembles it): OpenAI's /v1/embeddings, Ollama's
/api/embed and /api/embeddings. Request bodies are the forms the routes validate with
(`validation.embedding_forms`); `bound` writes this server's limits into them (token ids below the
vocabulary size, at most MAX_INPUT_TOKENS of them an input, `dimensions` only the model's width).
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional, Union

from pydantic import BaseModel

from ...validation.embedding_forms import OllamaEmbeddingsRequest, OllamaEmbedRequest, OpenAIEmbeddingRequest


class Embedding(BaseModel):
    object: Literal["embedding"]
    index: int
    embedding: Union[List[float], str]  # str: base64 of the float32 values, little-endian


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(BaseModel):
    object: Literal["list"]
    data: List[Embedding]
    model: str
    usage: EmbeddingUsage


class OllamaEmbedAnswer(BaseModel):
    model: str
    embeddings: List[List[float]]
    total_duration: int
    load_duration: int
    prompt_eval_count: int


class OllamaEmbeddingsAnswer(BaseModel):
    embedding: List[float]


MODELS = [OpenAIEmbeddingRequest, OllamaEmbedRequest, OllamaEmbeddingsRequest, EmbeddingList, OllamaEmbedAnswer,
          OllamaEmbeddingsAnswer]

_STATUSES = {
    "400": "Not JSON, or a field breaks a rule: an empty input, one past MAX_INPUT_TOKENS (OpenAI's route; Ollama's "
           "with `truncate: false`), `dimensions` other than the model's width; the message names it",
    "401": "API_KEY is set and the request has no valid bearer key",
    "413": "Body larger than MAX_REQUEST_BYTES",
    "429": "MAX_CONCURRENT_REQUESTS embedding jobs already wait; retry after Retry-After seconds",
    "500": "The embedding pass failed (details in the server log)",
    "501": "The model serves no embeddings (an ONNX graph prebuilt before they existed)",
    "503": "Model not ready",
}


def bound(schemas: Dict[str, Any], max_input_tokens: int, vocab_size: Optional[int], width: Optional[int]) -> None:
    """This server's limits in the request schemas (in place)."""
    if width is not None:
        for name in ("OpenAIEmbeddingRequest", "OllamaEmbedRequest"):
            dimensions = next(v for v in schemas[name]["properties"]["dimensions"]["anyOf"] if v.get("type") == "integer")
            dimensions.pop("exclusiveMinimum", None)
            dimensions["minimum"] = dimensions["maximum"] = width
    for form in schemas["OpenAIEmbeddingRequest"]["properties"]["input"]["anyOf"]:
        ids = form["items"] if form.get("items", {}).get("type") == "array" else form  # a list of lists: each list
        if ids.get("items", {}).get("type") == "integer":
            ids["maxItems"] = max_input_tokens
            if vocab_size is not None:
                ids["items"]["maximum"] = vocab_size - 1


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _post(summary: str, body: str, answer: str, error_schema: str, statuses: Dict[str, str]) -> dict:
    return {"post": {
        "summary": summary,
        "security": [{}, {"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
        "responses": {
            "200": {"description": "The vectors", "content": {"application/json": {"schema": _ref(answer)}}},
            **{code: {"description": text, "content": {"application/json": {"schema": _ref(error_schema)}}}
               for code, text in statuses.items()},
        },
    }}


def paths() -> dict:
    ollama = {**_STATUSES, "404": "`model` is not the served model"}
    return {
        "/v1/embeddings": _post("OpenAI embeddings: the model's last hidden state, mean-pooled, L2-normalised",
                                "OpenAIEmbeddingRequest", "EmbeddingList", "OpenAIError", _STATUSES),
        "/api/embed": _post("Ollama: embed a text or a list of texts (unit vectors)", "OllamaEmbedRequest",
                            "OllamaEmbedAnswer", "OllamaError", ollama),
        "/api/embeddings": _post("Ollama's legacy embedding route (one prompt)", "OllamaEmbeddingsRequest",
                                 "OllamaEmbeddingsAnswer", "OllamaError", ollama),
    }
