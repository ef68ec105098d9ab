"""Incremental detokenization: the text each new token adds, without re-decoding the whole sequence.

The approach of TGI and vLLM: decode a short window before the new token with and without it and emit
the difference. The window keeps byte-level BPE merges and SentencePiece's leading spaces right, and a
result ending in U+FFFD means a multi-byte character is still incomplete, so nothing is emitted yet.
"""

from __future__ import annotations

from typing import Collection, Sequence

# Prompt tokens decoded before the generated ones, so that the first of them reads as in context.
_CONTEXT_TOKENS = 5


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: Sequence[int]):
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids)
        # The last few prompt tokens serve as context for the first generated ones.
        self._prefix_offset = max(len(self._ids) - _CONTEXT_TOKENS, 0)
        self._read_offset = len(self._ids)

    def add(self, token_id: int) -> str:
        """Append one token; return the text it completes (often "" for a partial UTF-8 character)."""
        self._ids.append(token_id)
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=False)
        new_text = decode(self._ids[self._prefix_offset :], skip_special_tokens=False)
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            self._prefix_offset = self._read_offset
            self._read_offset = len(self._ids)
            return new_text[len(prefix_text) :]
        return ""

    def flush(self) -> str:
        """At the end of generation: whatever is still held back (an incomplete character shows as U+FFFD)."""
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset : self._read_offset], skip_special_tokens=False)
        new_text = decode(self._ids[self._prefix_offset :], skip_special_tokens=False)
        self._prefix_offset = self._read_offset = len(self._ids)
        return new_text[len(prefix_text) :]


def decode_generated(tokenizer, prompt_ids: Sequence[int], generated: Sequence[int], special: Collection[int]) -> str:
    """All the generated text at once, as the token-by-token path makes it: in the context of the last
    prompt tokens, special tokens left out, an unfinished character at the end as U+FFFD."""
    context = list(prompt_ids[-_CONTEXT_TOKENS:])
    text = tokenizer.decode(context + [t for t in generated if t not in special], skip_special_tokens=False)
    return text[len(tokenizer.decode(context, skip_special_tokens=False)) :]
