"""Deploy the text-generation container image to AWS Lambda, then check that it answers.

Creates the function from an ECR image (PackageType "Image") when it does not exist, otherwise points it at
the new image and applies memory, timeout and environment. Optionally gives it a public Function URL, and
by default invokes it once (a direct invocation) to prove the deployed image loads the model and generates.

    python scripts/deploy_lambda.py \\
        --image-uri 123456789012.dkr.ecr.us-east-1.amazonaws.com/gpt2-text-generator:v1 \\
        --function-name gpt2-text-generator \\
        --role-arn arn:aws:iam::123456789012:role/gpt2-text-generator-lambda \\
        [--region us-east-1] [--memory 3008] [--timeout 120] [--env KEY=VALUE ...] \\
        [--function-url] [--no-smoke-test] [--smoke-prompt "Once upon a time"]

- ``--region``: defaults to the region in the ECR image URI (Lambda only runs images from its own region),
  else boto3's usual configuration (AWS_REGION / AWS_DEFAULT_REGION / ~/.aws/config).
- ``--memory`` (MB, default 3008): Lambda gives CPU in proportion to memory, and the model's weights plus
  torch need well over 1 GB; at least 3 GB is suggested. ``--timeout`` (s, default 120) covers a cold start.
- ``--env KEY=VALUE`` (repeatable) is merged over the defaults ``HF_HUB_OFFLINE=1`` (the weights are baked into
  the image; the Hub must not be contacted). The function's environment is replaced by the result.
- ``--function-url`` creates a Function URL with AuthType NONE if the function has none and grants the public
  invoke permissions it needs (``lambda:InvokeFunctionUrl``, and since October 2025 ``lambda:InvokeFunction``
  restricted to calls made through the URL); prints the URL. Anyone who knows the URL can call the function.
- The smoke test invokes the function with ``{"prompt": ..., "max_new_tokens": 20}`` and expects
  ``{"generated_text": ...}``; a function error, an ``{"error": ...}`` payload or no generated text exits 1.

The role needs at least the AWSLambdaBasicExecutionRole policy (logs); the caller needs lambda:* on the
function, iam:PassRole on the role, and the image's ECR repository must allow Lambda to pull it.
Exit status: 0 deployed (and smoke test passed), 1 an AWS error or a failed smoke test, 2 bad arguments.
Importable: ``deploy(client, cfg)``, ``ensure_function_url(client, name)``, ``smoke_test(client, name, prompt)``
and ``main(argv, client=None)`` take a boto3 Lambda client, so they can be tested with botocore's Stubber.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence

from botocore.exceptions import BotoCoreError, ClientError, WaiterError

DEFAULT_MEMORY_MB = 3008
DEFAULT_TIMEOUT_S = 120
DEFAULT_ENVIRONMENT: Dict[str, str] = {"HF_HUB_OFFLINE": "1"}
DEFAULT_SMOKE_PROMPT = "Once upon a time"
SMOKE_MAX_NEW_TOKENS = 20
ARCHITECTURES = ["x86_64"]

# Waiters poll every WAITER_DELAY seconds, at most WAITER_MAX_ATTEMPTS times: 10 minutes, enough for Lambda to
# optimise a multi-GB image on creation (usually 1-3 minutes). Tests set the delay to 0.
WAITER_DELAY = 5
WAITER_MAX_ATTEMPTS = 120

# Statement ids of the Function URL's public permissions (the ones the Lambda console uses).
URL_PERMISSION_SID = "FunctionURLAllowPublicAccess"
URL_INVOKE_PERMISSION_SID = "FunctionURLAllowInvokeAction"

# Lambda's limits: memory 128 MB - 10240 MB, timeout 1 s - 900 s; environment keys `[a-zA-Z][a-zA-Z0-9_]+`.
MEMORY_RANGE = (128, 10240)
TIMEOUT_RANGE = (1, 900)
ENV_KEY_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]+$")
# Keys Lambda sets itself and refuses in a function's configuration.
RESERVED_ENV_KEYS = frozenset(
    {
        "_HANDLER", "_X_AMZN_TRACE_ID", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_EXECUTION_ENV",
        "AWS_LAMBDA_FUNCTION_NAME", "AWS_LAMBDA_FUNCTION_MEMORY_SIZE", "AWS_LAMBDA_FUNCTION_VERSION",
        "AWS_LAMBDA_INITIALIZATION_TYPE", "AWS_LAMBDA_LOG_GROUP_NAME", "AWS_LAMBDA_LOG_STREAM_NAME",
        "AWS_ACCESS_KEY", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
        "AWS_LAMBDA_RUNTIME_API", "LAMBDA_TASK_ROOT", "LAMBDA_RUNTIME_DIR",
    }
)
# account.dkr.ecr.region.amazonaws.com[.cn]/repository[:tag][@sha256:digest], a tag or a digest at least
ECR_IMAGE_RE = re.compile(
    r"^(?P<account>\d{12})\.dkr\.ecr\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?"
    r"/(?P<repository>[a-z0-9._/-]+)(?::(?P<tag>[\w.-]+))?(?:@(?P<digest>sha256:[0-9a-f]{64}))?$"
)
ROLE_ARN_RE = re.compile(r"^arn:aws[a-zA-Z-]*:iam::\d{12}:role/\S+$")


class DeployError(Exception):
    """A deployment step that failed without an AWS error of its own (waiter failure, wrong package type)."""


class SmokeTestError(Exception):
    """The deployed function answered the smoke test with an error or without generated text."""


@dataclass
class DeployConfig:
    function_name: str
    image_uri: str
    role_arn: str
    memory: int = DEFAULT_MEMORY_MB
    timeout: int = DEFAULT_TIMEOUT_S
    environment: Dict[str, str] = field(default_factory=lambda: dict(DEFAULT_ENVIRONMENT))
    architectures: List[str] = field(default_factory=lambda: list(ARCHITECTURES))


def merged_environment(user_env: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The default environment with the user's variables over it."""
    env = dict(DEFAULT_ENVIRONMENT)
    env.update(user_env or {})
    return env


def _error_code(error: ClientError) -> str:
    return error.response.get("Error", {}).get("Code", "")


def _waiter(client: Any, preferred: str, fallback: str) -> Any:
    """The `_v2` waiters poll GetFunction; older botocore only has the GetFunctionConfiguration ones."""
    return client.get_waiter(preferred if preferred in client.waiter_names else fallback)


def _wait(client: Any, preferred: str, fallback: str, name: str, what: str) -> None:
    waiter = _waiter(client, preferred, fallback)
    try:
        waiter.wait(FunctionName=name, WaiterConfig={"Delay": WAITER_DELAY, "MaxAttempts": WAITER_MAX_ATTEMPTS})
    except WaiterError as exc:
        last = exc.last_response or {}
        config = last.get("Configuration", last)  # GetFunction nests it; GetFunctionConfiguration does not
        reason = (
            config.get("StateReason")
            or config.get("LastUpdateStatusReason")
            or last.get("Error", {}).get("Message")
            or str(exc)
        )
        raise DeployError(f"function {name} did not become {what}: {reason}") from exc


def wait_active(client: Any, name: str) -> None:
    _wait(client, "function_active_v2", "function_active", name, "active")


def wait_updated(client: Any, name: str) -> None:
    _wait(client, "function_updated_v2", "function_updated", name, "updated")


def get_function(client: Any, name: str) -> Optional[Dict[str, Any]]:
    """GetFunction's response, or None when the function does not exist."""
    try:
        return client.get_function(FunctionName=name)
    except ClientError as exc:
        if _error_code(exc) == "ResourceNotFoundException":
            return None
        raise


def create_function(client: Any, cfg: DeployConfig) -> Dict[str, Any]:
    response = client.create_function(
        FunctionName=cfg.function_name,
        PackageType="Image",
        Code={"ImageUri": cfg.image_uri},
        Role=cfg.role_arn,
        MemorySize=cfg.memory,
        Timeout=cfg.timeout,
        Environment={"Variables": dict(cfg.environment)},
        Architectures=list(cfg.architectures),
    )
    wait_active(client, cfg.function_name)
    return response


def update_function(client: Any, cfg: DeployConfig, existing: Mapping[str, Any]) -> Dict[str, Any]:
    config = existing.get("Configuration", {})
    package_type = config.get("PackageType", "Image")
    if package_type != "Image":
        raise DeployError(
            f"Function {cfg.function_name} exists with PackageType {package_type}; a function's package type "
            "cannot change. Delete it or deploy under another --function-name."
        )
    # A function still being created or updated refuses changes (ResourceConflictException): wait first.
    if config.get("State") == "Pending":
        wait_active(client, cfg.function_name)
    if config.get("LastUpdateStatus") == "InProgress":
        wait_updated(client, cfg.function_name)
    client.update_function_code(FunctionName=cfg.function_name, ImageUri=cfg.image_uri)
    wait_updated(client, cfg.function_name)
    response = client.update_function_configuration(
        FunctionName=cfg.function_name,
        MemorySize=cfg.memory,
        Timeout=cfg.timeout,
        Environment={"Variables": dict(cfg.environment)},
    )
    wait_updated(client, cfg.function_name)
    return response


def deploy(client: Any, cfg: DeployConfig) -> str:
    """Create or update the function and wait until it is ready; returns "created" or "updated"."""
    existing = get_function(client, cfg.function_name)
    if existing is None:
        create_function(client, cfg)
        return "created"
    update_function(client, cfg, existing)
    return "updated"


def _add_permission_once(client: Any, **kwargs: Any) -> bool:
    """add_permission; False when the statement id is already there (a re-deploy)."""
    try:
        client.add_permission(**kwargs)
        return True
    except ClientError as exc:
        if _error_code(exc) == "ResourceConflictException":
            return False
        raise


def ensure_function_url(client: Any, name: str) -> str:
    """The function's URL, created with AuthType NONE if missing and made publicly invocable."""
    try:
        url_config = client.get_function_url_config(FunctionName=name)
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        url_config = client.create_function_url_config(FunctionName=name, AuthType="NONE")
    auth_type = url_config.get("AuthType", "NONE")
    if auth_type != "NONE":
        # Never widen an existing IAM-protected URL behind the user's back.
        print(
            f"warning: the Function URL of {name} uses AuthType {auth_type}; left unchanged, no public "
            "permission added (callers must sign requests with SigV4)",
            file=sys.stderr,
        )
        return url_config["FunctionUrl"]
    _add_permission_once(
        client,
        FunctionName=name,
        StatementId=URL_PERMISSION_SID,
        Action="lambda:InvokeFunctionUrl",
        Principal="*",
        FunctionUrlAuthType="NONE",
    )
    # Since October 2025 new Function URLs also need lambda:InvokeFunction; limited to calls through the URL.
    _add_permission_once(
        client,
        FunctionName=name,
        StatementId=URL_INVOKE_PERMISSION_SID,
        Action="lambda:InvokeFunction",
        Principal="*",
        InvokedViaFunctionUrl=True,
    )
    return url_config["FunctionUrl"]


def smoke_test(client: Any, name: str, prompt: str = DEFAULT_SMOKE_PROMPT) -> str:
    """Invoke the function once, synchronously; returns the generated text or raises SmokeTestError."""
    payload = {"prompt": prompt, "max_new_tokens": SMOKE_MAX_NEW_TOKENS}
    response = client.invoke(
        FunctionName=name,
        InvocationType="RequestResponse",
        Payload=json.dumps(payload).encode("utf-8"),
    )
    raw = response["Payload"].read() if response.get("Payload") is not None else b""
    text = raw.decode("utf-8", errors="replace")
    try:
        body = json.loads(text) if text else None
    except ValueError:
        body = None
    if response.get("FunctionError"):
        raise SmokeTestError(f"function error ({response['FunctionError']}): {text}")
    if not isinstance(body, dict):
        raise SmokeTestError(f"response is not a JSON object: {text!r}")
    if "error" in body:
        raise SmokeTestError(f"error response ({body.get('error_type', 'unknown')}): {body['error']}")
    if not isinstance(body.get("generated_text"), str):
        raise SmokeTestError(f"no generated_text in response: {text}")
    return body["generated_text"]


# --- command line -------------------------------------------------------------------------------------------


def _env_pair(value: str) -> tuple:
    key, sep, val = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    if not ENV_KEY_RE.match(key):
        raise argparse.ArgumentTypeError(
            f"invalid variable name {key!r}: a letter then letters, digits or '_' (at least 2 characters)"
        )
    if key in RESERVED_ENV_KEYS:
        raise argparse.ArgumentTypeError(f"{key} is reserved by Lambda and cannot be set")
    return key, val


def _int_in(low: int, high: int, unit: str):
    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {value!r}") from None
        if not low <= number <= high:
            raise argparse.ArgumentTypeError(f"must be between {low} and {high} {unit}, got {number}")
        return number

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deploy_lambda.py",
        description="Create or update the text-generation Lambda function from an ECR container image.",
    )
    parser.add_argument("--image-uri", required=True,
                        help="ECR image, ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG (or @sha256:DIGEST)")
    parser.add_argument("--function-name", required=True)
    parser.add_argument("--role-arn", required=True, help="execution role, arn:aws:iam::ACCOUNT:role/NAME")
    parser.add_argument("--region", help="AWS region (default: the image URI's region)")
    parser.add_argument("--memory", type=_int_in(*MEMORY_RANGE, "MB"), default=DEFAULT_MEMORY_MB,
                        help=f"memory in MB; CPU grows with it (default {DEFAULT_MEMORY_MB}, >= 3008 suggested)")
    parser.add_argument("--timeout", type=_int_in(*TIMEOUT_RANGE, "seconds"), default=DEFAULT_TIMEOUT_S,
                        help=f"seconds (default {DEFAULT_TIMEOUT_S})")
    parser.add_argument("--env", type=_env_pair, action="append", default=[], metavar="KEY=VALUE",
                        help="environment variable, repeatable; merged over HF_HUB_OFFLINE=1")
    parser.add_argument("--function-url", action="store_true",
                        help="ensure a public Function URL (AuthType NONE) and print it")
    parser.add_argument("--no-smoke-test", dest="smoke_test", action="store_false",
                        help="skip the test invocation after deploying")
    parser.add_argument("--smoke-prompt", default=DEFAULT_SMOKE_PROMPT,
                        help=f"prompt of the test invocation (default {DEFAULT_SMOKE_PROMPT!r})")
    return parser


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    image = ECR_IMAGE_RE.match(args.image_uri)
    if not image or not (image.group("tag") or image.group("digest")):
        parser.error(
            f"--image-uri {args.image_uri!r} is not an ECR image URI "
            "(ACCOUNT.dkr.ecr.REGION.amazonaws.com/REPOSITORY:TAG or ...@sha256:DIGEST); Lambda only runs images from ECR"
        )
    if args.region and args.region != image.group("region"):
        parser.error(
            f"--region {args.region} differs from the image's region {image.group('region')}: "
            "Lambda needs the ECR repository in the function's region"
        )
    args.region = args.region or image.group("region")
    if not ROLE_ARN_RE.match(args.role_arn):
        parser.error(f"--role-arn {args.role_arn!r} is not an IAM role ARN (arn:aws:iam::ACCOUNT:role/NAME)")
    if not args.smoke_prompt.strip():
        parser.error("--smoke-prompt must not be empty")
    return args


def config_from_args(args: argparse.Namespace) -> DeployConfig:
    return DeployConfig(
        function_name=args.function_name,
        image_uri=args.image_uri,
        role_arn=args.role_arn,
        memory=args.memory,
        timeout=args.timeout,
        environment=merged_environment(dict(args.env)),
    )


def make_client(region: Optional[str], function_timeout: int = DEFAULT_TIMEOUT_S) -> Any:
    """A Lambda client whose read timeout outlasts the function's: botocore's default (60 s) would cut a cold
    start's smoke test short, and its retry would invoke the function a second time."""
    import boto3
    from botocore.config import Config

    config = Config(
        read_timeout=function_timeout + 30,
        connect_timeout=10,
        retries={"mode": "standard", "max_attempts": 3},
    )
    return boto3.client("lambda", region_name=region, config=config)


def main(argv: Optional[Sequence[str]] = None, client: Any = None) -> int:
    args = parse_args(argv)
    cfg = config_from_args(args)
    try:
        if client is None:
            client = make_client(args.region, cfg.timeout)
        print(f"Deploying {cfg.image_uri} to Lambda function {cfg.function_name} "
              f"({cfg.memory} MB, {cfg.timeout} s) ...", flush=True)
        action = deploy(client, cfg)
        print(f"Function {cfg.function_name} {action} and ready.", flush=True)
        if args.function_url:
            url = ensure_function_url(client, cfg.function_name)
            print(f"Function URL: {url}", flush=True)
        if args.smoke_test:
            print(f"Smoke test: invoking with prompt {args.smoke_prompt!r} ...", flush=True)
            text = smoke_test(client, cfg.function_name, args.smoke_prompt)
            print(f"Smoke test passed. generated_text: {text!r}")
    except ClientError as exc:
        error = exc.response.get("Error", {})
        operation = getattr(exc, "operation_name", "") or "AWS call"
        print(f"error: {operation} failed: {error.get('Code', 'Unknown')}: {error.get('Message', exc)}",
              file=sys.stderr)
        return 1
    except SmokeTestError as exc:
        print(f"error: smoke test failed: {exc}", file=sys.stderr)
        return 1
    except DeployError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BotoCoreError as exc:  # no credentials, no region, endpoint unreachable: one line, not a traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
