"""Tool calls read back from the generated text, for every chat protocol, whole or as it streams.

The model writes calls as `validation/tools.py` holds it to: `<tool_call>\\n{"name": ..., "arguments":
{...}}\\n</tool_call>`, after optional text. `ToolCallReader` takes the text in the pieces the engine
releases and gives back events: `Text` (answer text, never a piece of a tag), `CallStart` (a call's
name, as soon as it is known), `Arguments` (pieces of its arguments' JSON text, as they come) and
`CallEnd`. The streamed forms (OpenAI's `delta.tool_calls`, Anthropic's `input_json_delta`) are these
events; a whole answer is the same reader run over the whole text (`read_answer`), so both agree.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass, field
from typing import List, Optional

from ..validation.tools import CALL_CLOSE, CALL_OPEN

# A call's head, name first, as the grammar writes it; arguments follow to the block's last `}`.
_HEAD = re.compile(r'\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')
# What may still follow the arguments in a block: the call's closing `}`, spaces, the closing tag.
_TAIL = re.compile(r"\}\s*$")


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class CallStart:
    index: int
    name: str


@dataclass(frozen=True)
class Arguments:
    index: int
    text: str


@dataclass(frozen=True)
class CallEnd:
    index: int


def new_id() -> str:
    """A call's id; each protocol prefixes it (`call_`, `toolu_`)."""
    return uuid.uuid4().hex[:24]


@dataclass
class Call:
    name: str
    arguments: str = ""  # the arguments' JSON text, as written
    id: str = field(default_factory=new_id)

    def arguments_object(self) -> dict:
        """The arguments as an object ({} when cut short, e.g. by the token budget)."""
        try:
            value = json.loads(self.arguments)
        except ValueError:
            return {}
        return value if isinstance(value, dict) else {}


@dataclass
class Answer:
    content: str
    calls: List[Call]


class ToolCallReader:
    def __init__(self):
        self._buffer = ""
        self._state = "text"  # "text", "head" (in a tag, name not yet read) or "arguments"
        self._calls = 0
        self._after_call = False

    def feed(self, text: str) -> list:
        self._buffer += text
        events: list = []
        while self._step(events):
            pass
        return events

    def finish(self) -> list:
        """The events of what is left at the end of the text (a call cut short ends where it stopped)."""
        events: list = []
        if self._state == "text" and self._buffer:
            events.append(Text(self._buffer))
        elif self._state == "head":
            events.append(Text(CALL_OPEN + self._buffer))
        elif self._state == "arguments":
            events += self._arguments(self._buffer) + [CallEnd(self._calls - 1)]
        self._buffer, self._state = "", "text"
        return events

    def _step(self, events: list) -> bool:
        """One move of the reader; False when it needs more text."""
        if self._state == "text":
            if self._after_call:  # the line break between calls is part of neither
                self._buffer = self._buffer.lstrip("\n")
                if not self._buffer:
                    return False
                self._after_call = False
            start = self._buffer.find(CALL_OPEN)
            if start < 0:
                keep = _partial_suffix(self._buffer, CALL_OPEN)
                events += [Text(self._buffer[: len(self._buffer) - keep])] if len(self._buffer) > keep else []
                self._buffer = self._buffer[len(self._buffer) - keep:]
                return False
            events += [Text(self._buffer[:start])] if start else []
            self._buffer, self._state = self._buffer[start + len(CALL_OPEN):], "head"
            return True
        if self._state == "head":
            head = _HEAD.match(self._buffer)
            if head is None or head.end() == len(self._buffer):  # the spaces before the arguments may go on
                return False
            events.append(CallStart(self._calls, json.loads(head.group(1))))
            self._calls += 1
            self._buffer, self._state = self._buffer[head.end():], "arguments"
            return True
        end = self._buffer.find(CALL_CLOSE)
        if end >= 0:
            arguments = _TAIL.sub("", self._buffer[:end].rstrip())
            events += self._arguments(arguments) + [CallEnd(self._calls - 1)]
            self._buffer, self._state, self._after_call = self._buffer[end + len(CALL_CLOSE):], "text", True
            return True
        keep = _held_tail(self._buffer)
        events += self._arguments(self._buffer[: len(self._buffer) - keep])
        self._buffer = self._buffer[len(self._buffer) - keep:]
        return False

    def _arguments(self, text: str) -> list:
        return [Arguments(self._calls - 1, text)] if text else []


def _partial_suffix(text: str, tag: str) -> int:
    """The length of the longest end of `text` that begins `tag` (it may be the tag still coming)."""
    for size in range(min(len(text), len(tag) - 1), 0, -1):
        if tag.startswith(text[-size:]):
            return size
    return 0


def _held_tail(text: str) -> int:
    """How much of the end of a call's text to hold back: from its last `}` when only spaces and the
    start of the closing tag follow (it may be the call's own closing brace), or the spaces and start
    of the tag alone."""
    brace = text.rfind("}")
    if brace >= 0 and CALL_CLOSE.startswith(text[brace + 1:].lstrip()):
        return len(text) - brace
    stripped = text.rstrip()
    rest = len(text) - len(stripped)
    return max(_partial_suffix(text, CALL_CLOSE), rest)


class CallAssembler:
    """A reader's events with each call whole: `Text` events as they come, and a `Call` once it has
    ended (Ollama's stream sends calls whole; a whole answer is read this way too)."""

    def __init__(self):
        self._calls: List[Call] = []

    def take(self, events: list) -> list:
        out = []
        for event in events:
            if isinstance(event, Text):
                out.append(event)
            elif isinstance(event, CallStart):
                self._calls.append(Call(event.name))
            elif isinstance(event, Arguments):
                self._calls[event.index].arguments += event.text
            elif isinstance(event, CallEnd):
                out.append(self._calls[event.index])
        return out


def read_answer(text: str) -> Answer:
    """A whole answer: its text (outside the calls) and its calls."""
    reader = ToolCallReader()
    parts = CallAssembler().take(reader.feed(text) + reader.finish())
    content = "".join(p.text for p in parts if isinstance(p, Text))
    return Answer(content, [p for p in parts if isinstance(p, Call)])
