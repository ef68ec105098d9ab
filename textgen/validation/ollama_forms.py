"""Ollama's request forms (/api/generate, /api/chat) -> the one `GenerationRequest`.

Pure like `validation`: each body is checked against its own pydantic model, then mapped into
`request.generation_request`, so the server's defaults and limits apply as on every other route.
Messages name Ollama's fields (`num_predict`, not the `max_new_tokens` it becomes).

`options` holds Ollama's runtime options (mapped where the engine has them, `_neutral` ones refused
unless neutral, as the OpenAI forms do) and its load-time options, which mean nothing to a server that
loaded its one model at start (accepted and ignored: `LOAD_TIME_OPTIONS`, listed in docs/api.md).
"""

from __future__ import annotations

from typing import Annotated, Any, Callable, Dict, List, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

from ..settings import Settings
from .body import NonEmpty, OptionalInteger, parse_model
from .messages import invalid
from .grammar import JsonGrammar
from .openai_forms import ChatTool, _neutral, _reject_non_neutral
from .request import MAX_SEED, MAX_STOP_SEQUENCES, FieldNames, GenerationRequest, generation_request
from .response_format import ANY_OBJECT
from .tools import ToolChoice, ToolUse, tool_use

# Options that choose how the model is loaded or run on the hardware: accepted, ignored.
LOAD_TIME_OPTIONS = (
    "numa", "num_batch", "num_gpu", "main_gpu", "low_vram", "vocab_only", "use_mmap", "use_mlock",
    "num_thread", "num_keep",
)

OLLAMA_FIELDS = FieldNames(prompt="prompt", max_new_tokens="num_predict", grammar="format", n="n", top_n="logprobs")
OLLAMA_CHAT_FIELDS = FieldNames(prompt="messages", max_new_tokens="num_predict", grammar="format", n="n", top_n="logprobs")
OLLAMA_TOOL_FIELDS = FieldNames(prompt="messages", max_new_tokens="num_predict", grammar="tools", n="n", top_n="logprobs")


class Options(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    num_predict: OptionalInteger = Field(None, description="Tokens to generate at most; <= 0 (Ollama: no limit): the server's default.")
    num_ctx: OptionalInteger = Field(None, gt=0, description="The prompt keeps its last num_ctx tokens (at most the server's window).")
    temperature: Optional[float] = Field(None, ge=0, description="0 = greedy.")
    top_k: OptionalInteger = Field(None, ge=0, description="0 = no top-k filtering.")
    top_p: Optional[float] = Field(None, gt=0, le=1)
    typical_p: Optional[float] = Field(None, gt=0, le=1)
    repeat_penalty: Optional[float] = Field(None, gt=0)
    frequency_penalty: Optional[float] = Field(None, ge=-2, le=2)
    seed: OptionalInteger = Field(None, le=MAX_SEED, description="< 0: a random seed.")
    stop: Union[NonEmpty, Annotated[List[NonEmpty], Field(max_length=MAX_STOP_SEQUENCES)], None] = Field(
        None, description=f"Up to {MAX_STOP_SEQUENCES} sequences."
    )
    presence_penalty: Optional[float] = _neutral(None, 0)
    min_p: Optional[float] = _neutral(None, 0)
    tfs_z: Optional[float] = _neutral(None, 1)
    mirostat: OptionalInteger = _neutral(None, 0)
    mirostat_tau: Optional[float] = None  # only with mirostat, which is refused
    mirostat_eta: Optional[float] = None
    repeat_last_n: OptionalInteger = _neutral(None, -1)
    penalize_newline: Optional[bool] = None  # removed from Ollama's runner; accepted, ignored
    # Load-time options (LOAD_TIME_OPTIONS): accepted, ignored.
    numa: Optional[bool] = None
    num_batch: OptionalInteger = None
    num_gpu: OptionalInteger = None
    main_gpu: OptionalInteger = None
    low_vram: Optional[bool] = None
    vocab_only: Optional[bool] = None
    use_mmap: Optional[bool] = None
    use_mlock: Optional[bool] = None
    num_thread: OptionalInteger = None
    num_keep: OptionalInteger = None


class _OllamaRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    model: str = Field(min_length=1, description="The served model's name (with or without `:latest`).")
    stream: bool = Field(True, description="NDJSON lines as tokens come (Ollama's default); false: one object.")
    format: Union[Literal["json", ""], Dict[str, Any], None] = Field(
        None, description='`"json"` (any JSON object) or a JSON schema the answer must match.'
    )
    options: Optional[Options] = None
    keep_alive: Union[str, float, int, None] = Field(None, description="Accepted, ignored: the model stays loaded.")
    think: Optional[bool] = _neutral(None, False)
    logprobs: Optional[bool] = _neutral(None, False)
    top_logprobs: OptionalInteger = _neutral(None, 0)


class GenerateRequest(_OllamaRequest):
    prompt: Optional[str] = Field(None, description="Empty or missing: only loads the model (answers at once).")
    system: Optional[str] = Field(None, description="The system message, with the chat template (not with `raw`).")
    raw: bool = Field(False, description="The prompt as it is, no chat template.")
    suffix: Optional[str] = _neutral(None, "")
    template: Optional[str] = _neutral(None, "")
    context: Optional[List[int]] = _neutral(None, [])
    images: Optional[List[str]] = _neutral(None, [])


class CallFunction(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str
    arguments: Dict[str, Any]
    index: OptionalInteger = None


class OllamaToolCall(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    function: CallFunction
    id: Optional[str] = None


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    role: Literal["system", "user", "assistant", "tool"]
    content: str = ""
    images: Optional[List[str]] = _neutral(None, [])
    tool_calls: Optional[List[OllamaToolCall]] = Field(None, description="An assistant turn's calls.")
    tool_name: Optional[str] = Field(None, description="A tool turn's tool.")
    thinking: Optional[str] = Field(None, description="Accepted; not shown to the model again.")


class ChatRequest(_OllamaRequest):
    messages: List[Message] = Field(default_factory=list, description="Empty: only loads the model.")
    tools: Optional[List[ChatTool]] = Field(None, description="Functions the model may call (OpenAI's form).")


def chat_tools(parsed: ChatRequest, settings: Settings) -> ToolUse:
    """Ollama's tools: the model may call them (its API has no way to force one)."""
    tools = [t.tool() for t in parsed.tools or ()]
    return tool_use(tools, ToolChoice("auto" if tools else "none"), "tools", settings.max_grammar_bytes, "tools")


def chat_messages(messages: List[Message]) -> List[dict]:
    """Ollama's turns in the one form the chat template takes (`tool_prompt`)."""
    turns = []
    for message in messages:
        turn = {"role": message.role, "content": message.content}
        if message.tool_calls:
            turn["tool_calls"] = [
                {"id": call.id or f"call_{i}", "type": "function", "function": {"name": call.function.name, "arguments": call.function.arguments}}
                for i, call in enumerate(message.tool_calls)
            ]
        if message.role == "tool":
            turn["name"] = message.tool_name or ""
        turns.append(turn)
    return turns


class ShowRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    model: str = Field(min_length=1, description="The served model's name (with or without `:latest`).")
    verbose: Optional[bool] = Field(None, description="Accepted; the answer is the same.")


def show_request(body: Any) -> ShowRequest:
    return parse_model(ShowRequest, body)


def generate_request(body: Any) -> GenerateRequest:
    parsed = parse_model(GenerateRequest, body)
    _reject_non_neutral(parsed)
    return parsed


def chat_request(body: Any) -> ChatRequest:
    parsed = parse_model(ChatRequest, body)
    _reject_non_neutral(parsed)
    for message in parsed.messages:
        _reject_non_neutral(message)
    return parsed


def generate_prompt(parsed: GenerateRequest, render: Optional[Callable[[list], str]]) -> str:
    """Ollama renders the prompt (and `system`) with the model's template unless `raw`; a model without
    a chat template takes the prompt as it is (Ollama's template of a base model: `{{ .Prompt }}`)."""
    if parsed.raw or render is None:
        return parsed.prompt or ""
    messages = ([{"role": "system", "content": parsed.system}] if parsed.system else [])
    return render(messages + [{"role": "user", "content": parsed.prompt or ""}])


def generation(
    parsed: _OllamaRequest, prompt: str, settings: Settings, fields: FieldNames, max_input_tokens: int,
    tools: Optional[ToolUse] = None,
) -> GenerationRequest:
    """`tools` (chat): active, they hold the answer to text or calls, and `format` cannot also."""
    if tools is not None and tools.active and parsed.format:
        raise invalid("one_constraint", "format", name="format", other="tools")
    grammar = tools.grammar if tools is not None and tools.active else _grammar(parsed.format)
    o = parsed.options or Options()
    _reject_non_neutral(o)
    greedy = o.temperature == 0  # Ollama's greedy, as OpenAI's: no sampling parameters at all
    sampled = dict(temperature=o.temperature, top_p=o.top_p, top_k=o.top_k, typical_p=o.typical_p) if not greedy else {}
    max_new_tokens = o.num_predict if o.num_predict is not None and o.num_predict > 0 else None
    return generation_request(
        settings,
        fields,
        prompt=prompt,
        stream=parsed.stream,
        max_new_tokens=max_new_tokens,
        do_sample=False if greedy else None,
        seed=o.seed if o.seed is not None and o.seed >= 0 else None,
        repetition_penalty=o.repeat_penalty,
        frequency_penalty=o.frequency_penalty,
        stop=[o.stop] if isinstance(o.stop, str) else (o.stop or []),
        truncate=None if o.num_ctx is None else min(o.num_ctx, max_input_tokens),
        grammar=grammar,
        **sampled,
    )


def _grammar(format_: Union[str, Dict[str, Any], None]):
    if not format_:
        return None
    return JsonGrammar(type="json", value=ANY_OBJECT if format_ == "json" else format_)
