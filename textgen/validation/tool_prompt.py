"""Tools and past calls, put into the prompt through the model's chat template.

Every protocol's conversation arrives here in one form, transformers' (OpenAI's): an assistant turn may
carry `tool_calls` (`{"id", "type": "function", "function": {"name", "arguments": {...}}}`), a `tool`
turn answers one (`tool_call_id`, `name`, `content`).

A template that takes tools (Qwen's, Llama 3's, SmolLM3's, Hermes'...: `tool_prompt.takes_tools`
finds out by rendering) gets them as `tools=` and renders all of it in its own words. Any other
template gets the documented system-prompt form (`SYSTEM_FORM`, Hermes' words, which most
tool-trained small models learnt): the tools listed in the system turn, past calls written into the
assistant's text as the model writes them, and tool results as a user turn in `<tool_response>` tags.
"""

from __future__ import annotations

import json
from typing import Callable, List, Sequence

from .tools import CALL_CLOSE, CALL_OPEN, Tool, call_text

SYSTEM_FORM = (
    "You may call one or more functions to assist with the user query.\n\n"
    "You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{tools}\n</tools>\n\n"
    "For each function call, return a json object with function name and arguments within "
    f"{CALL_OPEN}{CALL_CLOSE} XML tags:\n{CALL_OPEN}\n"
    '{{"name": <function-name>, "arguments": <args-json-object>}}\n'
    f"{CALL_CLOSE}"
)

_PROBE = Tool("textgen_probe_tool", "A probe: does the template show tools?", {"type": "object", "properties": {}})


def takes_tools(render: Callable[..., str]) -> bool:
    """Whether a template renders the tools it is given (`render(messages, tools=...)`)."""
    try:
        return _PROBE.name in render([{"role": "user", "content": "Hello"}], tools=[_PROBE.openai_form()])
    except Exception:  # a template's own check refused the probe: it does not take tools as given
        return False


def in_system_form(messages: Sequence[dict], tools: Sequence[Tool]) -> List[dict]:
    """The conversation for a template that takes no tools: the tools in the system turn (when any are
    offered), past calls and their results as text."""
    out: List[dict] = []
    for message in messages:
        if message["role"] == "tool":
            response = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("from_tools"):  # the results of one turn's calls: one user turn
                out[-1]["content"] += "\n" + response
            else:
                out.append({"role": "user", "content": response, "from_tools": True})
            continue
        turn = {"role": message["role"], "content": message.get("content") or ""}
        calls = [call_text(c["function"]["name"], c["function"]["arguments"]) for c in message.get("tool_calls") or ()]
        if calls:
            turn["content"] = "\n".join(([turn["content"]] if turn["content"] else []) + calls)
        out.append(turn)
    for turn in out:
        turn.pop("from_tools", None)
    if tools:
        listed = SYSTEM_FORM.format(tools="\n".join(json.dumps(t.openai_form(), ensure_ascii=False) for t in tools))
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{listed}"}
        else:
            out.insert(0, {"role": "system", "content": listed})
    return out


def uses_tools(messages: Sequence[dict]) -> bool:
    return any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
