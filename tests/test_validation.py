"""Validation is pure: these tests need no model, no Flask and no torch."""

import pytest

from textgen.errors import BadRequest, ValidationError
from textgen.settings import Settings
from textgen.validation import kept_prompt_tokens, parse_json_body, validate_generate

SETTINGS = Settings.from_env(environ={})


def validate(body, **kw):
    return validate_generate(body, SETTINGS, **kw)


def error_of(body):
    with pytest.raises(ValidationError) as info:
        validate(body)
    return info.value.message


def test_seed_form_gets_the_pipeline_defaults():
    req = validate({"prompt": "Hello"})
    assert req.prompt == "Hello"
    assert req.max_new_tokens == SETTINGS.default_max_new_tokens
    assert req.do_sample is True and req.top_k == 50 and req.temperature == 1.0
    assert req.return_full_text is False and req.details is False and req.stream is False


def test_tgi_form_reads_parameters():
    req = validate(
        {
            "inputs": "Hi",
            "parameters": {
                "max_new_tokens": 7,
                "temperature": 0.5,
                "top_p": 0.9,
                "typical_p": 0.8,
                "repetition_penalty": 1.2,
                "frequency_penalty": 0.5,
                "seed": 42,
                "stop": ["\n", "END"],
                "return_full_text": True,
                "truncate": 10,
                "details": True,
            },
            "stream": True,
        }
    )
    assert (req.prompt, req.max_new_tokens, req.temperature, req.top_p, req.typical_p) == ("Hi", 7, 0.5, 0.9, 0.8)
    assert (req.repetition_penalty, req.frequency_penalty, req.seed) == (1.2, 0.5, 42)
    assert req.stop == ("\n", "END") and req.return_full_text and req.truncate == 10 and req.details
    assert req.do_sample is True and req.stream is True


def test_seed_form_takes_parameters_beside_the_prompt():
    req = validate({"prompt": "Hi", "max_new_tokens": 3, "do_sample": False})
    assert req.max_new_tokens == 3 and req.do_sample is False


def test_do_sample_false_wins_and_drops_warpers():
    req = validate({"inputs": "Hi", "parameters": {"do_sample": False, "temperature": 0.3, "top_k": 5}})
    assert req.do_sample is False and req.top_k == 0 and req.temperature == 1.0


def test_a_warper_turns_sampling_on_when_default_is_greedy():
    greedy = SETTINGS.replace(default_do_sample=False)
    assert validate_generate({"inputs": "Hi"}, greedy).do_sample is False
    assert validate_generate({"inputs": "Hi", "parameters": {"top_k": 3}}, greedy).do_sample is True


def test_route_can_force_streaming():
    assert validate({"inputs": "Hi"}, stream=True).stream is True
    assert validate({"inputs": "Hi", "stream": True}, stream=False).stream is False


@pytest.mark.parametrize(
    "parameters, message",
    [
        ({"max_new_tokens": 100000}, "`max_new_tokens` must be <= 512. Given: 100000"),
        ({"max_new_tokens": 0}, "`max_new_tokens` must be strictly positive. Given: 0"),
        ({"temperature": 0}, "`temperature` must be strictly positive. Given: 0"),
        ({"temperature": -1.5}, "`temperature` must be strictly positive. Given: -1.5"),
        ({"top_k": 0}, "`top_k` must be strictly positive. Given: 0"),
        ({"top_p": 1.5}, "`top_p` must be <= 1.0. Given: 1.5"),
        ({"top_p": 0}, "`top_p` must be strictly positive. Given: 0"),
        ({"typical_p": 2}, "`typical_p` must be <= 1.0. Given: 2"),
        ({"repetition_penalty": 0}, "`repetition_penalty` must be >= 0.01. Given: 0"),
        ({"repetition_penalty": 5e-324}, "`repetition_penalty` must be >= 0.01. Given: 5e-324"),
        ({"repetition_penalty": 1000}, "`repetition_penalty` must be <= 100.0. Given: 1000"),
        ({"frequency_penalty": 3}, "`frequency_penalty` must be <= 2.0. Given: 3"),
        ({"seed": -1}, "`seed` must be >= 0. Given: -1"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "`stop` supports up to 4 stop sequences. Given: 5"),
        ({"stop": [""]}, "`stop` sequences cannot be empty strings"),
        ({"stop": "x"}, "`stop` must be a list of strings"),
        ({"truncate": 0}, "`truncate` must be strictly positive. Given: 0"),
        ({"max_new_tokens": "5"}, '`max_new_tokens` must be an integer. Given: "5"'),
        ({"max_new_tokens": 5.5}, "`max_new_tokens` must be an integer. Given: 5.5"),
        ({"do_sample": "yes"}, '`do_sample` must be a boolean. Given: "yes"'),
        ({"temperature": "hot"}, '`temperature` must be a number. Given: "hot"'),
        ({"best_of": 5}, "`best_of` must be > 0 and <= 4. Given: 5"),
        ({"best_of": 0}, "`best_of` must be strictly positive. Given: 0"),
        ({"best_of": 2, "do_sample": False}, "you must use sampling when `best_of` is > 1"),
        ({"watermark": True}, "`watermark` is not supported by this server"),
        ({"top_n_tokens": 6}, "`top_n_tokens` must be <= 5. Given: 6"),
        ({"top_n_tokens": -1}, "`top_n_tokens` must be >= 0. Given: -1"),
        ({"grammar": {"type": "xml", "value": {}}}, "`grammar.type` must be one of 'json', 'json_object', 'regex', 'json_schema'. Given: \"xml\""),
        ({"grammar": {"type": "json", "value": 5}}, "`grammar.value` must be an object. Given: 5"),
        ({"bogus": 1}, "Unknown field `bogus` in parameters"),
        ({"temperature": float("nan")}, "`temperature` must be a finite number"),
        ({"repetition_penalty": float("inf")}, "`repetition_penalty` must be a finite number"),
    ],
)
def test_each_rule_names_the_field_and_the_limit(parameters, message):
    assert error_of({"inputs": "Hi", "parameters": parameters}).startswith(message)


def test_max_new_tokens_limit_comes_from_settings():
    with pytest.raises(ValidationError, match=r"`max_new_tokens` must be <= 20. Given: 21"):
        validate_generate({"prompt": "x", "max_new_tokens": 21}, SETTINGS.replace(max_new_tokens_limit=20))


def test_log_probability_fields_reach_the_request():
    request = validate({"inputs": "Hi", "parameters": {"details": True, "top_n_tokens": 5, "decoder_input_details": True}})
    assert (request.details, request.top_n_tokens, request.decoder_input_details) == (True, 5, True)
    assert validate({"inputs": "Hi"}).top_n_tokens == 0


def test_best_of_is_not_for_streams():
    body = {"inputs": "Hi", "parameters": {"best_of": 2}, "stream": True}
    assert error_of(body) == "`best_of` != 1 is not supported when streaming tokens"


def test_best_of_becomes_sampled_rows_and_its_limit_follows_the_batch():
    request = validate({"inputs": "Hi", "parameters": {"best_of": 3}})
    assert (request.n, request.pick_best, request.do_sample) == (3, True, True)
    small = SETTINGS.replace(max_batch_size=2)
    with pytest.raises(ValidationError, match=r"`best_of` must be > 0 and <= 2. Given: 3"):
        validate_generate({"inputs": "Hi", "parameters": {"best_of": 3}}, small)


def test_tgi_clients_neutral_values_are_accepted():
    body = {
        "inputs": "Hi",
        "parameters": {
            "best_of": None,
            "decoder_input_details": False,
            "watermark": False,
            "top_n_tokens": None,
            "grammar": None,
            "adapter_id": None,
            "details": True,
        },
        "stream": False,
    }
    assert validate(body).details is True


@pytest.mark.parametrize(
    "body, message",
    [
        ({}, "`inputs` is required"),
        ({"inputs": ""}, "`inputs` cannot be empty"),
        ({"prompt": ""}, "`prompt` cannot be empty"),
        ({"inputs": 5}, "`inputs` must be a string. Given: 5"),
        ({"prompt": None}, "`prompt` must be a string. Given: null"),
        ({"inputs": "a", "prompt": "b"}, "Give either `inputs` (TGI form) or `prompt`, not both"),
        ({"inputs": "a", "temperature": 1}, "Unknown field `temperature` in request body"),
        ({"inputs": "a", "parameters": []}, "`parameters` must be an object"),
    ],
)
def test_body_shape_errors(body, message):
    assert error_of(body).startswith(message)


@pytest.mark.parametrize("raw", [b"", b"   ", b"{", b"{'a': 1}", b"\xff\xfe", b"[" * 100000 + b"]" * 100000])
def test_malformed_json_is_bad_request(raw):
    with pytest.raises(BadRequest):
        parse_json_body(raw)


@pytest.mark.parametrize("body", [[1, 2], "text", 3, None])
def test_a_body_that_is_not_an_object_is_bad_request(body):
    with pytest.raises(BadRequest, match="must be a JSON object"):
        validate(body)


class TestTokenBudget:
    def req(self, **kw):
        return validate({"inputs": "x", "parameters": {"max_new_tokens": 10, **kw}})

    def test_within_limits_keeps_everything(self):
        assert kept_prompt_tokens(20, self.req(), max_input_tokens=100, max_total_tokens=200) == 20

    def test_prompt_too_long(self):
        with pytest.raises(ValidationError, match=r"`inputs` must have less than 100 tokens. Given: 101"):
            kept_prompt_tokens(101, self.req(), 100, 200)

    def test_prompt_plus_new_tokens_over_total(self):
        with pytest.raises(ValidationError, match=r"must be <= 100. Given: 95 `inputs` tokens and 10 `max_new_tokens`"):
            kept_prompt_tokens(95, self.req(), 99, 100)

    def test_truncate_keeps_the_last_tokens(self):
        assert kept_prompt_tokens(500, self.req(truncate=30), 100, 200) == 30
        assert kept_prompt_tokens(5, self.req(truncate=30), 100, 200) == 5

    def test_truncate_over_the_input_limit(self):
        with pytest.raises(ValidationError, match=r"`truncate` must be strictly positive and less than 100. Given: 101"):
            kept_prompt_tokens(500, self.req(truncate=101), 100, 200)

    def test_messages_name_the_clients_own_fields(self):
        from dataclasses import replace

        from textgen.validation.openai_forms import openai_fields

        with pytest.raises(ValidationError, match=r"^`messages` must have less than 100 tokens") as info:
            kept_prompt_tokens(101, replace(self.req(), fields=openai_fields(chat=True)), 100, 200)
        assert info.value.param == "messages"
        with pytest.raises(ValidationError, match=r"`prompt` tokens \+ `max_tokens` must be <= 100") as info:
            kept_prompt_tokens(95, replace(self.req(), fields=openai_fields(chat=False)), 99, 100)
        assert info.value.param == "max_tokens"

    def test_empty_after_tokenization(self):
        with pytest.raises(ValidationError, match="cannot be empty"):
            kept_prompt_tokens(0, self.req(), 100, 200)


# -- OpenAI's forms: the current API's names, and the fields that mean nothing here ----------------------
def chat(**options):
    from textgen.validation.openai_forms import chat_request

    body = {"messages": [{"role": "user", "content": "Hi"}], **options}
    return chat_request(body, SETTINGS, lambda messages, tools=(): messages[-1]["content"])[1]


def chat_error(**options):
    with pytest.raises(ValidationError) as info:
        chat(**options)
    return info.value


def test_max_completion_tokens_is_chats_token_budget_and_names_it_in_messages():
    request = chat(max_completion_tokens=3)
    assert request.max_new_tokens == 3 and request.fields.max_new_tokens == "max_completion_tokens"
    assert chat(max_completion_tokens=3, max_tokens=3).max_new_tokens == 3  # both, the same: one limit
    assert chat(max_tokens=4).fields.max_new_tokens == "max_tokens"
    error = chat_error(max_completion_tokens=100_000)
    assert error.message == "`max_completion_tokens` must be <= 512. Given: 100000"
    assert error.param == "max_completion_tokens"


def test_max_completion_tokens_and_a_different_max_tokens_are_refused_naming_both():
    error = chat_error(max_completion_tokens=3, max_tokens=4)
    assert error.message == (
        "Give `max_completion_tokens` or `max_tokens` (the same limit under two names), not two different values. "
        "Given: 3 and 4"
    )
    assert error.param == "max_completion_tokens"


def test_openai_fields_that_mean_nothing_here_are_accepted_with_their_neutral_values():
    # What LangChain's structured output (function calling), LiteLLM and the SDK's defaults send.
    request = chat(parallel_tool_calls=False, tools=[], tool_choice="none", presence_penalty=0, logit_bias={},
                   service_tier="auto", store=False, modalities=["text"], user="u-1", safety_identifier="s",
                   prompt_cache_key="k", metadata={"a": "b"}, reasoning_effort=None, audio=None)
    assert request.max_new_tokens == SETTINGS.default_max_new_tokens


@pytest.mark.parametrize(
    "options, message",
    [
        ({"functions": [{"name": "f"}]}, "`functions` is not supported by this server: only null or [] is accepted"),
        ({"presence_penalty": 0.5}, "`presence_penalty` is not supported by this server: only null or 0 is accepted. Given: 0.5"),
        ({"logit_bias": {"50256": -100}}, "`logit_bias` is not supported by this server: only null or {} is accepted"),
        ({"service_tier": "priority"}, '`service_tier` is not supported by this server: only null or "auto" or "default" is accepted. Given: "priority"'),
        ({"store": True}, "`store` is not supported by this server: only null or false is accepted. Given: true"),
        ({"tool_choice": "required"}, "`tool_choice` asks for a tool call, and `tools` offers none"),
    ],
)
def test_openai_fields_that_mean_nothing_here_are_refused_otherwise_naming_the_field(options, message):
    error = chat_error(**options)
    assert error.message.startswith(message) and error.param == next(iter(options))


def test_completions_best_of_is_accepted_only_as_one():
    from textgen.validation.openai_forms import completion_request

    assert completion_request({"prompt": "Hi", "best_of": 1}, SETTINGS)[1].n == 1
    with pytest.raises(ValidationError, match=r"^`best_of` is not supported by this server: only null or 1"):
        completion_request({"prompt": "Hi", "best_of": 2}, SETTINGS)


def test_one_top_n_limit_bounds_every_protocols_published_one():
    from textgen.engine import sampling
    from textgen.validation import MAX_TOP_N, generation_request
    from textgen.validation.openai_forms import MAX_COMPLETION_LOGPROBS, MAX_TOP_LOGPROBS, openai_fields
    from textgen.validation.tgi import MAX_TOP_N_TOKENS

    assert sampling.MAX_TOP_N is MAX_TOP_N
    assert (MAX_TOP_N_TOKENS, MAX_COMPLETION_LOGPROBS, MAX_TOP_LOGPROBS) == (5, 5, 20) and MAX_TOP_LOGPROBS <= MAX_TOP_N
    assert error_of({"inputs": "Hi", "parameters": {"top_n_tokens": 6}}) == "`top_n_tokens` must be <= 5. Given: 6"
    # A protocol that published a larger bound would still meet the engine's, in its own field's name.
    with pytest.raises(ValidationError, match=rf"^`logprobs` must be <= {MAX_TOP_N}. Given: {MAX_TOP_N + 1}$"):
        generation_request(SETTINGS, openai_fields(chat=False), prompt="Hi", stream=False, top_n_tokens=MAX_TOP_N + 1)


def test_a_prompt_with_a_lone_surrogate_is_refused_naming_the_clients_field():
    """JSON's \\ud800 escape parses into a string no tokenizer takes: a chat's rendered prompt, which no
    pydantic field checked, is refused by the request's own rule (it was a 500 once), TGI's by pydantic,
    with the same words."""
    from textgen.validation.openai_forms import chat_request

    body = {"messages": [{"role": "user", "content": "a\ud800b"}]}
    with pytest.raises(ValidationError) as info:
        chat_request(body, SETTINGS, lambda messages, tools=(): messages[-1]["content"])
    assert info.value.param == "messages" and "unicode" in info.value.message
    assert "`inputs`" in error_of({"inputs": "a\ud800b"}) and "unicode" in error_of({"inputs": "a\ud800b"})


class TestBatchTotalTokens:
    """MAX_BATCH_TOTAL_TOKENS: a request that could never join the batch is refused at once."""

    def req(self, **kw):
        return validate({"inputs": "x", "parameters": {"max_new_tokens": 10, **kw}})

    def test_rows_within_the_budget_pass(self):
        assert kept_prompt_tokens(90, self.req(), 1000, 1000, max_batch_total_tokens=100) == 90
        assert kept_prompt_tokens(40, self.req(best_of=2, do_sample=True), 1000, 1000, max_batch_total_tokens=100) == 40

    def test_a_request_larger_than_the_whole_budget_is_a_422_naming_it(self):
        with pytest.raises(ValidationError, match=r"MAX_BATCH_TOTAL_TOKENS, the KV-cache budget\). Given: 1 x \(91 \+ 10\)") as info:
            kept_prompt_tokens(91, self.req(), 1000, 1000, max_batch_total_tokens=100)
        assert info.value.status == 422
        # n completions hold n rows: 2 x (41 + 10) > 100
        with pytest.raises(ValidationError, match=r"`best_of` x \(`inputs` tokens \+ `max_new_tokens`\) must be <= 100"):
            kept_prompt_tokens(41, self.req(best_of=2, do_sample=True), 1000, 1000, max_batch_total_tokens=100)

    def test_the_total_limit_is_capped_at_the_budget(self):
        from textgen.validation.tokens import PromptTokens

        class Tok:
            eos_token_id = 0

            def __len__(self):
                return 10

        prompts = PromptTokens.for_model(Tok(), 8192, max_batch_total_tokens=5000)
        assert (prompts.max_total_tokens, prompts.max_input_tokens) == (5000, 4999)
        assert PromptTokens.for_model(Tok(), 1024, max_batch_total_tokens=5000).max_total_tokens == 1024
