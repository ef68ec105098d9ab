"""Stop sequences: which text is safe to hand to the client, and where the answer ends.

Text that could still become the start of a stop sequence is held back until it is known not to be,
so what every transport streams is exactly the final answer, stop sequence cut (TGI and vLLM cut it
too). Pure: strings in, strings out.
"""

from __future__ import annotations

from typing import Sequence, Tuple


class StopMatcher:
    def __init__(self, stops: Sequence[str]):
        self.stops = tuple(stops)
        self.text = ""  # everything generated so far, cut before the stop sequence once one is found
        self.stopped = False
        self.matched = None  # the stop sequence found (Anthropic's answer names it)
        self._released = 0  # characters of `text` already handed out
        self._longest = max((len(s) for s in self.stops), default=0)

    def push(self, piece: str) -> Tuple[str, bool]:
        """Add the text of one token; return the text now safe to send, and whether a stop sequence
        completed (then nothing more will be released)."""
        if self.stopped:
            return "", True
        searched_from = max(0, len(self.text) - self._longest + 1)
        self.text += piece
        found = [(i, s) for i, s in ((self.text.find(s, searched_from), s) for s in self.stops) if i >= 0]
        if found:
            cut, self.matched = min(found)
            self.text, self.stopped = self.text[:cut], True
            return self._release(cut), True
        return self._release(len(self.text) - self._held()), False

    def flush(self) -> str:
        """At the end of generation (not by a stop sequence): whatever was held back."""
        return self._release(len(self.text))

    def _held(self) -> int:
        """Length of the longest end of the text that is the beginning of a stop sequence."""
        tail = self.text[-self._longest + 1 :] if self._longest > 1 else ""
        for start in range(len(tail)):
            if any(s.startswith(tail[start:]) for s in self.stops):
                return len(tail) - start
        return 0

    def _release(self, end: int) -> str:
        if end <= self._released:
            return ""
        piece, self._released = self.text[self._released : end], end
        return piece
