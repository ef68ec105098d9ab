"""The Lambda adapter with minimal events, in process; then the real awslambdaric against a local Runtime API."""

import os

import pytest

from tests.lambda_events import HTTP_KINDS, response_json
from tests.lambda_runtime import RuntimeAPI
from devtools.servers import start_module
from textgen.transports.aws_lambda import make_handler

SEED = {"prompt": "Once upon a time", "max_new_tokens": 5}


@pytest.fixture
def handler(app):
    return make_handler(app)


@pytest.mark.parametrize("kind", sorted(HTTP_KINDS))
def test_http_events_answer_like_the_service(handler, kind):
    response = handler(HTTP_KINDS[kind]("/generate", SEED), None)
    assert response["statusCode"] == 200
    assert isinstance(response_json(response)["generated_text"], str)


@pytest.mark.parametrize("kind", sorted(HTTP_KINDS))
def test_http_events_get_the_same_errors(handler, kind):
    bad = handler(HTTP_KINDS[kind]("/generate", {"inputs": "Hi", "parameters": {"max_new_tokens": 100000}}), None)
    assert bad["statusCode"] == 422
    assert response_json(bad) == {
        "error": "`max_new_tokens` must be <= 512. Given: 100000",
        "error_type": "validation",
    }
    missing = handler(HTTP_KINDS[kind]("/nope", None, method="GET"), None)
    assert missing["statusCode"] == 404 and response_json(missing)["error_type"] == "not_found"


def test_direct_invocation_both_forms(handler):
    assert set(handler(SEED, None)) == {"generated_text"}
    tgi = handler({"inputs": "Hello", "parameters": {"max_new_tokens": 3, "details": True, "seed": 1}}, None)
    assert tgi["details"]["generated_tokens"] == 3 and tgi["details"]["seed"] == 1
    assert len(tgi["details"]["tokens"]) == 3 and tgi["details"]["prefill"] == []  # as POST /generate's


def test_direct_invocation_errors_carry_the_status(handler):
    assert handler({"inputs": ""}, None) == {
        "error": "`inputs` cannot be empty",
        "error_type": "validation",
        "status": 422,
    }
    assert handler(["not", "an", "object"], None)["status"] == 400


def test_direct_invocation_matches_http(handler, client):
    body = {"inputs": "Hello", "parameters": {"max_new_tokens": 6, "do_sample": False}}
    assert handler(body, None) == client.post("/generate", json=body).get_json()


def test_real_awslambdaric_answers_every_event_kind(tiny_model_dir, tmp_path):
    """`python -m awslambdaric lambda_handler.handler`, as the Lambda image runs it, with HOME missing."""
    with RuntimeAPI() as api:
        env = {
            k: v for k, v in os.environ.items() if not k.startswith(("HF_", "AWS_", "GGUF_"))
        }
        env.update(
            AWS_LAMBDA_RUNTIME_API=api.address,
            MODEL_ID=tiny_model_dir,
            HOME=str(tmp_path / "no-home"),  # does not exist, as on Lambda
            TMPDIR=str(tmp_path),
            THREADS="2",
        )
        proc = start_module(["awslambdaric", "lambda_handler.handler"], env)
        try:
            for kind, make in sorted(HTTP_KINDS.items()):
                outcome, payload = api.invoke(make("/generate", SEED))
                assert outcome == "response", (kind, payload)
                assert payload["statusCode"] == 200, (kind, payload)
                assert isinstance(response_json(payload)["generated_text"], str)
            outcome, payload = api.invoke(make("/generate", {"prompt": ""}))
            assert outcome == "response" and payload["statusCode"] == 422
            outcome, payload = api.invoke(SEED)
            assert outcome == "response" and isinstance(payload["generated_text"], str)
            outcome, payload = api.invoke({"inputs": "Hi", "parameters": {"top_p": 7}})
            assert payload["status"] == 422 and payload["error_type"] == "validation"
            assert api.init_error is None
        finally:
            proc.terminate()
            output = proc.communicate(timeout=30)[0]
        assert not (tmp_path / "no-home").exists(), output
