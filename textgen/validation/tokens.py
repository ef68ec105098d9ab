"""The second half of validation: the prompt as tokens, and the limits counted in tokens.

Owns the tokenizer on the request threads' side (TGI's `validation.rs` does the same), so the engine
receives a request whose prompt is already ids that fit; a rule broken here is answered in the
request's own thread, before anything is queued. Pure apart from the tokenizer: no torch, no Flask.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Iterable, List, Optional, Sequence, Tuple

from ..errors import BadRequest, ValidationError
from . import tool_prompt
from .grammar import GrammarCompiler, TokenConstraint
from .request import GenerationRequest


@dataclass(frozen=True, eq=False)
class TokenizedRequest:
    """A valid request with its prompt as the ids to prefill (cut to `truncate`), and its grammar
    compiled into a constraint on the tokens (None: unconstrained)."""

    request: GenerationRequest
    prompt_ids: Tuple[int, ...]
    constraint: Optional[TokenConstraint] = None


@dataclass(frozen=True)
class PromptToken:
    """One prompt token as TGI's `POST /tokenize` shows it: `start` and `stop` are UTF-8 byte offsets into
    the prompt (TGI's are the Rust tokenizer's, which count bytes) and `text` is the prompt between them.
    A token the tokenizer adds itself (a BOS) covers nothing: "", 0, 0."""

    id: int
    text: str
    start: int
    stop: int


class PromptTokens:
    """Tokenizes prompts and applies the token limits; compiles grammars against the model's vocabulary
    (`vocab_size`: the width of its logits; `eos_token_ids`: what ends a text); renders chat messages
    with the model's template."""

    def __init__(
        self,
        tokenizer,
        max_input_tokens: int,
        max_total_tokens: int,
        vocab_size: Optional[int] = None,
        eos_token_ids: Iterable[int] = (),
        max_batch_total_tokens: Optional[int] = None,
    ):
        self.tokenizer = tokenizer
        self.max_input_tokens = max_input_tokens
        self.max_total_tokens = max_total_tokens
        self.max_batch_total_tokens = max_batch_total_tokens  # the KV-cache budget a request's rows must fit
        self._lock = threading.Lock()  # a fast tokenizer is not safe to share between request threads
        vocab_size = vocab_size or len(tokenizer)
        eos = list(eos_token_ids) or [t for t in (getattr(tokenizer, "eos_token_id", None),) if t is not None]
        self.grammars = GrammarCompiler(tokenizer, vocab_size, eos)
        self._takes_tools: Optional[bool] = None  # the chat template renders `tools=` (found on first use)

    @classmethod
    def for_model(
        cls, tokenizer, context: int, max_total_tokens=None, max_input_tokens=None, vocab_size=None, eos_token_ids=(),
        max_batch_total_tokens=None,
    ) -> "PromptTokens":
        """Limits from the settings (None = TGI's defaults), never past the model's context nor the KV-cache
        budget (MAX_BATCH_TOTAL_TOKENS: a longer request could never join the batch)."""
        total = min(max_total_tokens or context, context, max_batch_total_tokens or context)
        inputs = max(1, min(max_input_tokens or total - 1, total - 1))
        return cls(tokenizer, inputs, total, vocab_size, eos_token_ids, max_batch_total_tokens)

    def tokenize(self, request: GenerationRequest) -> TokenizedRequest:
        """The prompt's ids within the limits, and the grammar compiled (both in the caller's thread);
        errors name the client's fields (`request.fields`)."""
        with self._lock:
            ids = self.tokenizer(request.prompt)["input_ids"]
        kept = kept_prompt_tokens(len(ids), request, self.max_input_tokens, self.max_total_tokens, self.max_batch_total_tokens)
        constraint = None
        if request.grammar is not None:
            constraint = self.grammars.compile(request.grammar, request.fields.grammar)
        return TokenizedRequest(request, tuple(ids[len(ids) - kept :]), constraint)  # `truncate` keeps the last tokens

    def encode(self, text: str) -> List[int]:
        """The ids the tokenizer gives `text` (with what it adds itself, a BOS), as prompts get them."""
        with self._lock:
            return list(self.tokenizer(text)["input_ids"])

    @property
    def vocab_size(self) -> int:
        """Ids run from 0 to vocab_size - 1 (added tokens included)."""
        return len(self.tokenizer)

    def prompt_tokens(self, request: GenerationRequest) -> List[PromptToken]:
        """The tokens /generate would prefill for this request (same input limits, cut to `truncate`; no
        room is needed for new tokens), each with its place in the prompt."""
        with self._lock:
            ids, offsets = _encode_with_offsets(self.tokenizer, request.prompt)
        first = len(ids) - kept_input_tokens(len(ids), request, self.max_input_tokens)
        if request.grammar is not None:  # /generate's rules, all of them: a grammar it would refuse, refused
            self.grammars.compile(request.grammar, request.fields.grammar)
        ids = ids[first:]
        if offsets is None:  # a tokenizer without offsets (no Rust core): TGI answers the ids alone
            return [PromptToken(int(i), "", 0, 0) for i in ids]
        offsets = offsets[first:]
        spans = _byte_offsets(request.prompt, offsets)
        return [
            PromptToken(int(i), request.prompt[start:stop], byte_start, byte_stop)
            for i, (start, stop), (byte_start, byte_stop) in zip(ids, offsets, spans)
        ]

    def detokenize(self, ids: Sequence[int], field: str = "tokens") -> str:
        """The text of `ids` as the tokenizer decodes them (special tokens kept), within the limits: at most
        `max_total_tokens` ids (the longest sequence this server holds), each in the vocabulary."""
        if len(ids) > self.max_total_tokens:
            raise ValidationError(
                f"`{field}` must hold at most {self.max_total_tokens} item(s). Given: {len(ids)}", field
            )
        vocab = self.vocab_size
        for index, token in enumerate(ids):
            if not 0 <= token < vocab:
                raise ValidationError(
                    f"`{field}` must be < {vocab} (the vocabulary size). Given: {token} at index {index}", field
                )
        with self._lock:
            return self.tokenizer.decode(list(ids))

    def chat_prompt(self, messages: list, tools: Sequence = ()) -> str:
        """The messages rendered with the model's chat template, ready to generate the assistant's turn;
        `tools` (`validation.tools.Tool`) shown to the model as the template shows them, or in the
        system-prompt form when it takes none (`tool_prompt`)."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise BadRequest("This model has no chat template; send a plain prompt to /v1/completions instead")
        if (tools or tool_prompt.uses_tools(messages)) and not self._template_takes_tools():
            messages, tools = tool_prompt.in_system_form(messages, tools), ()
        try:
            return self._render(messages, tools=[t.openai_form() for t in tools] or None)
        except Exception as exc:  # the template's own checks (e.g. roles must alternate) raise here
            raise ValidationError(f"`messages` cannot be rendered with the model's chat template: {exc}", "messages")

    def _render(self, messages: list, tools=None) -> str:
        with self._lock:
            extra = {"tools": tools} if tools else {}
            return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, **extra)

    def _template_takes_tools(self) -> bool:
        if self._takes_tools is None:
            self._takes_tools = tool_prompt.takes_tools(self._render)
        return self._takes_tools


def _encode_with_offsets(tokenizer, text: str) -> Tuple[List[int], Optional[List[Tuple[int, int]]]]:
    """The ids `tokenizer(text)` gives, and each token's character offsets (None where the tokenizer
    cannot tell: one with no Rust core)."""
    encode = getattr(tokenizer, "encode_with_offsets", None)  # the lean tokenizer's
    if encode is not None:
        return encode(text)
    try:
        encoding = tokenizer(text, return_offsets_mapping=True)  # transformers' tokenizers with a Rust core
    except NotImplementedError:
        return list(tokenizer(text)["input_ids"]), None
    return list(encoding["input_ids"]), [tuple(pair) for pair in encoding["offset_mapping"]]


def _byte_offsets(text: str, offsets: Sequence[Tuple[int, int]]) -> List[Tuple[int, int]]:
    """Character offsets into `text` -> UTF-8 byte offsets, in one pass over the positions used."""
    to_byte = {}
    chars = count = 0
    for position in sorted({p for pair in offsets for p in pair}):
        count += len(text[chars:position].encode("utf-8"))
        chars = position
        to_byte[position] = count
    return [(to_byte[start], to_byte[stop]) for start, stop in offsets]


def kept_input_tokens(prompt_tokens: int, request: GenerationRequest, max_input_tokens: int) -> int:
    """Check the prompt's own limits (not empty, at most `max_input_tokens`, or `truncate` within it);
    return how many prompt tokens to keep."""
    prompt = request.fields.prompt
    if prompt_tokens == 0:
        raise ValidationError(f"`{prompt}` cannot be empty", prompt)
    if request.truncate is not None:
        if request.truncate > max_input_tokens:
            raise ValidationError(
                f"`truncate` must be strictly positive and less than {max_input_tokens}. Given: {request.truncate}",
                "truncate",
            )
        kept = min(prompt_tokens, request.truncate)
    else:
        if prompt_tokens > max_input_tokens:
            raise ValidationError(
                f"`{prompt}` must have less than {max_input_tokens} tokens. Given: {prompt_tokens}", prompt
            )
        kept = prompt_tokens
    return kept


def kept_prompt_tokens(
    prompt_tokens: int,
    request: GenerationRequest,
    max_input_tokens: int,
    max_total_tokens: int,
    max_batch_total_tokens: Optional[int] = None,
) -> int:
    """Check the token-count limits of a tokenized prompt; return how many prompt tokens to keep. A
    request of `n` completions holds n rows of prompt + new tokens: together they must fit the KV-cache
    budget (`max_batch_total_tokens`), or the request could never join the batch."""
    prompt, new_tokens = request.fields.prompt, request.fields.max_new_tokens
    kept = kept_input_tokens(prompt_tokens, request, max_input_tokens)
    if kept + request.max_new_tokens > max_total_tokens:
        raise ValidationError(
            f"`{prompt}` tokens + `{new_tokens}` must be <= {max_total_tokens}. "
            f"Given: {kept} `{prompt}` tokens and {request.max_new_tokens} `{new_tokens}`",
            new_tokens,
        )
    if max_batch_total_tokens is not None and request.n * (kept + request.max_new_tokens) > max_batch_total_tokens:
        raise ValidationError(
            f"`{request.fields.n}` x (`{prompt}` tokens + `{new_tokens}`) must be <= {max_batch_total_tokens} "
            f"(MAX_BATCH_TOTAL_TOKENS, the KV-cache budget). Given: {request.n} x ({kept} + {request.max_new_tokens})",
            request.fields.n,
        )
    return kept

