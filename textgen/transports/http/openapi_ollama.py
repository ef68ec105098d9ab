"""Ollama's routes in the OpenAPI document (openapi.py assembles it): their answers' models and paths.

Request bodies are the forms the routes validate with (`validation.ollama_forms`). The streamed answer is
NDJSON, which OpenAPI describes only as text; each line is an `OllamaGenerateAnswer` / `OllamaChatAnswer`
(or, after the stream began, an `OllamaError`). The routes that manage models (501) are left out.
"""

from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field

from ...validation.ollama_forms import ChatRequest, GenerateRequest, ShowRequest


class OllamaError(BaseModel):
    error: str


class _Final(BaseModel):
    model_config = ConfigDict(extra="allow")

    model: str
    created_at: str
    done: bool
    done_reason: Optional[Literal["stop", "length", "load"]] = None
    total_duration: Optional[int] = None
    load_duration: Optional[int] = None
    prompt_eval_count: Optional[int] = None
    prompt_eval_duration: Optional[int] = None
    eval_count: Optional[int] = None
    eval_duration: Optional[int] = None


class OllamaGenerateAnswer(_Final):
    response: str


class OllamaCalledFunction(BaseModel):
    name: str
    arguments: Dict[str, Any]


class OllamaCallMade(BaseModel):
    function: OllamaCalledFunction


class OllamaAssistantMessage(BaseModel):
    role: Literal["assistant"]
    content: str
    tool_calls: Optional[List[OllamaCallMade]] = Field(None, description="With `tools`: the calls the answer made.")


class OllamaChatAnswer(_Final):
    message: OllamaAssistantMessage


class OllamaDetails(BaseModel):
    model_config = ConfigDict(extra="allow")

    format: str
    family: str
    parameter_size: str
    quantization_level: str


class OllamaModel(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str
    model: str
    size: int
    digest: str
    details: OllamaDetails


class OllamaTags(BaseModel):
    models: List[OllamaModel]


class OllamaVersion(BaseModel):
    version: str


class OllamaShow(BaseModel):
    model_config = ConfigDict(extra="allow")

    parameters: str
    template: str
    details: OllamaDetails
    model_info: Dict[str, object]
    capabilities: List[str]


MODELS = [GenerateRequest, ChatRequest, ShowRequest, OllamaError, OllamaGenerateAnswer, OllamaChatAnswer, OllamaTags,
          OllamaVersion, OllamaShow]

_ERRORS = {
    "400": "Not JSON, or a field breaks a rule (the message names it); chat: the model has no chat template",
    "401": "API_KEY is set and the request has no valid bearer key",
    "404": "`model` is not the served model",
    "413": "Body larger than MAX_REQUEST_BYTES",
    "429": "MAX_CONCURRENT_REQUESTS reached; retry after Retry-After seconds",
    "500": "Generation failed (details in the server log)",
    "503": "Model not ready, or the request waited longer than QUEUE_TIMEOUT",
}


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _errors(statuses: Dict[str, str]) -> dict:
    return {code: {"description": text, "content": {"application/json": {"schema": _ref("OllamaError")}}}
            for code, text in statuses.items()}


def _post(summary: str, body: str, ok: dict, statuses: Dict[str, str]) -> dict:
    return {"post": {
        "summary": summary,
        "security": [{}, {"bearer": []}],
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(body)}}},
        "responses": {"200": {"description": "Done", "content": ok}, **_errors(statuses)},
    }}


def _get(summary: str, answer: str) -> dict:
    return {"get": {
        "summary": summary,
        "security": [{}, {"bearer": []}],
        "responses": {"200": {"description": "Done", "content": {"application/json": {"schema": _ref(answer)}}},
                      **_errors({"401": _ERRORS["401"]})},
    }}


def _generation(summary: str, body: str, answer: str) -> dict:
    ndjson = {"schema": {"type": "string", "description": f"NDJSON: one `{answer}` per line, the last `done: true`"
                                                          " (or an `OllamaError` if generation failed after it began)."}}
    ok = {"application/json": {"schema": _ref(answer)}, "application/x-ndjson": ndjson}
    return _post(summary, body, ok, _ERRORS)


def paths() -> dict:
    return {
        "/api/generate": _generation("Ollama: generate (NDJSON unless `stream` is false)", "GenerateRequest", "OllamaGenerateAnswer"),
        "/api/chat": _generation("Ollama: chat with the model's chat template", "ChatRequest", "OllamaChatAnswer"),
        "/api/show": _post("Ollama: the served model's details", "ShowRequest", {"application/json": {"schema": _ref("OllamaShow")}},
                           {k: _ERRORS[k] for k in ("400", "401", "404", "413")}),
        "/api/tags": _get("Ollama: the served model", "OllamaTags"),
        "/api/ps": _get("Ollama: the loaded model", "OllamaTags"),
        "/api/version": _get("Ollama: the API level implemented", "OllamaVersion"),
    }
