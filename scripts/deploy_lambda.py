"""Deploy the text-generation container image to AWS Lambda, then check that it answers.

    python scripts/deploy_lambda.py \\
        --image-uri 123456789012.dkr.ecr.us-east-1.amazonaws.com/gpt2-text-generator:v1 \\
        --function-name gpt2-text-generator \\
        --role-arn arn:aws:iam::123456789012:role/gpt2-text-generator-lambda \\
        [--region us-east-1] [--memory 3008] [--timeout 120] [--env KEY=VALUE ...] \\
        [--function-url] [--no-smoke-test] [--smoke-prompt "Once upon a time"]

Creates the function (PackageType Image) or points it at the new image and applies memory, timeout and
environment (``HF_HUB_OFFLINE=1`` with ``--env`` over it), waiting each time until Lambda has finished.
``--function-url`` creates a public Function URL (AuthType NONE) if there is none and prints it; anyone who
knows it can call the function. The smoke test then invokes the function once and expects generated text.

Arguments are not checked here beyond their shape: Lambda validates image URIs, role ARNs, memory, timeout
and environment names itself, and its ClientError is printed as one line. Exit status: 0 deployed (and
smoke test passed), 1 an AWS error, a failed wait or a failed smoke test, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Sequence

from botocore.exceptions import BotoCoreError, ClientError, WaiterError

DEFAULT_ENVIRONMENT = {"HF_HUB_OFFLINE": "1"}  # the weights are baked into the image; never contact the Hub
DEFAULT_SMOKE_PROMPT = "Once upon a time"
# Creating a function from a multi-GB image takes Lambda 1-3 minutes; wait up to 10. Tests set the delay to 0.
WAITER_DELAY = 5
WAITER_MAX_ATTEMPTS = 120
# Statement ids of the Function URL's public permissions (the ones the Lambda console uses).
URL_PERMISSION_SID = "FunctionURLAllowPublicAccess"
URL_INVOKE_PERMISSION_SID = "FunctionURLAllowInvokeAction"


class DeployError(Exception):
    """The function did not reach the awaited state (the waiter's reason is in the message)."""


class SmokeTestError(Exception):
    """The deployed function answered the smoke test with an error or without generated text."""


@dataclass
class DeployConfig:
    function_name: str
    image_uri: str
    role_arn: str
    memory: int = 3008  # Lambda gives CPU in proportion to memory; the model decodes on the CPU
    timeout: int = 120  # seconds; covers a cold start's model load
    environment: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENVIRONMENT))


def _error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _wait(client: Any, waiter_name: str, name: str) -> None:
    try:
        client.get_waiter(waiter_name).wait(
            FunctionName=name, WaiterConfig={"Delay": WAITER_DELAY, "MaxAttempts": WAITER_MAX_ATTEMPTS}
        )
    except WaiterError as exc:
        # The waiter's own message ("Waiter encountered a terminal failure state") does not say why.
        last = exc.last_response or {}
        config = last.get("Configuration", {})
        reason = (config.get("StateReason") or config.get("LastUpdateStatusReason")
                  or last.get("Error", {}).get("Message") or str(exc))
        raise DeployError(f"function {name}: {waiter_name} failed: {reason}") from exc


def deploy(client: Any, cfg: DeployConfig) -> str:
    """Create or update the function and wait until it is ready; returns "created" or "updated"."""
    name, environment = cfg.function_name, {"Variables": dict(cfg.environment)}
    try:
        config = client.get_function(FunctionName=name)["Configuration"]
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        client.create_function(
            FunctionName=name, PackageType="Image", Code={"ImageUri": cfg.image_uri}, Role=cfg.role_arn,
            MemorySize=cfg.memory, Timeout=cfg.timeout, Environment=environment, Architectures=["x86_64"],
        )
        _wait(client, "function_active_v2", name)
        return "created"
    # A function still being created or updated refuses changes (ResourceConflictException): let it finish.
    if config.get("State") == "Pending":
        _wait(client, "function_active_v2", name)
    if config.get("LastUpdateStatus") == "InProgress":
        _wait(client, "function_updated_v2", name)
    client.update_function_code(FunctionName=name, ImageUri=cfg.image_uri)
    _wait(client, "function_updated_v2", name)  # the same holds between the two updates
    client.update_function_configuration(
        FunctionName=name, MemorySize=cfg.memory, Timeout=cfg.timeout, Environment=environment
    )
    _wait(client, "function_updated_v2", name)
    return "updated"


def _add_permission_once(client: Any, **kwargs: Any) -> None:
    """add_permission, tolerating the statement already being there from an earlier deploy."""
    try:
        client.add_permission(**kwargs)
    except ClientError as exc:
        if _error_code(exc) != "ResourceConflictException":
            raise


def ensure_function_url(client: Any, name: str) -> str:
    """The function's URL, created with AuthType NONE if missing and made publicly invocable."""
    try:
        url_config = client.get_function_url_config(FunctionName=name)
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        url_config = client.create_function_url_config(FunctionName=name, AuthType="NONE")
    if url_config.get("AuthType") != "NONE":
        # Never widen an existing IAM-protected URL behind the user's back.
        print(f"warning: the Function URL of {name} uses AuthType {url_config.get('AuthType')}; left unchanged, "
              "no public permission added (callers must sign requests with SigV4)", file=sys.stderr)
        return url_config["FunctionUrl"]
    _add_permission_once(client, FunctionName=name, StatementId=URL_PERMISSION_SID,
                         Action="lambda:InvokeFunctionUrl", Principal="*", FunctionUrlAuthType="NONE")
    # Since October 2025 a public URL also needs lambda:InvokeFunction; this one only for calls through the URL.
    _add_permission_once(client, FunctionName=name, StatementId=URL_INVOKE_PERMISSION_SID,
                         Action="lambda:InvokeFunction", Principal="*", InvokedViaFunctionUrl=True)
    return url_config["FunctionUrl"]


def smoke_test(client: Any, name: str, prompt: str = DEFAULT_SMOKE_PROMPT) -> str:
    """Invoke the function once, synchronously; returns the generated text or raises SmokeTestError."""
    payload = json.dumps({"prompt": prompt, "max_new_tokens": 20}).encode("utf-8")
    response = client.invoke(FunctionName=name, InvocationType="RequestResponse", Payload=payload)
    text = response["Payload"].read().decode("utf-8", errors="replace")
    if response.get("FunctionError"):  # the runtime itself failed (crash, out of memory, timeout)
        raise SmokeTestError(f"function error ({response['FunctionError']}): {text}")
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and "error" in body:  # the service's own error body
        raise SmokeTestError(f"error response ({body.get('error_type', 'unknown')}): {body['error']}")
    if not isinstance(body, dict) or not isinstance(body.get("generated_text"), str):
        raise SmokeTestError(f"no generated_text in response: {text!r}")
    return body["generated_text"]


def _env_pair(value: str) -> tuple:
    key, sep, val = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, val


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="deploy_lambda.py", description="Deploy the text-generation image to Lambda.")
    parser.add_argument("--image-uri", required=True, help="ECR image, ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPO:TAG")
    parser.add_argument("--function-name", required=True)
    parser.add_argument("--role-arn", required=True, help="execution role, arn:aws:iam::ACCOUNT:role/NAME")
    parser.add_argument("--region", help="AWS region (default: the image URI's, else boto3's configuration)")
    parser.add_argument("--memory", type=int, default=DeployConfig.memory, help="MB (default %(default)s)")
    parser.add_argument("--timeout", type=int, default=DeployConfig.timeout, help="seconds (default %(default)s)")
    parser.add_argument("--env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable, repeatable; merged over HF_HUB_OFFLINE=1")
    parser.add_argument("--function-url", action="store_true", help="ensure a public Function URL and print it")
    parser.add_argument("--no-smoke-test", dest="smoke_test", action="store_false",
                        help="skip the test invocation after deploying")
    parser.add_argument("--smoke-prompt", default=DEFAULT_SMOKE_PROMPT, help="prompt of the test invocation")
    args = parser.parse_args(argv)
    # Lambda runs images only from its own region's ECR, so the image URI names the region to deploy to.
    image_region = re.search(r"\.dkr\.ecr\.([a-z0-9-]+)\.amazonaws\.com", args.image_uri)
    args.region = args.region or (image_region.group(1) if image_region else None)
    return args


def make_client(region: Optional[str], function_timeout: int) -> Any:
    """A Lambda client whose read timeout outlasts the function's: botocore's default (60 s) would cut a cold
    start's smoke test short, and its retry would invoke the function a second time."""
    import boto3
    from botocore.config import Config

    config = Config(read_timeout=function_timeout + 30, connect_timeout=10,
                    retries={"mode": "standard", "max_attempts": 3})
    return boto3.client("lambda", region_name=region, config=config)


def main(argv: Optional[Sequence[str]] = None, client: Any = None) -> int:
    args = parse_args(argv)
    cfg = DeployConfig(args.function_name, args.image_uri, args.role_arn, args.memory, args.timeout,
                       {**DEFAULT_ENVIRONMENT, **dict(args.env)})
    try:
        client = client or make_client(args.region, cfg.timeout)
        print(f"Deploying {cfg.image_uri} to Lambda function {cfg.function_name} ...", flush=True)
        print(f"Function {cfg.function_name} {deploy(client, cfg)} and ready.", flush=True)
        if args.function_url:
            print(f"Function URL: {ensure_function_url(client, cfg.function_name)}", flush=True)
        if args.smoke_test:
            print(f"Smoke test: invoking with prompt {args.smoke_prompt!r} ...", flush=True)  # a cold start is slow
            text = smoke_test(client, cfg.function_name, args.smoke_prompt)
            print(f"Smoke test passed. generated_text: {text!r}")
    except ClientError as exc:
        error = exc.response.get("Error", {})
        print(f"error: {exc.operation_name or 'AWS call'} failed: {error.get('Code', 'Unknown')}: "
              f"{error.get('Message', exc)}", file=sys.stderr)
        return 1
    except SmokeTestError as exc:
        print(f"error: smoke test failed: {exc}", file=sys.stderr)
        return 1
    # DeployError: a failed wait. BotoCoreError: no credentials, no region, a parameter outside botocore's
    # model (memory under 128 MB), endpoint unreachable. One line each, not a traceback.
    except (DeployError, BotoCoreError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
