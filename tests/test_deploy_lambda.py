"""scripts/deploy_lambda.py, offline. Most tests run against moto's Lambda; small fakes cover what moto cannot
show (invoking an image function needs Docker, and moto's functions are ready at once). No test pins the order
of the AWS calls, only their effect. Nothing here reaches AWS."""

from __future__ import annotations

import io
import json

import boto3
import pytest
from botocore.exceptions import ClientError
from botocore.response import StreamingBody
from botocore.stub import Stubber
from moto import mock_aws

from scripts import deploy_lambda as dl

REGION = "us-east-1"
ACCOUNT = "123456789012"
NAME = "gpt2-text-generator"
IMAGE = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/gpt2-text-generator:v1"
IMAGE_V2 = f"{ACCOUNT}.dkr.ecr.{REGION}.amazonaws.com/gpt2-text-generator:v2"
ROLE = f"arn:aws:iam::{ACCOUNT}:role/gpt2-lambda"
BASE_ARGS = ["--image-uri", IMAGE, "--function-name", NAME, "--role-arn", ROLE]


@pytest.fixture(autouse=True)
def fast_waiters(monkeypatch):
    monkeypatch.setattr(dl, "WAITER_DELAY", 0)
    monkeypatch.setattr(dl, "WAITER_MAX_ATTEMPTS", 5)


@pytest.fixture
def aws(monkeypatch):
    """A Lambda client on moto, with the execution role ROLE in moto's IAM."""
    for var in ("AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        trust = {"Version": "2012-10-17", "Statement": [
            {"Effect": "Allow", "Principal": {"Service": "lambda.amazonaws.com"}, "Action": "sts:AssumeRole"}]}
        iam = boto3.client("iam", region_name=REGION)
        role = iam.create_role(RoleName="gpt2-lambda", AssumeRolePolicyDocument=json.dumps(trust))["Role"]
        assert role["Arn"] == ROLE
        yield boto3.client("lambda", region_name=REGION)


def client_error(code, message, operation="AddPermission"):
    return ClientError({"Error": {"Code": code, "Message": message}}, operation)


def policy_sids(client):
    return {statement["Sid"] for statement in json.loads(client.get_policy(FunctionName=NAME)["Policy"])["Statement"]}


def invoke_returning(payload, function_error=None, calls=None):
    """A stand-in for client.invoke that answers `payload` and records its arguments in `calls`."""
    def invoke(**kwargs):
        if calls is not None:
            calls.append(kwargs)
        data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response = {"StatusCode": 200, "Payload": StreamingBody(io.BytesIO(data), len(data))}
        if function_error:
            response["FunctionError"] = function_error
        return response
    return invoke


# --- deploy, end to end on moto -----------------------------------------------------------------------------


def test_moto_create_then_update(aws, capsys):
    assert dl.main(BASE_ARGS + ["--no-smoke-test", "--function-url"], client=aws) == 0
    first = aws.get_function(FunctionName=NAME)
    assert first["Configuration"]["PackageType"] == "Image"
    assert first["Code"]["ImageUri"] == IMAGE
    assert (first["Configuration"]["MemorySize"], first["Configuration"]["Timeout"]) == (3008, 120)
    assert first["Configuration"]["Environment"]["Variables"] == {"HF_HUB_OFFLINE": "1"}
    url = aws.get_function_url_config(FunctionName=NAME)
    assert url["AuthType"] == "NONE"
    assert {dl.URL_PERMISSION_SID, dl.URL_INVOKE_PERMISSION_SID} <= policy_sids(aws)
    assert f"Function URL: {url['FunctionUrl']}" in capsys.readouterr().out

    args = ["--image-uri", IMAGE_V2, "--function-name", NAME, "--role-arn", ROLE, "--memory", "4096",
            "--timeout", "60", "--env", "LOG_LEVEL=DEBUG", "--no-smoke-test", "--function-url"]
    assert dl.main(args, client=aws) == 0
    second = aws.get_function(FunctionName=NAME)
    assert second["Code"]["ImageUri"] == IMAGE_V2
    assert (second["Configuration"]["MemorySize"], second["Configuration"]["Timeout"]) == (4096, 60)
    assert second["Configuration"]["Environment"]["Variables"] == {"HF_HUB_OFFLINE": "1", "LOG_LEVEL": "DEBUG"}
    assert aws.get_function_url_config(FunctionName=NAME)["FunctionUrl"] == url["FunctionUrl"]  # kept, not new
    out = capsys.readouterr().out
    assert "updated" in out and "created" not in out


def test_aws_error_is_one_line_and_exit_1(aws, capsys):
    """Lambda (here moto) checks the role itself; the script reports its answer instead of a traceback."""
    args = ["--image-uri", IMAGE, "--function-name", NAME, "--role-arn", f"arn:aws:iam::{ACCOUNT}:role/missing"]
    assert dl.main(args, client=aws) == 1
    err = capsys.readouterr().err
    assert "CreateFunction failed: InvalidParameterValueException: The role defined" in err
    assert "Traceback" not in err
    with pytest.raises(ClientError):
        aws.get_function(FunctionName=NAME)


def test_botocore_parameter_error_exit_1(aws, capsys):
    # botocore's API model rejects memory under 128 MB before any request: also one line, exit 1.
    assert dl.main(BASE_ARGS + ["--memory", "64", "--no-smoke-test"], client=aws) == 1
    assert "MemorySize" in capsys.readouterr().err


# --- waiting ------------------------------------------------------------------------------------------------


class BusyLambda:
    """A function still being created or updated. Like Lambda, it refuses a change meanwhile
    (ResourceConflictException); a waiter returns once the function is ready."""

    def __init__(self, configuration):
        self.configuration = configuration
        self.busy = True
        self.changes = {}
        self.waiters = set()

    def get_function(self, FunctionName):
        return {"Configuration": dict(self.configuration, FunctionName=FunctionName)}

    def get_waiter(self, name):
        self.waiters.add(name)
        return self

    def wait(self, FunctionName, WaiterConfig):
        self.busy = False

    def _change(self, operation, kwargs):
        if self.busy:
            raise client_error("ResourceConflictException", "An update is in progress", operation)
        self.changes[operation] = kwargs
        self.busy = True

    def update_function_code(self, **kwargs):
        self._change("UpdateFunctionCode", kwargs)

    def update_function_configuration(self, **kwargs):
        self._change("UpdateFunctionConfiguration", kwargs)


@pytest.mark.parametrize("configuration, waiters", [
    ({"State": "Active", "LastUpdateStatus": "InProgress"}, {"function_updated_v2"}),
    ({"State": "Pending"}, {"function_active_v2", "function_updated_v2"}),  # still being created
])
def test_update_waits_until_the_function_is_ready(configuration, waiters):
    fake = BusyLambda(configuration)
    cfg = dl.DeployConfig(NAME, IMAGE_V2, ROLE, memory=4096, environment={"A": "1"})
    assert dl.deploy(fake, cfg) == "updated"
    assert fake.changes == {
        "UpdateFunctionCode": {"FunctionName": NAME, "ImageUri": IMAGE_V2},
        "UpdateFunctionConfiguration": {"FunctionName": NAME, "MemorySize": 4096, "Timeout": 120,
                                        "Environment": {"Variables": {"A": "1"}}},
    }
    assert not fake.busy  # returned only once the last update had finished
    assert fake.waiters == waiters


def test_failed_state_is_reported_with_its_reason():
    client = boto3.client("lambda", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:  # one GetFunction poll, as the function_active_v2 waiter sees it
        stub.add_response("get_function", {"Configuration": {
            "FunctionName": NAME, "State": "Failed", "StateReason": "Image pull failed: access denied"}})
        with pytest.raises(dl.DeployError, match="Image pull failed: access denied"):
            dl._wait(client, "function_active_v2", NAME)


# --- Function URL -------------------------------------------------------------------------------------------


def test_permissions_already_there_are_tolerated(aws, monkeypatch):
    dl.deploy(aws, dl.DeployConfig(NAME, IMAGE, ROLE))
    sids = []

    def add_permission(**kwargs):
        sids.append(kwargs["StatementId"])
        raise client_error("ResourceConflictException", f"The statement id ({kwargs['StatementId']}) already exists")

    monkeypatch.setattr(aws, "add_permission", add_permission)
    assert dl.ensure_function_url(aws, NAME) == aws.get_function_url_config(FunctionName=NAME)["FunctionUrl"]
    assert set(sids) == {dl.URL_PERMISSION_SID, dl.URL_INVOKE_PERMISSION_SID}


def test_other_permission_errors_exit_1(aws, monkeypatch, capsys):
    def add_permission(**kwargs):
        raise client_error("AccessDeniedException", "not allowed: lambda:AddPermission")

    monkeypatch.setattr(aws, "add_permission", add_permission)
    assert dl.main(BASE_ARGS + ["--function-url", "--no-smoke-test"], client=aws) == 1
    assert "AddPermission failed: AccessDeniedException: not allowed: lambda:AddPermission" in capsys.readouterr().err


def test_iam_protected_url_is_not_made_public(aws, capsys):
    dl.deploy(aws, dl.DeployConfig(NAME, IMAGE, ROLE))
    url = aws.create_function_url_config(FunctionName=NAME, AuthType="AWS_IAM")["FunctionUrl"]
    assert dl.ensure_function_url(aws, NAME) == url
    assert aws.get_function_url_config(FunctionName=NAME)["AuthType"] == "AWS_IAM"
    with pytest.raises(ClientError, match="ResourceNotFoundException"):
        aws.get_policy(FunctionName=NAME)  # no permission was added
    assert "AWS_IAM" in capsys.readouterr().err


# --- smoke test ---------------------------------------------------------------------------------------------


def test_smoke_test_sends_prompt_and_returns_text():
    calls = []
    client = type("Client", (), {"invoke": staticmethod(invoke_returning({"generated_text": " there"}, calls=calls))})
    assert dl.smoke_test(client, NAME, "Era uma vez") == " there"
    assert len(calls) == 1
    assert calls[0]["InvocationType"] == "RequestResponse"
    assert json.loads(calls[0]["Payload"]) == {"prompt": "Era uma vez", "max_new_tokens": 20}


@pytest.mark.parametrize(
    "payload, function_error, message",
    [
        ({"errorMessage": "Runtime exited: signal: killed", "errorType": "Runtime.ExitError"}, "Unhandled",
         "function error (Unhandled)"),
        ({"error": "Model is loading", "error_type": "unavailable"}, None, "error response (unavailable): Model is"),
        ({"text": "wrong key"}, None, "no generated_text"),
        ({"generated_text": None}, None, "no generated_text"),
        (b"not json", None, "no generated_text"),
        (b"", None, "no generated_text"),
    ],
)
def test_smoke_test_failures(payload, function_error, message):
    client = type("Client", (), {"invoke": staticmethod(invoke_returning(payload, function_error))})
    with pytest.raises(dl.SmokeTestError, match=message.replace("(", r"\(").replace(")", r"\)")):
        dl.smoke_test(client, NAME)


@pytest.mark.parametrize("payload, status", [({"generated_text": " far away"}, 0), ({"error": "boom"}, 1)])
def test_main_runs_the_smoke_test(aws, monkeypatch, capsys, payload, status):
    monkeypatch.setattr(aws, "invoke", invoke_returning(payload))  # moto would need Docker to run the image
    assert dl.main(BASE_ARGS, client=aws) == status
    captured = capsys.readouterr()
    if status == 0:
        assert "Smoke test passed" in captured.out and "far away" in captured.out
    else:
        assert "smoke test failed: error response (unknown): boom" in captured.err


# --- arguments ----------------------------------------------------------------------------------------------


def test_parse_defaults_env_and_region():
    args = dl.parse_args(BASE_ARGS + ["--env", "A1=x", "--env", "A1=y", "--env", "URL=http://h/?a=b",
                                      "--env", "HF_HUB_OFFLINE=0"])
    assert args.region == REGION  # from the image URI
    assert (args.memory, args.timeout, args.smoke_test, args.function_url) == (3008, 120, True, False)
    assert dict(args.env) == {"A1": "y", "URL": "http://h/?a=b", "HF_HUB_OFFLINE": "0"}
    assert dl.parse_args(BASE_ARGS + ["--region", "eu-west-1"]).region == "eu-west-1"
    not_ecr = ["--image-uri", "docker.io/gpt2:1", "--function-name", NAME, "--role-arn", ROLE]
    assert dl.parse_args(not_ecr).region is None  # boto3's own configuration decides


def test_main_merges_env_over_default(aws):
    assert dl.main(BASE_ARGS + ["--env", "HF_HUB_OFFLINE=0", "--env", "B=2", "--no-smoke-test"], client=aws) == 0
    variables = aws.get_function(FunctionName=NAME)["Configuration"]["Environment"]["Variables"]
    assert variables == {"HF_HUB_OFFLINE": "0", "B": "2"}


@pytest.mark.parametrize("extra", [["--env", "NOEQUALS"], ["--memory", "lots"], ["--timeout", "1.5"]])
def test_malformed_arguments_exit_2(extra, capsys):
    with pytest.raises(SystemExit) as exc:
        dl.main(BASE_ARGS + extra, client=object())  # never used: parsing fails first
    assert exc.value.code == 2
    assert "error:" in capsys.readouterr().err


def test_make_client_read_timeout_outlasts_function():
    client = dl.make_client("eu-west-1", 120)
    assert client.meta.region_name == "eu-west-1"
    assert client.meta.config.read_timeout > 120
