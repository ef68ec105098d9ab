"""scripts/deploy_lambda.py, offline: botocore's Stubber checks each Lambda API call and its parameters in order
(the waiters' GetFunction polls included); one moto test runs create-then-update against moto's Lambda.
Nothing here reaches AWS: the Stubber answers before any request is sent, moto intercepts the rest."""

from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.response import StreamingBody
from botocore.stub import ANY, Stubber
from moto import mock_aws

from scripts import deploy_lambda as dl

REGION = "us-east-1"
ACCOUNT = "123456789012"
NAME = "gpt2-text-generator"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/gpt2-text-generator:v1"
IMAGE_V2 = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/gpt2-text-generator:v2"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/gpt2-lambda"
FUNCTION_ARN = f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{NAME}"
URL = "https://abcdefghijklmnopqrstuvwxyz012345.lambda-url.us-east-1.on.aws/"
BASE_ARGS = ["--image-uri", IMAGE, "--function-name", NAME, "--role-arn", ROLE]


@pytest.fixture(autouse=True)
def fast_waiters(monkeypatch):
    monkeypatch.setattr(dl, "WAITER_DELAY", 0)
    monkeypatch.setattr(dl, "WAITER_MAX_ATTEMPTS", 5)


@pytest.fixture
def client():
    return boto3.client(
        "lambda", region_name=REGION, aws_access_key_id="testing", aws_secret_access_key="testing"
    )


@pytest.fixture
def stub(client):
    with Stubber(client) as stubber:
        yield stubber


class JsonBytes:
    """Matches a JSON-encoded bytes parameter by its decoded value (key order and spacing do not matter)."""

    def __init__(self, value):
        self.value = value

    def __eq__(self, other):
        return isinstance(other, (bytes, bytearray)) and json.loads(other) == self.value

    def __repr__(self):
        return f"JsonBytes({self.value!r})"


def function_response(state="Active", last_update="Successful", package_type="Image", **extra):
    config = {
        "FunctionName": NAME,
        "FunctionArn": FUNCTION_ARN,
        "PackageType": package_type,
        "State": state,
        "LastUpdateStatus": last_update,
    }
    config.update(extra)
    return {"Configuration": config}


def stub_not_found(stub, method, **params):
    stub.add_client_error(
        method,
        service_error_code="ResourceNotFoundException",
        service_message=f"Function not found: {FUNCTION_ARN}",
        http_status_code=404,
        expected_params=params,
    )


def stub_poll(stub, **response_kwargs):
    """One waiter poll (function_active_v2 / function_updated_v2 both call GetFunction)."""
    stub.add_response("get_function", function_response(**response_kwargs), {"FunctionName": NAME})


def stub_invoke(stub, payload, function_error=None, prompt=dl.DEFAULT_SMOKE_PROMPT):
    data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    response = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(data), len(data))}
    if function_error:
        response["FunctionError"] = function_error
    stub.add_response(
        "invoke",
        response,
        {
            "FunctionName": NAME,
            "InvocationType": "RequestResponse",
            "Payload": JsonBytes({"prompt": prompt, "max_new_tokens": 20}),
        },
    )


def stub_create(stub, environment=None, memory=3008, timeout=120):
    stub_not_found(stub, "get_function", FunctionName=NAME)
    stub.add_response(
        "create_function",
        {"FunctionName": NAME, "FunctionArn": FUNCTION_ARN, "State": "Pending", "PackageType": "Image"},
        {
            "FunctionName": NAME,
            "PackageType": "Image",
            "Code": {"ImageUri": IMAGE},
            "Role": ROLE,
            "MemorySize": memory,
            "Timeout": timeout,
            "Environment": {"Variables": environment or {"HF_HUB_OFFLINE": "1"}},
            "Architectures": ["x86_64"],
        },
    )
    # The waiter must keep polling through Pending until Active.
    stub_poll(stub, state="Pending", last_update="InProgress")
    stub_poll(stub)


def stub_update(stub, image=IMAGE, environment=None, memory=3008, timeout=120, existing=None):
    stub.add_response("get_function", existing or function_response(), {"FunctionName": NAME})
    stub.add_response(
        "update_function_code",
        {"FunctionName": NAME, "LastUpdateStatus": "InProgress"},
        {"FunctionName": NAME, "ImageUri": image},
    )
    stub_poll(stub, last_update="InProgress")
    stub_poll(stub)
    stub.add_response(
        "update_function_configuration",
        {"FunctionName": NAME, "LastUpdateStatus": "InProgress"},
        {
            "FunctionName": NAME,
            "MemorySize": memory,
            "Timeout": timeout,
            "Environment": {"Variables": environment or {"HF_HUB_OFFLINE": "1"}},
        },
    )
    stub_poll(stub)


def stub_url_missing(stub):
    stub_not_found(stub, "get_function_url_config", FunctionName=NAME)
    stub.add_response(
        "create_function_url_config",
        {"FunctionUrl": URL, "FunctionArn": FUNCTION_ARN, "AuthType": "NONE", "CreationTime": "2025-01-01T00:00:00Z"},
        {"FunctionName": NAME, "AuthType": "NONE"},
    )


ANY_CREATE_PARAMS = {
    key: ANY for key in
    ("FunctionName", "PackageType", "Code", "Role", "MemorySize", "Timeout", "Environment", "Architectures")
}
URL_PERMISSION = {
    "FunctionName": NAME,
    "StatementId": dl.URL_PERMISSION_SID,
    "Action": "lambda:InvokeFunctionUrl",
    "Principal": "*",
    "FunctionUrlAuthType": "NONE",
}
INVOKE_PERMISSION = {
    "FunctionName": NAME,
    "StatementId": dl.URL_INVOKE_PERMISSION_SID,
    "Action": "lambda:InvokeFunction",
    "Principal": "*",
    "InvokedViaFunctionUrl": True,
}


# --- create / update ----------------------------------------------------------------------------------------


def test_create_path_waits_until_active_then_smoke_tests(client, stub, capsys):
    stub_create(stub)
    stub_invoke(stub, {"generated_text": " there was a small model"})
    assert dl.main(BASE_ARGS, client=client) == 0
    stub.assert_no_pending_responses()
    out = capsys.readouterr().out
    assert "created" in out
    assert "there was a small model" in out


def test_create_merges_user_env_and_passes_memory_timeout(client, stub):
    env = {"HF_HUB_OFFLINE": "1", "MAX_BATCH_SIZE": "4", "EXTRA": "a=b"}
    stub_create(stub, environment=env, memory=4096, timeout=300)
    args = BASE_ARGS + ["--memory", "4096", "--timeout", "300", "--env", "MAX_BATCH_SIZE=4", "--env", "EXTRA=a=b",
                        "--no-smoke-test"]
    assert dl.main(args, client=client) == 0
    stub.assert_no_pending_responses()  # no invoke with --no-smoke-test


def test_user_env_overrides_default(client, stub):
    stub_create(stub, environment={"HF_HUB_OFFLINE": "0"})
    assert dl.main(BASE_ARGS + ["--env", "HF_HUB_OFFLINE=0", "--no-smoke-test"], client=client) == 0
    stub.assert_no_pending_responses()


def test_update_path_updates_code_waits_then_configuration(client, stub, capsys):
    stub_update(stub, environment={"HF_HUB_OFFLINE": "1", "LOG_LEVEL": "DEBUG"})
    stub_invoke(stub, {"generated_text": " ok"})
    assert dl.main(BASE_ARGS + ["--env", "LOG_LEVEL=DEBUG"], client=client) == 0
    stub.assert_no_pending_responses()
    assert "updated" in capsys.readouterr().out


def test_update_waits_for_an_update_already_in_progress(client, stub):
    stub.add_response("get_function", function_response(last_update="InProgress"), {"FunctionName": NAME})
    stub_poll(stub)  # waits for the running update before changing the code (else ResourceConflictException)
    stub.add_response("update_function_code", {"FunctionName": NAME}, {"FunctionName": NAME, "ImageUri": IMAGE})
    stub_poll(stub)
    stub.add_response("update_function_configuration", {"FunctionName": NAME}, {
        "FunctionName": NAME, "MemorySize": 3008, "Timeout": 120, "Environment": {"Variables": {"HF_HUB_OFFLINE": "1"}},
    })
    stub_poll(stub)
    cfg = dl.DeployConfig(function_name=NAME, image_uri=IMAGE, role_arn=ROLE)
    assert dl.deploy(client, cfg) == "updated"
    stub.assert_no_pending_responses()


def test_zip_function_is_not_overwritten(client, stub, capsys):
    stub.add_response("get_function", function_response(package_type="Zip"), {"FunctionName": NAME})
    assert dl.main(BASE_ARGS + ["--no-smoke-test"], client=client) == 1
    stub.assert_no_pending_responses()  # and no update call was made (the Stubber would have refused it)
    assert "PackageType Zip" in capsys.readouterr().err


def test_failed_state_exits_1_with_reason(client, stub, capsys):
    stub_not_found(stub, "get_function", FunctionName=NAME)
    stub.add_response("create_function", {"FunctionName": NAME}, ANY_CREATE_PARAMS)
    stub_poll(stub, state="Failed", last_update="Failed", StateReason="Image pull failed: access denied")
    assert dl.main(BASE_ARGS, client=client) == 1
    stub.assert_no_pending_responses()  # no smoke test after a failed deployment
    assert "Image pull failed: access denied" in capsys.readouterr().err



def test_falls_back_to_v1_waiters_polling_get_function_configuration(client, stub):
    class OldBotocoreClient:
        """A client whose botocore predates the `_v2` waiters."""

        waiter_names = ["function_active", "function_updated"]

        def __getattr__(self, attr):
            return getattr(client, attr)

    stub_not_found(stub, "get_function", FunctionName=NAME)
    stub.add_response("create_function", {"FunctionName": NAME}, ANY_CREATE_PARAMS)
    stub.add_response("get_function_configuration", {"FunctionName": NAME, "State": "Pending"}, {"FunctionName": NAME})
    stub.add_response("get_function_configuration", {"FunctionName": NAME, "State": "Active"}, {"FunctionName": NAME})
    assert dl.deploy(OldBotocoreClient(), dl.DeployConfig(NAME, IMAGE, ROLE)) == "created"
    stub.assert_no_pending_responses()


# --- Function URL -------------------------------------------------------------------------------------------


def test_function_url_created_with_public_permissions(client, stub, capsys):
    stub_update(stub)
    stub_url_missing(stub)
    stub.add_response("add_permission", {"Statement": "{}"}, URL_PERMISSION)
    stub.add_response("add_permission", {"Statement": "{}"}, INVOKE_PERMISSION)
    assert dl.main(BASE_ARGS + ["--function-url", "--no-smoke-test"], client=client) == 0
    stub.assert_no_pending_responses()
    assert f"Function URL: {URL}" in capsys.readouterr().out


def test_function_url_and_permissions_already_exist(client, stub):
    stub.add_response(
        "get_function_url_config",
        {"FunctionUrl": URL, "FunctionArn": FUNCTION_ARN, "AuthType": "NONE", "CreationTime": "2025-01-01T00:00:00Z",
         "LastModifiedTime": "2025-01-01T00:00:00Z"},
        {"FunctionName": NAME},
    )
    for params in (URL_PERMISSION, INVOKE_PERMISSION):
        stub.add_client_error(
            "add_permission",
            service_error_code="ResourceConflictException",
            service_message=f"The statement id ({params['StatementId']}) provided already exists.",
            http_status_code=409,
            expected_params=params,
        )
    assert dl.ensure_function_url(client, NAME) == URL
    stub.assert_no_pending_responses()


def test_iam_protected_url_is_not_made_public(client, stub, capsys):
    stub.add_response(
        "get_function_url_config",
        {"FunctionUrl": URL, "FunctionArn": FUNCTION_ARN, "AuthType": "AWS_IAM", "CreationTime": "2025-01-01T00:00:00Z",
         "LastModifiedTime": "2025-01-01T00:00:00Z"},
        {"FunctionName": NAME},
    )
    assert dl.ensure_function_url(client, NAME) == URL
    stub.assert_no_pending_responses()  # no add_permission call
    assert "AWS_IAM" in capsys.readouterr().err


def test_other_add_permission_errors_are_not_swallowed(client, stub, capsys):
    stub_update(stub)
    stub_url_missing(stub)
    stub.add_client_error("add_permission", service_error_code="AccessDeniedException",
                          service_message="not allowed: lambda:AddPermission", http_status_code=403)
    assert dl.main(BASE_ARGS + ["--function-url", "--no-smoke-test"], client=client) == 1
    err = capsys.readouterr().err
    assert "AccessDeniedException" in err and "lambda:AddPermission" in err


# --- smoke test ---------------------------------------------------------------------------------------------


def test_smoke_test_uses_custom_prompt(client, stub, capsys):
    stub_update(stub)
    stub_invoke(stub, {"generated_text": ", in a land far away"}, prompt="Era uma vez")
    assert dl.main(BASE_ARGS + ["--smoke-prompt", "Era uma vez"], client=client) == 0
    stub.assert_no_pending_responses()
    assert "in a land far away" in capsys.readouterr().out


def test_smoke_test_function_error_exits_nonzero(client, stub, capsys):
    stub_update(stub)
    stub_invoke(
        stub,
        {"errorMessage": "RequestId: abc Error: Runtime exited with error: signal: killed", "errorType": "Runtime.ExitError"},
        function_error="Unhandled",
    )
    assert dl.main(BASE_ARGS, client=client) == 1
    stub.assert_no_pending_responses()
    err = capsys.readouterr().err
    assert "Unhandled" in err and "Runtime.ExitError" in err


def test_smoke_test_error_payload_exits_nonzero(client, stub, capsys):
    stub_update(stub)
    stub_invoke(stub, {"error": "Model is loading", "error_type": "unavailable"})
    assert dl.main(BASE_ARGS, client=client) == 1
    err = capsys.readouterr().err
    # Reported as the service's error (type and message), not as a response merely missing generated_text.
    assert "error response (unavailable): Model is loading" in err


@pytest.mark.parametrize("payload", [{"text": "wrong key"}, b"not json", b"", {"generated_text": None}])
def test_smoke_test_without_generated_text_fails(client, stub, payload):
    stub_invoke(stub, payload)
    with pytest.raises(dl.SmokeTestError):
        dl.smoke_test(client, NAME, dl.DEFAULT_SMOKE_PROMPT)
    stub.assert_no_pending_responses()


# --- AWS errors ---------------------------------------------------------------------------------------------


def test_client_error_exits_1_with_code_and_message(client, stub, capsys):
    message = f"User: arn:aws:iam::{ACCOUNT}:user/ci is not authorized to perform: lambda:GetFunction"
    stub.add_client_error("get_function", service_error_code="AccessDeniedException", service_message=message,
                          http_status_code=403, expected_params={"FunctionName": NAME})
    assert dl.main(BASE_ARGS, client=client) == 1
    err = capsys.readouterr().err
    assert "AccessDeniedException" in err and message in err and "GetFunction" in err
    assert "Traceback" not in err


def test_create_error_exits_1(client, stub, capsys):
    stub_not_found(stub, "get_function", FunctionName=NAME)
    stub.add_client_error("create_function", service_error_code="InvalidParameterValueException",
                          service_message="The role defined for the function cannot be assumed by Lambda.",
                          http_status_code=400)
    assert dl.main(BASE_ARGS, client=client) == 1
    assert "cannot be assumed by Lambda" in capsys.readouterr().err


# --- argument parsing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra",
    [
        ["--env", "NOEQUALS"],
        ["--env", "=value"],
        ["--env", "1BAD=x"],
        ["--env", "BAD-KEY=x"],
        ["--env", "AWS_REGION=eu-west-1"],  # reserved by Lambda
        ["--memory", "64"],
        ["--memory", "lots"],
        ["--timeout", "901"],
        ["--region", "eu-west-1"],  # the image is in us-east-1
        ["--smoke-prompt", "  "],
    ],
)
def test_bad_arguments_exit_2(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        dl.main(BASE_ARGS + extra, client=object())  # never used: parsing fails first
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "args",
    [
        ["--image-uri", "docker.io/library/gpt2:latest", "--function-name", NAME, "--role-arn", ROLE],
        ["--image-uri", IMAGE, "--function-name", NAME, "--role-arn", "gpt2-lambda"],
        ["--image-uri", IMAGE.rsplit(":", 1)[0], "--function-name", NAME, "--role-arn", ROLE],  # no tag
        ["--function-name", NAME, "--role-arn", ROLE],
    ],
)
def test_bad_image_or_role_exit_2(args):
    with pytest.raises(SystemExit) as exc:
        dl.parse_args(args)
    assert exc.value.code == 2


def test_parse_defaults_and_region_from_image():
    args = dl.parse_args(BASE_ARGS + ["--env", "A1=x", "--env", "A1=y", "--env", "URL=http://h/?a=b"])
    cfg = dl.config_from_args(args)
    assert args.region == REGION
    assert (cfg.memory, cfg.timeout) == (3008, 120)
    assert cfg.environment == {"HF_HUB_OFFLINE": "1", "A1": "y", "URL": "http://h/?a=b"}
    assert args.smoke_test is True and args.function_url is False
    digest = f"{ACCOUNT}.dkr.ecr.eu-west-1.amazonaws.com/gpt2-text-generator@sha256:{'a' * 64}"
    assert dl.parse_args(["--image-uri", digest, "--function-name", NAME, "--role-arn", ROLE]).region == "eu-west-1"
    assert dl.parse_args(["--image-uri", IMAGE + "@sha256:" + "b" * 64, "--function-name", NAME,
                          "--role-arn", ROLE]).image_uri.endswith("b" * 64)


def test_make_client_read_timeout_outlasts_function():
    client = dl.make_client("eu-west-1", 120)
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.read_timeout > 120


# --- moto ---------------------------------------------------------------------------------------------------


def test_moto_create_then_update(monkeypatch, capsys):
    """Against moto's Lambda (image functions need no Docker until invoked, so no smoke test here)."""
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION)
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
        role_arn = iam.create_role(RoleName="gpt2-lambda", AssumeRolePolicyDocument=json.dumps(trust))["Role"]["Arn"]
        assert role_arn == ROLE
        client = boto3.client("lambda", region_name=REGION)

        assert dl.main(BASE_ARGS + ["--no-smoke-test", "--function-url"], client=client) == 0
        first = client.get_function(FunctionName=NAME)
        assert first["Configuration"]["PackageType"] == "Image"
        assert first["Code"]["ImageUri"] == IMAGE
        assert first["Configuration"]["MemorySize"] == 3008
        assert first["Configuration"]["Environment"]["Variables"] == {"HF_HUB_OFFLINE": "1"}
        assert client.get_function_url_config(FunctionName=NAME)["AuthType"] == "NONE"
        policy = json.loads(client.get_policy(FunctionName=NAME)["Policy"])
        sids = {statement["Sid"] for statement in policy["Statement"]}
        assert {dl.URL_PERMISSION_SID, dl.URL_INVOKE_PERMISSION_SID} <= sids

        args = ["--image-uri", IMAGE_V2, "--function-name", NAME, "--role-arn", ROLE, "--memory", "4096",
                "--timeout", "60", "--env", "LOG_LEVEL=DEBUG", "--no-smoke-test"]
        assert dl.main(args, client=client) == 0
        second = client.get_function(FunctionName=NAME)
        assert second["Code"]["ImageUri"] == IMAGE_V2
        assert second["Configuration"]["MemorySize"] == 4096
        assert second["Configuration"]["Timeout"] == 60
        assert second["Configuration"]["Environment"]["Variables"] == {"HF_HUB_OFFLINE": "1", "LOG_LEVEL": "DEBUG"}
    out = capsys.readouterr().out
    assert "created" in out and "updated" in out
