"""scripts/deploy_lambda.py, offline. Most tests run against moto's Lambda; small fakes cover what moto cannot
show (invoking an image function needs Docker, and moto's functions are ready at once), and botocore's Stubber
the provisioned concurrency requests moto 5.2.5 does not implement (a Stubber answers in the order it was
given: there, and only there, the order of the calls is pinned). Otherwise no test pins the order of the AWS
calls, only their effect. Nothing here reaches AWS."""

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


# --- alias, reserved and provisioned concurrency ------------------------------------------------------------
# moto 5.2.5 implements PublishVersion, the alias calls and Put/Get/DeleteFunctionConcurrency, but not
# Get/Put/DeleteProvisionedConcurrencyConfig ("Not yet implemented"): those requests are checked with
# botocore's Stubber (against botocore's model of the Lambda API), and the order Lambda's rules impose with
# a fake that enforces them. moto keeps one Function URL per function, whatever the qualifier, and reports
# $LATEST's image for every version: the tests here check what it does model.


def stubbed_lambda():
    return boto3.client("lambda", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")


def provisioned(status, requested=2, available=None, reason=None):
    config = {"RequestedProvisionedConcurrentExecutions": requested, "Status": status,
              "AvailableProvisionedConcurrentExecutions": requested if available is None else available,
              "AllocatedProvisionedConcurrentExecutions": requested if available is None else available}
    if reason:
        config["StatusReason"] = reason
    return config


NO_PROVISIONED = "ProvisionedConcurrencyConfigNotFoundException"
ALIAS_LIVE = {"FunctionName": NAME, "Qualifier": "live"}


def test_moto_alias_follows_each_deploy(aws, capsys):
    assert dl.main(BASE_ARGS + ["--alias", "live", "--no-smoke-test"], client=aws) == 0
    first = aws.get_alias(FunctionName=NAME, Name="live")["FunctionVersion"]
    assert first != "$LATEST"
    assert aws.get_function(FunctionName=NAME, Qualifier=first)["Configuration"]["Version"] == first
    assert f"Version {first} published; alias live created" in capsys.readouterr().out

    args = ["--image-uri", IMAGE_V2, "--function-name", NAME, "--role-arn", ROLE, "--alias", "live", "--no-smoke-test"]
    assert dl.main(args, client=aws) == 0
    second = aws.get_alias(FunctionName=NAME, Name="live")["FunctionVersion"]
    assert int(second) > int(first)
    assert aws.get_function(FunctionName=NAME)["Code"]["ImageUri"] == IMAGE_V2
    assert f"alias live updated, on version {second}" in capsys.readouterr().out
    assert dl.point_alias(aws, NAME, "live", second) == "unchanged"


def test_moto_a_weighted_alias_is_pointed_wholly_at_the_new_version(aws):
    dl.deploy(aws, dl.DeployConfig(NAME, IMAGE, ROLE))
    old = aws.publish_version(FunctionName=NAME)["Version"]
    aws.update_function_code(FunctionName=NAME, ImageUri=IMAGE_V2)
    new = aws.publish_version(FunctionName=NAME)["Version"]
    aws.create_alias(FunctionName=NAME, Name="live", FunctionVersion=old,
                     RoutingConfig={"AdditionalVersionWeights": {new: 0.1}})  # a canary left by another tool
    assert dl.point_alias(aws, NAME, "live", new) == "updated"
    alias = aws.get_alias(FunctionName=NAME, Name="live")
    assert alias["FunctionVersion"] == new
    assert not (alias.get("RoutingConfig") or {}).get("AdditionalVersionWeights")


def test_moto_reserved_concurrency_is_set_kept_and_removed(aws, capsys):
    assert dl.main(BASE_ARGS + ["--reserved-concurrency", "4", "--no-smoke-test"], client=aws) == 0
    assert aws.get_function_concurrency(FunctionName=NAME)["ReservedConcurrentExecutions"] == 4
    assert "Reserved concurrency of gpt2-text-generator: 4 environments" in capsys.readouterr().out
    assert dl.main(BASE_ARGS + ["--no-smoke-test"], client=aws) == 0  # not named: left as it is
    assert aws.get_function_concurrency(FunctionName=NAME)["ReservedConcurrentExecutions"] == 4
    assert dl.main(BASE_ARGS + ["--reserved-concurrency", "none", "--no-smoke-test"], client=aws) == 0
    assert "ReservedConcurrentExecutions" not in aws.get_function_concurrency(FunctionName=NAME)


def test_moto_url_permissions_and_smoke_test_go_through_the_alias(aws, monkeypatch, capsys):
    url_calls, invocations = [], []
    create_url = aws.create_function_url_config

    def recording_create_url(**kwargs):
        url_calls.append(kwargs)
        return create_url(**kwargs)

    monkeypatch.setattr(aws, "create_function_url_config", recording_create_url)
    monkeypatch.setattr(aws, "invoke", invoke_returning({"generated_text": " there"}, calls=invocations))
    assert dl.main(BASE_ARGS + ["--alias", "live", "--function-url"], client=aws) == 0
    assert [call.get("Qualifier") for call in url_calls] == ["live"]
    statements = json.loads(aws.get_policy(FunctionName=NAME, Qualifier="live")["Policy"])["Statement"]
    assert {s["Sid"] for s in statements} == {dl.URL_PERMISSION_SID, dl.URL_INVOKE_PERMISSION_SID}
    assert all(s["Resource"].endswith(f":function:{NAME}:live") for s in statements)
    assert [call.get("Qualifier") for call in invocations] == ["live"]
    assert "warning" not in capsys.readouterr().err  # moto: the alias's URL is the function's only one


def test_a_url_of_the_bare_function_besides_the_alias_is_warned_about(aws, monkeypatch, capsys):
    bare = "https://bare.lambda-url.us-east-1.on.aws/"
    get_url = aws.get_function_url_config

    def get_url_config(**kwargs):  # Lambda keeps one URL per qualifier; moto one per function
        return get_url(**kwargs) if kwargs.get("Qualifier") else {"FunctionUrl": bare, "AuthType": "NONE"}

    monkeypatch.setattr(aws, "get_function_url_config", get_url_config)
    assert dl.main(BASE_ARGS + ["--alias", "live", "--function-url", "--no-smoke-test"], client=aws) == 0
    err = capsys.readouterr().err
    assert f"warning: {bare} (the URL of {NAME} without alias) runs $LATEST, not alias live" in err


def test_unqualified_url_besides_the_alias():
    client = stubbed_lambda()
    alias_url = "https://alias.lambda-url.us-east-1.on.aws/"
    with Stubber(client) as stub:
        for answer in ("https://bare.lambda-url.us-east-1.on.aws/", alias_url):
            stub.add_response("get_function_url_config", {
                "FunctionUrl": answer, "FunctionArn": f"arn:aws:lambda:{REGION}:{ACCOUNT}:function:{NAME}",
                "AuthType": "NONE", "CreationTime": "2026-01-01T00:00:00Z", "LastModifiedTime": "2026-01-01T00:00:00Z"},
                expected_params={"FunctionName": NAME})
        stub.add_client_error("get_function_url_config", "ResourceNotFoundException", expected_params={"FunctionName": NAME})
        assert dl.unqualified_url_besides(client, NAME, alias_url) == "https://bare.lambda-url.us-east-1.on.aws/"
        assert dl.unqualified_url_besides(client, NAME, alias_url) is None  # the same URL
        assert dl.unqualified_url_besides(client, NAME, alias_url) is None  # none
        stub.assert_no_pending_responses()


def test_a_published_version_that_fails_is_reported_with_its_reason():
    client = stubbed_lambda()
    with Stubber(client) as stub:  # published_version_active polls GetFunctionConfiguration of the version
        stub.add_response("get_function_configuration", {"FunctionName": NAME, "Version": "3", "State": "Failed",
                                                         "StateReason": "Image pull failed"},
                          expected_params={"FunctionName": NAME, "Qualifier": "3"})
        with pytest.raises(dl.DeployError, match=f"function {NAME}:3: published_version_active failed: Image pull failed"):
            dl._wait(client, "published_version_active", NAME, qualifier="3")


def test_provisioned_concurrency_request_then_wait_until_ready(capsys):
    client = stubbed_lambda()
    with Stubber(client) as stub:
        stub.add_client_error("get_provisioned_concurrency_config", NO_PROVISIONED, expected_params=ALIAS_LIVE)  # lowering?
        stub.add_client_error("get_provisioned_concurrency_config", NO_PROVISIONED, expected_params=ALIAS_LIVE)  # under way?
        stub.add_response("put_provisioned_concurrency_config", provisioned("IN_PROGRESS", available=0),
                          expected_params={**ALIAS_LIVE, "ProvisionedConcurrentExecutions": 2})
        stub.add_response("get_provisioned_concurrency_config", provisioned("IN_PROGRESS", available=1), expected_params=ALIAS_LIVE)
        stub.add_response("get_provisioned_concurrency_config", provisioned("READY"), expected_params=ALIAS_LIVE)
        dl.apply_concurrency(client, NAME, "live", None, 2, 3008)
        stub.assert_no_pending_responses()
    out = capsys.readouterr().out
    assert f"Provisioned concurrency on {NAME}:live: 2 environments of 3008 MB, billed while configured" in out
    assert f"Provisioned concurrency on {NAME}:live ready." in out


def test_a_failed_allocation_is_reported_with_lambdas_reason():
    client = stubbed_lambda()
    with Stubber(client) as stub:
        stub.add_response("get_provisioned_concurrency_config", provisioned("FAILED", reason="old init failed"))
        stub.add_response("put_provisioned_concurrency_config", provisioned("IN_PROGRESS", available=0))
        stub.add_response("get_provisioned_concurrency_config",
                          provisioned("FAILED", available=0, reason="FUNCTION_ERROR_INIT_FAILURE"))
        # A failure left by an earlier deploy does not stop this one; this one's own failure does.
        with pytest.raises(dl.DeployError, match=f"{NAME}:live failed: FUNCTION_ERROR_INIT_FAILURE"):
            dl.set_provisioned_concurrency(client, NAME, "live", 2, 3008)
        stub.assert_no_pending_responses()


def test_an_allocation_that_outlasts_the_wait_says_how_far_it_got():
    client = stubbed_lambda()
    with Stubber(client) as stub:
        for _ in range(dl.WAITER_MAX_ATTEMPTS):
            stub.add_response("get_provisioned_concurrency_config", provisioned("IN_PROGRESS", requested=3, available=1))
        with pytest.raises(dl.DeployError, match=r"still IN_PROGRESS .* \(1 of 3 ready\)"):
            dl.wait_provisioned(client, NAME, "live")


def test_provisioned_concurrency_0_removes_it(capsys):
    client = stubbed_lambda()
    with Stubber(client) as stub:
        for _ in range(2):
            stub.add_response("get_provisioned_concurrency_config", provisioned("READY", requested=2))
            stub.add_response("delete_provisioned_concurrency_config", {}, expected_params=ALIAS_LIVE)
        stub.add_response("get_provisioned_concurrency_config", provisioned("READY", requested=2))
        stub.add_client_error("delete_provisioned_concurrency_config", NO_PROVISIONED, expected_params=ALIAS_LIVE)
        for _ in range(3):  # removed twice, then already gone (tolerated)
            dl.apply_concurrency(client, NAME, "live", None, 0, 3008)
        stub.assert_no_pending_responses()
    assert f"Provisioned concurrency on {NAME}:live removed." in capsys.readouterr().out


class ConcurrencyLambda:
    """Lambda's concurrency rules: provisioned environments count against the reserved cap, so neither
    call may leave the cap below them (Lambda answers InvalidParameterValueException)."""

    def __init__(self, reserved, provisioned):
        self.reserved, self.provisioned = reserved, provisioned

    def _check(self, reserved, provisioned, operation):
        if reserved is not None and provisioned > reserved:
            raise client_error("InvalidParameterValueException",
                               "provisioned concurrency exceeds the reserved concurrency", operation)
        self.reserved, self.provisioned = reserved, provisioned

    def put_function_concurrency(self, FunctionName, ReservedConcurrentExecutions):
        self._check(ReservedConcurrentExecutions, self.provisioned, "PutFunctionConcurrency")

    def delete_function_concurrency(self, FunctionName):
        self.reserved = None

    def put_provisioned_concurrency_config(self, FunctionName, Qualifier, ProvisionedConcurrentExecutions):
        self._check(self.reserved, ProvisionedConcurrentExecutions, "PutProvisionedConcurrencyConfig")

    def delete_provisioned_concurrency_config(self, FunctionName, Qualifier):
        self.provisioned = 0

    def get_provisioned_concurrency_config(self, FunctionName, Qualifier):
        if not self.provisioned:
            raise client_error(NO_PROVISIONED, "No Provisioned Concurrency Config found", "GetProvisionedConcurrencyConfig")
        return provisioned("READY", requested=self.provisioned)


@pytest.mark.parametrize("before, after", [
    ((2, 2), (10, 8)),  # both raised: the cap first
    ((10, 8), (2, 2)),  # both lowered: the provisioned environments first
    ((4, 4), ("none", 6)),  # the cap removed, more provisioned
    ((8, 6), (2, 0)),  # provisioned removed, the cap lowered
])
def test_reserved_and_provisioned_change_together_in_an_order_lambda_accepts(before, after):
    fake = ConcurrencyLambda(*before)
    dl.apply_concurrency(fake, NAME, "live", dl.REMOVE if after[0] == "none" else after[0], after[1], 3008)
    assert (fake.reserved, fake.provisioned) == (None if after[0] == "none" else after[0], after[1])


def test_main_with_provisioned_concurrency_end_to_end(aws, monkeypatch, capsys):
    """moto for the function, its version, alias and reserved concurrency; a Stubber for the provisioned
    concurrency requests moto lacks (they must name the alias main chose)."""
    stubbed = stubbed_lambda()
    for operation in ("get_provisioned_concurrency_config", "put_provisioned_concurrency_config"):
        monkeypatch.setattr(aws, operation, getattr(stubbed, operation))
    invocations = []
    monkeypatch.setattr(aws, "invoke", invoke_returning({"generated_text": " there"}, calls=invocations))
    with Stubber(stubbed) as stub:
        stub.add_client_error("get_provisioned_concurrency_config", NO_PROVISIONED, expected_params=ALIAS_LIVE)
        stub.add_client_error("get_provisioned_concurrency_config", NO_PROVISIONED, expected_params=ALIAS_LIVE)
        stub.add_response("put_provisioned_concurrency_config", provisioned("IN_PROGRESS", available=0),
                          expected_params={**ALIAS_LIVE, "ProvisionedConcurrentExecutions": 2})
        stub.add_response("get_provisioned_concurrency_config", provisioned("READY"), expected_params=ALIAS_LIVE)
        args = BASE_ARGS + ["--provisioned-concurrency", "2", "--reserved-concurrency", "4"]
        assert dl.main(args, client=aws) == 0
        stub.assert_no_pending_responses()
    assert aws.get_alias(FunctionName=NAME, Name="live")["FunctionVersion"] != "$LATEST"  # the default alias
    assert aws.get_function_concurrency(FunctionName=NAME)["ReservedConcurrentExecutions"] == 4
    assert [call.get("Qualifier") for call in invocations] == ["live"]
    assert "Smoke test passed" in capsys.readouterr().out


def test_a_concurrency_error_from_lambda_is_one_line_and_exit_1(aws, monkeypatch, capsys):
    def put_function_concurrency(**kwargs):
        raise client_error("InvalidParameterValueException", "Specified ReservedConcurrentExecutions for function "
                           "decreases account's UnreservedConcurrentExecution below its minimum value of [100].",
                           "PutFunctionConcurrency")

    monkeypatch.setattr(aws, "put_function_concurrency", put_function_concurrency)
    assert dl.main(BASE_ARGS + ["--reserved-concurrency", "950", "--no-smoke-test"], client=aws) == 1
    err = capsys.readouterr().err
    assert "PutFunctionConcurrency failed: InvalidParameterValueException: Specified ReservedConcurrentExecutions" in err
    assert "Traceback" not in err


def test_parse_concurrency_and_alias():
    args = dl.parse_args(BASE_ARGS)
    assert (args.alias, args.reserved_concurrency, args.provisioned_concurrency) == (None, None, None)
    args = dl.parse_args(BASE_ARGS + ["--provisioned-concurrency", "2"])
    assert (args.alias, args.provisioned_concurrency) == ("live", 2)  # provisioned needs an alias: the default
    args = dl.parse_args(BASE_ARGS + ["--alias", "blue_2", "--provisioned-concurrency", "0", "--reserved-concurrency", "NONE"])
    assert (args.alias, args.provisioned_concurrency, args.reserved_concurrency) == ("blue_2", 0, dl.REMOVE)
    args = dl.parse_args(BASE_ARGS + ["--reserved-concurrency", "3", "--provisioned-concurrency", "3"])
    assert (args.reserved_concurrency, args.provisioned_concurrency) == (3, 3)


@pytest.mark.parametrize("extra, message", [
    (["--reserved-concurrency", "0"], "throttles every invocation"),
    (["--reserved-concurrency", "-3"], "throttles every invocation"),
    (["--reserved-concurrency", "lots"], "expected a whole number of execution environments"),
    (["--provisioned-concurrency", "-1"], "or 0 to remove provisioned concurrency"),
    (["--provisioned-concurrency", "1.5"], "expected a whole number of execution environments"),
    (["--reserved-concurrency", "2", "--provisioned-concurrency", "3"], "exceeds --reserved-concurrency 2"),
    (["--alias", "42"], "not all digits"),
    (["--alias", "$LATEST"], "an alias name is"),
    (["--alias", "my alias"], "an alias name is"),
    (["--alias", "a" * 129], "an alias name is"),
])
def test_bad_concurrency_or_alias_exit_2(extra, message, capsys):
    with pytest.raises(SystemExit) as exc:
        dl.main(BASE_ARGS + extra, client=object())  # never used: parsing fails first
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
