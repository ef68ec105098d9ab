"""Log-probabilities in OpenAI's two shapes, from the engine's token records (shared by whole answers and
stream chunks).

Completions (the legacy shape): parallel lists `tokens`, `token_logprobs`, `top_logprobs` (a dict of
the most likely alternatives per token) and `text_offset` (where each token's text starts in the
returned text). With `echo`, the prompt's tokens come first: the first has no log-probability and no
alternatives (null), the others their alternatives under the model's own distribution. Chat:
`content`, one entry per token with its UTF-8 `bytes` and its `top_logprobs`. A generated token's text is the text it adds in context (a character split
over two tokens shows on the second); alternatives and prompt tokens are each decoded on their own.
"""

from __future__ import annotations

from typing import Iterable, List, Optional, Sequence

from ..engine.handle import TokenEvent, TokenInfo


def completion_logprobs(prefill: Sequence[TokenInfo], tokens: Iterable[TokenEvent], offset: int = 0) -> dict:
    """`offset`: where the first listed token's text starts in the answer's text."""
    body: dict = {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
    for token in prefill:
        top = None if token.logprob is None else {alt.text: alt.logprob for alt in token.top_tokens}
        offset = _add(body, token.text, token.logprob, top, offset)
    for event in tokens:
        top = {alt.text: alt.logprob for alt in event.top_tokens}
        offset = _add(body, event.text, event.logprob, top, offset)
    return body


def _add(body: dict, text: str, logprob: Optional[float], top: Optional[dict], offset: int) -> int:
    body["tokens"].append(text)
    body["token_logprobs"].append(logprob)
    body["top_logprobs"].append(top)
    body["text_offset"].append(offset)
    return offset + len(text)


def chat_logprobs(tokens: Iterable[TokenEvent]) -> dict:
    content: List[dict] = []
    for event in tokens:
        entry = _chat_token(event.text, event.logprob)
        entry["top_logprobs"] = [_chat_token(alt.text, alt.logprob) for alt in event.top_tokens]
        content.append(entry)
    return {"content": content, "refusal": None}


def _chat_token(text: str, logprob: Optional[float]) -> dict:
    return {"token": text, "logprob": logprob, "bytes": list(text.encode("utf-8"))}
