"""A model that answers a script: the real tiny model underneath (its KV cache, its shapes, its cost),
with its logits replaced so that greedy decoding writes a chosen text, token by token. Tests that need
a model to call a tool of its own will (`tool_choice: auto`, Ollama's only mode), which random weights
never do, drive the real engine and transports with it."""

from __future__ import annotations

import numpy as np


class ScriptedModel:
    """Wraps a loaded model; each row's next token is the script's next one after the longest end of
    what the row holds that begins the script (the script's first token after a prompt), then the
    end-of-text token."""

    def __init__(self, model, script_ids):
        self._model = model
        self._script = list(script_ids) + [min(model.eos_token_ids)]
        self._seen: dict = {}  # slot -> the tokens it holds, by position

    def __getattr__(self, name):
        return getattr(self._model, name)

    def forward(self, tokens, starts, counts, cache, first_slot, want_logits, logit_index=None):
        logits = self._model.forward(tokens, starts, counts, cache, first_slot, want_logits, logit_index)
        for row in range(tokens.shape[0]):
            held = self._seen.setdefault(first_slot + row, [])
            del held[int(starts[row]):]
            held += [int(t) for t in tokens[row, : int(counts[row])]]
        if logits is None or logit_index is not None:
            return logits
        scripted = np.full_like(logits, -30.0)
        for row in range(tokens.shape[0]):
            scripted[row, self._next(self._seen[first_slot + row])] = 30.0
        return scripted

    def _next(self, held: list) -> int:
        for size in range(min(len(held), len(self._script) - 1), 0, -1):
            if held[-size:] == self._script[:size]:
                return self._script[size]
        return self._script[0]
