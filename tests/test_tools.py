"""Tool calls, built once for OpenAI's, Anthropic's and Ollama's chat routes: the grammar that holds the
model to a call (llguidance, on the tiny model's own vocabulary), the reader that takes calls back out
of the text (whole or in any pieces), the prompt (the template's `tools=`, or the system-prompt form),
and each protocol's real client against a live server: forced calls on the random tiny model, the
model's own choice (`auto`) on a scripted one (tests/scripted.py)."""

from __future__ import annotations

import json
import random
import shutil

import anthropic
import jsonschema
import ollama
import openai
import pytest
import requests

from devtools.models import make_tiny
from devtools.servers import thread_server
from tests.models import CHATML, HERMES_TOOLS, add_chat_template
from tests.scripted import ScriptedModel
from textgen.engine.core import Engine
from textgen.model.loader import load_model
from textgen.server import create_app
from textgen.settings import Settings
from textgen.transports.tool_calls import Arguments, CallEnd, CallStart, Text, ToolCallReader, read_answer
from textgen.validation.grammar import GrammarCompiler
from textgen.validation.tools import Tool, ToolChoice, tool_grammar, tool_use

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 10}, "days": {"type": "integer", "minimum": 1, "maximum": 7}},
    "required": ["city", "days"],
}
ADD = {"type": "object", "properties": {"a": {"type": "integer", "maximum": 99}, "b": {"type": "boolean"}}, "required": ["a", "b"]}
OPENAI_TOOLS = [
    {"type": "function", "function": {"name": "get_weather", "description": "A city's forecast", "parameters": WEATHER}},
    {"type": "function", "function": {"name": "add", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
SCRIPT = 'Let me look. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'


# -- the reader --------------------------------------------------------------------------------------
ANSWERS = [
    SCRIPT,
    SCRIPT + '\n<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": {"c": "}"}}}\n</tool_call>\n',
    "Only text, with a < and a <tool in it",
    '<tool_call>\n{"name": "add", "arguments": {"a": 1',  # cut short by the token budget
]


@pytest.mark.parametrize("text", ANSWERS)
def test_the_reader_reads_the_same_answer_from_any_pieces(text):
    whole = read_answer(text)
    rng = random.Random(0)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(text)), rng.randint(1, min(12, len(text) - 1))))
        reader = ToolCallReader()
        events = []
        for start, stop in zip([0] + cuts, cuts + [len(text)]):
            events += reader.feed(text[start:stop])
        events += reader.finish()
        content = "".join(e.text for e in events if isinstance(e, Text))
        names = [e.name for e in events if isinstance(e, CallStart)]
        arguments = ["".join(a.text for a in events if isinstance(a, Arguments) and a.index == i) for i in range(len(names))]
        assert content == whole.content
        assert names == [c.name for c in whole.calls] and arguments == [c.arguments for c in whole.calls]
        assert [e.index for e in events if isinstance(e, CallEnd)] == list(range(len(names)))
        # A call's name comes before any of its arguments; text never holds a piece of a tag.
        assert all("<tool_call" not in e.text for e in events if isinstance(e, Text)) or "<tool_call>" not in text


def test_the_reader_splits_text_and_calls():
    answer = read_answer(ANSWERS[1])
    assert answer.content == "Let me look. "
    assert [(c.name, c.arguments_object()) for c in answer.calls] == [
        ("get_weather", {"city": "Paris", "days": 3}), ("add", {"a": 1, "b": {"c": "}"}})]
    assert read_answer(ANSWERS[2]).calls == [] and read_answer(ANSWERS[2]).content == ANSWERS[2]
    assert read_answer(ANSWERS[3]).calls[0].arguments_object() == {}  # cut short: no object to give


# -- the grammar -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """The tiny model with room for tools in its prompt (its trained vocabulary spells JSON in many tokens)."""
    return make_tiny(str(tmp_path_factory.mktemp("tools") / "model"), n_positions=2048)


@pytest.fixture(scope="module")
def compiler(model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    return GrammarCompiler(tokenizer, len(tokenizer), [tokenizer.eos_token_id]), tokenizer


def follows(compiler, use, text: str) -> bool:
    grammars, tokenizer = compiler
    constraint = grammars.compile(tool_grammar(use), "tools")
    for token in tokenizer(text)["input_ids"]:
        mask = constraint.mask()
        if mask is None or not (mask[token // 32] >> (token % 32)) & 1:
            return False
        constraint.advance(token)
    return constraint.accepting


def use_of(mode="auto", name=None, parallel=True):
    tools = [Tool("get_weather", "", WEATHER), Tool("add", "", ADD)]
    return tool_use(tools, ToolChoice(mode, name, parallel), "tools", 100_000, "tool_choice")


CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 3}}\n</tool_call>'
ADD_CALL = '<tool_call>\n{"name": "add", "arguments": {"a": 4, "b": true}}\n</tool_call>'


@pytest.mark.parametrize(
    "use, text, allowed",
    [
        (use_of("required"), CALL, True),
        (use_of("required"), "Sunny.", False),  # required: a call, nothing else
        (use_of("required"), "Let me look. " + CALL, False),
        (use_of("required"), CALL.replace("3", "9"), False),  # days <= 7: the schema holds
        (use_of("required"), CALL.replace('"days": 3', '"days": 3, "x": 1'), False),  # no keys nobody listed
        (use_of("required"), CALL.replace("get_weather", "get_news"), False),
        (use_of("required"), CALL + "\n" + ADD_CALL, True),
        (use_of("required", parallel=False), CALL + "\n" + ADD_CALL, False),
        (use_of("named", "add"), ADD_CALL, True),
        (use_of("named", "add"), CALL, False),
        (use_of("auto"), "Sunny, I think.", True),  # auto: text is allowed...
        (use_of("auto"), "Let me look. " + CALL, True),  # ... and so are calls after it
        (use_of("auto"), "Let me look. " + CALL.replace("3", "9"), False),  # a call is always valid
        (use_of("auto"), CALL + " and more text", False),
    ],
)
def test_the_grammar_allows_exactly_the_answers_of_the_choice(compiler, use, text, allowed):
    assert follows(compiler, use, text) is allowed


@pytest.mark.parametrize(
    "tools, choice, words",
    [
        ([Tool("get weather", "", WEATHER)], ToolChoice(), "`tools[0]` name must be 1-64 letters"),
        ([Tool("f", "", WEATHER), Tool("f", "", ADD)], ToolChoice(), "`tools[1]` (`f`): two tools have this name"),
        ([Tool("f", "", {"type": "object", "properties": {"x": {"$ref": "#/nope"}}})], ToolChoice(),
         "`tools[0]` (`f`): the parameters' schema cannot be compiled: Pointer '/nope' does not exist"),
        ([Tool("f", "", WEATHER)], ToolChoice("named", "g"), "`tool_choice` names `g`, which is not one of `tools`: f"),
        ([], ToolChoice("required"), "`tool_choice` asks for a tool call, and `tools` offers none"),
    ],
)
def test_tools_are_checked_naming_the_one_at_fault(tools, choice, words):
    from textgen.errors import ValidationError

    with pytest.raises(ValidationError) as raised:
        tool_use(tools, choice, "tools", 100_000, "tool_choice")
    assert raised.value.message.startswith(words)


# -- the prompt --------------------------------------------------------------------------------------
HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": "", "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}}]},
    {"role": "tool", "tool_call_id": "c1", "name": "get_weather", "content": "Sunny, 21 C"},
]


def prompts_of(model_dir, template):
    from textgen.model.tokenizer import LeanTokenizer
    from textgen.validation.tokens import PromptTokens

    add_chat_template(model_dir, template)
    return PromptTokens(LeanTokenizer(model_dir), 2000, 2048)


def test_a_template_that_takes_tools_renders_them_in_its_own_words(model_dir):
    prompts = prompts_of(model_dir, HERMES_TOOLS)
    tools = [Tool("get_weather", "A city's forecast", WEATHER)]
    text = prompts.chat_prompt(HISTORY, tools=tools)
    assert "# Tools\n<tools>" + json.dumps(tools[0].openai_form()) in text  # the template's own words
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}\n</tool_call>' in text
    assert "<tool_response>\nSunny, 21 C\n</tool_response>" in text
    assert "You may call one or more functions" not in text


def test_a_template_without_tools_gets_them_in_the_system_form(model_dir):
    prompts = prompts_of(model_dir, CHATML)
    tools = [Tool("get_weather", "A city's forecast", WEATHER)]
    text = prompts.chat_prompt([{"role": "system", "content": "Be brief."}] + HISTORY, tools=tools)
    system = text.split("<|im_end|>")[0]
    assert system.startswith("<|im_start|>system\nBe brief.\n\nYou may call one or more functions")
    assert json.dumps(tools[0].openai_form()) in system
    assert '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "days": 1}}\n</tool_call><|im_end|>' in text
    assert "<|im_start|>user\n<tool_response>\nSunny, 21 C\n</tool_response><|im_end|>" in text
    # Without tools offered, past calls are still shown as text, and no tool list.
    assert "You may call" not in prompts.chat_prompt(HISTORY)


# -- live: the protocols' own clients ------------------------------------------------------------------
@pytest.fixture(scope="module")
def served(model_dir):
    """A live server on the tiny model (random weights: forced calls), and one on the same model made to
    answer SCRIPT (a call of its own choosing)."""
    add_chat_template(model_dir, CHATML)
    settings = Settings.from_env(environ={}, model_id=model_dir, threads=2)
    model, tokenizer = load_model(settings)
    engines = [Engine(model, tokenizer, settings).start(),
               Engine(ScriptedModel(model, tokenizer, SCRIPT), tokenizer, settings).start()]
    try:
        with thread_server(create_app(settings, engine=engines[0])) as url, \
                thread_server(create_app(settings, engine=engines[1])) as scripted_url:
            yield url, scripted_url
    finally:
        for engine in engines:
            engine.stop()


def openai_client(url):
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=60)


def valid(name: str, arguments: dict) -> bool:
    jsonschema.validate(arguments, SCHEMAS[name])
    return True


@pytest.mark.parametrize("seed", range(3))
def test_openai_required_gives_calls_whose_arguments_validate(served, seed):
    answer = openai_client(served[0]).chat.completions.create(
        model="m", messages=ASK, tools=OPENAI_TOOLS, tool_choice="required", max_tokens=200, seed=seed,
        temperature=1.0, parallel_tool_calls=False,
    )
    choice = answer.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.tool_calls and all(c.id.startswith("call_") and c.type == "function" for c in choice.message.tool_calls)
    assert all(valid(c.function.name, json.loads(c.function.arguments)) for c in choice.message.tool_calls)


def test_openai_named_tool_streamed_is_the_whole_answer_in_pieces(served):
    ask = dict(model="m", messages=ASK, tools=OPENAI_TOOLS, tool_choice={"type": "function", "function": {"name": "add"}},
               parallel_tool_calls=False, max_tokens=200, temperature=0)
    client = openai_client(served[0])
    whole = client.chat.completions.create(**ask).choices[0]
    chunks = list(client.chat.completions.create(**ask, stream=True))
    deltas = [c.choices[0].delta.tool_calls for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert deltas[0][0].id.startswith("call_") and deltas[0][0].function.name == "add"
    assert len(deltas) > 2  # the arguments came in pieces
    assert "".join(d[0].function.arguments or "" for d in deltas) == whole.message.tool_calls[0].function.arguments
    assert [c.function.name for c in whole.message.tool_calls] == ["add"] and whole.finish_reason == "tool_calls"
    assert valid("add", json.loads(whole.message.tool_calls[0].function.arguments))
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_openai_auto_reads_the_models_own_call_and_streams_its_text_first(served):
    client = openai_client(served[1])
    ask = dict(model="m", messages=ASK, tools=OPENAI_TOOLS, max_tokens=200, temperature=0)
    whole = client.chat.completions.create(**ask).choices[0]
    assert whole.message.content == "Let me look. " and whole.finish_reason == "tool_calls"
    assert [(c.function.name, json.loads(c.function.arguments)) for c in whole.message.tool_calls] == [
        ("get_weather", {"city": "Paris", "days": 3})]
    chunks = list(client.chat.completions.create(**ask, stream=True))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "Let me look. "
    # Without tools, the same model's text is all content: nothing is read out of it.
    plain = client.chat.completions.create(model="m", messages=ASK, max_tokens=200, temperature=0).choices[0]
    assert plain.message.content == SCRIPT and plain.message.tool_calls is None and plain.finish_reason == "stop"


def test_openai_past_calls_and_results_go_back_to_the_model(served):
    history = [ASK[0], {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 1}'}}]},
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny"}]
    answer = openai_client(served[0]).chat.completions.create(model="m", messages=history, tools=OPENAI_TOOLS, max_tokens=3)
    assert answer.usage.prompt_tokens > openai_client(served[0]).chat.completions.create(
        model="m", messages=ASK, tools=OPENAI_TOOLS, max_tokens=3).usage.prompt_tokens


@pytest.mark.parametrize(
    "change, param, words",
    [
        ({"tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice", "names `nope`"),
        ({"response_format": {"type": "json_object"}}, "response_format", "Give `response_format` or `tools`, not both"),
        ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {"x": {"$ref": "#/x"}}}}}]},
         "tools", "`tools[0]` (`f`): the parameters' schema cannot be compiled"),
        ({"messages": ASK + [{"role": "assistant", "tool_calls": [{"id": "1", "type": "function", "function": {"name": "f", "arguments": "{"}}]}]},
         "messages[1].tool_calls[0].function.arguments", "must be the JSON text of an object"),
    ],
)
def test_openai_bad_tools_are_a_400_naming_the_field(served, change, param, words):
    body = {"model": "m", "messages": ASK, "tools": OPENAI_TOOLS, "max_tokens": 3, **change}
    response = requests.post(served[0] + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param and words in response.json()["error"]["message"]


ANTHROPIC_TOOLS = [{"name": t["function"]["name"], "description": t["function"].get("description", ""),
                    "input_schema": t["function"]["parameters"]} for t in OPENAI_TOOLS]


def anthropic_client(url):
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=60)


def test_anthropic_any_gives_tool_use_blocks_and_streams_their_input(served):
    ask = dict(model="m", max_tokens=200, messages=ASK, tools=ANTHROPIC_TOOLS,
               tool_choice={"type": "any", "disable_parallel_tool_use": True}, extra_body={"temperature": 0})
    client = anthropic_client(served[0])
    whole = client.messages.create(**ask)
    assert whole.stop_reason == "tool_use"
    assert [b.type for b in whole.content] == ["tool_use"] and whole.content[0].id.startswith("toolu_")
    assert valid(whole.content[0].name, whole.content[0].input)
    with client.messages.stream(**ask) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "input_json" in kinds  # the SDK's event for each input_json_delta
    assert [(b.name, b.input) for b in final.content] == [(whole.content[0].name, whole.content[0].input)]
    assert final.stop_reason == "tool_use"


def test_anthropic_auto_call_with_text_and_the_result_round_trip(served):
    client = anthropic_client(served[1])
    whole = client.messages.create(model="m", max_tokens=200, messages=ASK, tools=ANTHROPIC_TOOLS, extra_body={"temperature": 0})
    assert [b.type for b in whole.content] == ["text", "tool_use"] and whole.content[0].text == "Let me look. "
    assert (whole.content[1].name, whole.content[1].input) == ("get_weather", {"city": "Paris", "days": 3})
    with client.messages.stream(model="m", max_tokens=200, messages=ASK, tools=ANTHROPIC_TOOLS, extra_body={"temperature": 0}) as stream:
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use"] and final.content[0].text == "Let me look. "
    assert final.content[1].input == {"city": "Paris", "days": 3}
    # The call and its result, sent back as Anthropic's blocks, are in the prompt the model reads.
    history = ASK + [{"role": "assistant", "content": [b.model_dump(exclude_none=True) for b in whole.content]},
                     {"role": "user", "content": [{"type": "tool_result", "tool_use_id": whole.content[1].id, "content": "Sunny"}]}]
    counted = client.messages.count_tokens(model="m", messages=history, tools=ANTHROPIC_TOOLS).input_tokens
    assert counted > client.messages.count_tokens(model="m", messages=ASK, tools=ANTHROPIC_TOOLS).input_tokens
    assert client.messages.create(model="m", max_tokens=2, messages=history, tools=ANTHROPIC_TOOLS).usage.input_tokens == counted


def test_ollama_chat_reads_the_models_call_whole_and_streamed(served):
    client = ollama.Client(host=served[1], timeout=60)
    model = client.list().models[0].model
    whole = client.chat(model=model, messages=ASK, tools=OPENAI_TOOLS, options={"temperature": 0, "num_predict": 200})
    assert whole.message.content == "Let me look. " and whole.done_reason == "stop"
    assert [(c.function.name, dict(c.function.arguments)) for c in whole.message.tool_calls] == [
        ("get_weather", {"city": "Paris", "days": 3})]
    parts = list(client.chat(model=model, messages=ASK, tools=OPENAI_TOOLS, options={"temperature": 0, "num_predict": 200}, stream=True))
    assert "".join(p.message.content for p in parts) == "Let me look. "
    calls = [c for p in parts for c in p.message.tool_calls or ()]
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [("get_weather", {"city": "Paris", "days": 3})]
    # A call and its result sent back, as the ollama package sends them.
    history = ASK + [whole.message, {"role": "tool", "content": "Sunny", "tool_name": "get_weather"}]
    assert client.chat(model=model, messages=history, tools=OPENAI_TOOLS, options={"num_predict": 2}).prompt_eval_count > whole.prompt_eval_count
    assert "tools" in client.show(model).capabilities


def test_openai_logprobs_come_with_a_tool_call_whole_and_streamed(served):
    ask = dict(model="m", messages=ASK, tools=OPENAI_TOOLS, tool_choice="required", parallel_tool_calls=False,
               max_tokens=200, temperature=0, logprobs=True)
    client = openai_client(served[0])
    whole = client.chat.completions.create(**ask)
    assert len(whole.choices[0].logprobs.content) == whole.usage.completion_tokens
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    streamed = [entry for c in chunks if c.choices and c.choices[0].logprobs for entry in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in whole.choices[0].logprobs.content]


def test_tool_call_answers_match_the_openapi_document(served):
    """What schemathesis' fuzz rarely reaches (a model that calls): each protocol's tool-call answer,
    whole and streamed, is one the document declares."""
    from referencing import Registry
    from referencing.jsonschema import DRAFT202012

    document = requests.get(served[1] + "/openapi.json", timeout=30).json()
    registry = Registry().with_resource("urn:doc", DRAFT202012.create_resource(document))

    def check(body, name):
        schema = {"$ref": f"urn:doc#/components/schemas/{name}"}
        jsonschema.Draft202012Validator(schema, registry=registry).validate(body)

    ask = {"model": "m", "messages": ASK, "tools": OPENAI_TOOLS, "max_tokens": 200, "temperature": 0}
    whole = requests.post(served[1] + "/v1/chat/completions", json=ask, timeout=60).json()
    assert whole["choices"][0]["message"]["tool_calls"]
    check(whole, "ChatCompletion")
    with requests.post(served[1] + "/v1/chat/completions", json={**ask, "stream": True}, stream=True, timeout=60) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith(b"data: {")]
    assert any(c["choices"][0]["delta"].get("tool_calls") for c in chunks)
    for chunk in chunks:
        check(chunk, "ChatCompletionChunk")
    message = requests.post(served[1] + "/v1/messages", json={"model": "m", "max_tokens": 200, "messages": ASK,
                                                                "tools": ANTHROPIC_TOOLS, "temperature": 0}, timeout=60).json()
    assert message["content"][-1]["type"] == "tool_use"
    check(message, "MessageResponse")
    chat = requests.post(served[1] + "/api/chat", json={"model": "model", "messages": ASK, "tools": OPENAI_TOOLS, "stream": False,
                                                         "options": {"temperature": 0, "num_predict": 200}}, timeout=60).json()
    assert chat["message"]["tool_calls"]
    check(chat, "OllamaChatAnswer")
