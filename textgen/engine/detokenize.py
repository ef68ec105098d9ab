"""Incremental detokenization: the text each new token adds, without re-decoding the whole sequence.

The approach of TGI and vLLM: decode a short window before the new token with and without it and emit
the difference. The window keeps byte-level BPE merges and SentencePiece's leading spaces right, and a
result ending in U+FFFD means a multi-byte character is still incomplete, so nothing is emitted yet.
"""

from __future__ import annotations

from typing import List


class IncrementalDetokenizer:
    def __init__(self, tokenizer, prompt_ids: List[int]):
        self._tokenizer = tokenizer
        self._ids = list(prompt_ids)
        # The last few prompt tokens serve as context for the first generated ones.
        self._prefix_offset = max(len(self._ids) - 5, 0)
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
