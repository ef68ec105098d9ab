"""A model that answers a script: the real tiny model underneath (its KV cache, its shapes, its cost),
with its logits replaced so that greedy decoding writes a chosen text. Tests that need a model to call
a tool of its own will (`tool_choice: auto`, Ollama's only mode), which random weights never do, drive
the real engine and transports with it."""

from __future__ import annotations

import numpy as np


class ScriptedModel:
    """Wraps a loaded model; each row's next token is the first token of what is left of the script
    after the longest end of the row's text that begins it (the whole script after a prompt), then the
    end-of-text token. By text, not by ids: a grammar's forced tokens may spell the script's text in
    other tokens than its own tokenization."""

    def __init__(self, model, tokenizer, script: str):
        self._model = model
        self._tokenizer = tokenizer
        self._script = script
        self._eos = min(model.eos_token_ids)
        self._seen: dict = {}  # slot -> the tokens it holds, by position

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, tokens, starts, counts, cache, first_slot, want_logits, logit_index=None):
        logits = self._model.forward(tokens, starts, counts, cache, first_slot, want_logits, logit_index)
        for row in range(tokens.shape[0]):
            held = self._seen.setdefault(first_slot + row, [])
            del held[int(starts[row]):]
            held += [int(t) for t in tokens[row, : int(counts[row])]]
        if logits is None:
            return logits
        # One logits row per row, or per position asked for (`logit_index`: each is its row's next).
        rows = range(tokens.shape[0]) if logit_index is None else logit_index // tokens.shape[1]
        picks = {row: self._next(self._seen[first_slot + row]) for row in set(int(r) for r in rows)}
        scripted = np.full_like(logits, -30.0)
        for k, row in enumerate(rows):
            scripted[k, picks[int(row)]] = 30.0
        return scripted

    def _next(self, held: list) -> int:
        text = self._tokenizer.decode(held)
        done = next((n for n in range(min(len(text), len(self._script)), 0, -1) if text.endswith(self._script[:n])), 0)
        if done == len(self._script):
            return self._eos
        return self._tokenizer(self._script[done:], add_special_tokens=False)["input_ids"][0]
