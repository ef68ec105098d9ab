"""Deploy the text-generation container image to AWS Lambda, then check that it answers.

    python scripts/deploy_lambda.py \\
        --image-uri 123456789012.dkr.ecr.us-east-1.amazonaws.com/gpt2-text-generator:v1 \\
        --function-name gpt2-text-generator \\
        --role-arn arn:aws:iam::123456789012:role/gpt2-text-generator-lambda \\
        [--region us-east-1] [--memory 3008] [--timeout 120] [--env KEY=VALUE ...] \\
        [--alias live] [--reserved-concurrency N|none] [--provisioned-concurrency N] \\
        [--function-url] [--no-smoke-test] [--smoke-prompt "Once upon a time"]

Creates the function (PackageType Image) or points it at the new image and applies memory, timeout and
environment (``HF_HUB_OFFLINE=1`` with ``--env`` over it), waiting each time until Lambda has finished.

Lambda runs one request per execution environment, so concurrency is environments:
``--reserved-concurrency N`` caps the function at N environments (and sets them aside from the account's
pool; ``none`` removes a cap set earlier). ``--alias NAME`` publishes the deployed code as a version and
points the alias at it (created if missing); ``--provisioned-concurrency N`` keeps N environments of that
version initialized behind the alias (``live`` unless ``--alias`` says otherwise; ``0`` removes it) and waits
until Lambda reports them ready. Provisioned environments are billed while configured, used or not.

``--function-url`` creates a public Function URL (AuthType NONE) if there is none and prints it; anyone who
knows it can call the function. With an alias the URL is the alias's, so calls reach the published version
and its provisioned environments (a URL of the bare function would run $LATEST: the script warns if one
exists). The smoke test then invokes the function (through the alias, if any) and expects generated text.

Concurrency values and alias names are checked here (exit 2); beyond their shape Lambda validates image
URIs, role ARNs, memory, timeout, environment names and the account's concurrency limits itself, and its
ClientError is printed as one line. Exit status: 0 deployed (and smoke test passed), 1 an AWS error, a
failed wait or a failed smoke test, 2 bad arguments.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
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
# The alias provisioned concurrency goes on when --alias does not name one.
DEFAULT_ALIAS = "live"
# Lambda's alias names: letters, digits, - and _, at most 128, not all digits (that names a version).
ALIAS_PATTERN = re.compile(r"(?!\d+$)[A-Za-z0-9_-]{1,128}")
REMOVE = "none"  # --reserved-concurrency none: remove the function's cap


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


def _wait(client: Any, waiter_name: str, name: str, qualifier: Optional[str] = None) -> None:
    qualified = {"Qualifier": qualifier} if qualifier else {}
    try:
        client.get_waiter(waiter_name).wait(
            FunctionName=name, WaiterConfig={"Delay": WAITER_DELAY, "MaxAttempts": WAITER_MAX_ATTEMPTS}, **qualified
        )
    except WaiterError as exc:
        # The waiter's own message ("Waiter encountered a terminal failure state") does not say why.
        last = exc.last_response or {}
        config = last.get("Configuration", last)  # GetFunction nests it; GetFunctionConfiguration does not
        reason = (config.get("StateReason") or config.get("LastUpdateStatusReason")
                  or last.get("Error", {}).get("Message") or str(exc))
        where = f"{name}:{qualifier}" if qualifier else name
        raise DeployError(f"function {where}: {waiter_name} failed: {reason}") from exc


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


def publish(client: Any, cfg: DeployConfig) -> str:
    """Publish what was just deployed as a version and wait until it is active; returns its number. (Lambda
    publishes nothing new when code and configuration are unchanged since the last version: it returns that.)"""
    version = client.publish_version(FunctionName=cfg.function_name, Description=cfg.image_uri[-256:])["Version"]
    _wait(client, "published_version_active", cfg.function_name, qualifier=version)
    return version


def point_alias(client: Any, name: str, alias: str, version: str) -> str:
    """Point `alias` wholly at `version`, creating it if missing; returns "created", "updated" or "unchanged"."""
    try:
        current = client.get_alias(FunctionName=name, Name=alias)
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        client.create_alias(FunctionName=name, Name=alias, FunctionVersion=version)
        return "created"
    weighted = (current.get("RoutingConfig") or {}).get("AdditionalVersionWeights")
    if current.get("FunctionVersion") == version and not weighted:
        return "unchanged"
    # A weighted alias (a canary left by another tool) would keep sending part of the traffic elsewhere.
    routing = {"RoutingConfig": {"AdditionalVersionWeights": {}}} if weighted else {}
    client.update_alias(FunctionName=name, Name=alias, FunctionVersion=version, **routing)
    return "updated"


def _provisioned_config(client: Any, name: str, alias: str) -> Dict[str, Any]:
    """The alias's provisioned concurrency configuration, {} when it has none."""
    try:
        return client.get_provisioned_concurrency_config(FunctionName=name, Qualifier=alias)
    except ClientError as exc:
        if _error_code(exc) not in ("ProvisionedConcurrencyConfigNotFoundException", "ResourceNotFoundException"):
            raise
        return {}


def wait_provisioned(client: Any, name: str, alias: str, settle_only: bool = False) -> Dict[str, Any]:
    """Poll until Lambda has initialized the alias's provisioned environments (Status READY); a FAILED
    allocation (the version's init failed, the account's limit) raises DeployError with Lambda's reason,
    unless `settle_only` (waiting for an allocation under way to end, whichever way)."""
    for attempt in range(WAITER_MAX_ATTEMPTS):
        config = _provisioned_config(client, name, alias)
        status = config.get("Status")
        if status in (None, "READY") or (status == "FAILED" and settle_only):
            return config
        if status == "FAILED":
            raise DeployError(f"provisioned concurrency on {name}:{alias} failed: {config.get('StatusReason', 'no reason given')}")
        if attempt + 1 < WAITER_MAX_ATTEMPTS:
            time.sleep(WAITER_DELAY)
    raise DeployError(
        f"provisioned concurrency on {name}:{alias} still {status} after {WAITER_DELAY * WAITER_MAX_ATTEMPTS} s "
        f"({config.get('AvailableProvisionedConcurrentExecutions', 0)} of "
        f"{config.get('RequestedProvisionedConcurrentExecutions')} ready); Lambda goes on allocating: "
        f"aws lambda get-provisioned-concurrency-config --function-name {name} --qualifier {alias}")


def set_reserved_concurrency(client: Any, name: str, reserved: Any) -> None:
    if reserved == REMOVE:
        client.delete_function_concurrency(FunctionName=name)
        print(f"Reserved concurrency of {name} removed (it draws on the account's unreserved pool).", flush=True)
    else:
        client.put_function_concurrency(FunctionName=name, ReservedConcurrentExecutions=reserved)
        print(f"Reserved concurrency of {name}: {reserved} environments at most, set aside for it.", flush=True)


def set_provisioned_concurrency(client: Any, name: str, alias: str, count: int, memory: int) -> None:
    if count == 0:
        try:
            client.delete_provisioned_concurrency_config(FunctionName=name, Qualifier=alias)
        except ClientError as exc:
            if _error_code(exc) not in ("ProvisionedConcurrencyConfigNotFoundException", "ResourceNotFoundException"):
                raise
        print(f"Provisioned concurrency on {name}:{alias} removed.", flush=True)
        return
    wait_provisioned(client, name, alias, settle_only=True)  # one under way (the alias just moved) ends first
    client.put_provisioned_concurrency_config(FunctionName=name, Qualifier=alias, ProvisionedConcurrentExecutions=count)
    print(f"Provisioned concurrency on {name}:{alias}: {count} environments of {memory} MB, billed while "
          "configured; waiting until Lambda has initialized them ...", flush=True)
    wait_provisioned(client, name, alias)
    print(f"Provisioned concurrency on {name}:{alias} ready.", flush=True)


def apply_concurrency(client: Any, name: str, alias: Optional[str], reserved: Any, provisioned: Optional[int],
                      memory: int) -> None:
    """Set the reserved cap and the alias's provisioned concurrency (None: leave as is). Lambda refuses a cap
    below the provisioned environments, so a lowered provisioned count goes first, a raised one last."""
    def reserve() -> None:
        if reserved is not None:
            set_reserved_concurrency(client, name, reserved)

    def provision() -> None:
        if provisioned is not None:
            set_provisioned_concurrency(client, name, alias, provisioned, memory)

    lowering = provisioned is not None and provisioned < _provisioned_config(client, name, alias).get(
        "RequestedProvisionedConcurrentExecutions", 0)
    for step in ((provision, reserve) if lowering else (reserve, provision)):
        step()


def _add_permission_once(client: Any, **kwargs: Any) -> None:
    """add_permission, tolerating the statement already being there from an earlier deploy."""
    try:
        client.add_permission(**kwargs)
    except ClientError as exc:
        if _error_code(exc) != "ResourceConflictException":
            raise


def ensure_function_url(client: Any, name: str, qualifier: Optional[str] = None) -> str:
    """The URL of the function (of its alias `qualifier`, if given), created with AuthType NONE if missing
    and made publicly invocable."""
    qualified = {"Qualifier": qualifier} if qualifier else {}
    try:
        url_config = client.get_function_url_config(FunctionName=name, **qualified)
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        url_config = client.create_function_url_config(FunctionName=name, AuthType="NONE", **qualified)
    where = f"{name}:{qualifier}" if qualifier else name
    if url_config.get("AuthType") != "NONE":
        # Never widen an existing IAM-protected URL behind the user's back.
        print(f"warning: the Function URL of {where} uses AuthType {url_config.get('AuthType')}; left unchanged, "
              "no public permission added (callers must sign requests with SigV4)", file=sys.stderr)
        return url_config["FunctionUrl"]
    _add_permission_once(client, FunctionName=name, StatementId=URL_PERMISSION_SID,
                         Action="lambda:InvokeFunctionUrl", Principal="*", FunctionUrlAuthType="NONE", **qualified)
    # Since October 2025 a public URL also needs lambda:InvokeFunction; this one only for calls through the URL.
    _add_permission_once(client, FunctionName=name, StatementId=URL_INVOKE_PERMISSION_SID,
                         Action="lambda:InvokeFunction", Principal="*", InvokedViaFunctionUrl=True, **qualified)
    return url_config["FunctionUrl"]


def unqualified_url_besides(client: Any, name: str, alias_url: str) -> Optional[str]:
    """The URL of the bare function ($LATEST) when it exists besides the alias's: calls to it miss the
    published version and its provisioned environments."""
    try:
        url = client.get_function_url_config(FunctionName=name)["FunctionUrl"]
    except ClientError as exc:
        if _error_code(exc) != "ResourceNotFoundException":
            raise
        return None
    return url if url != alias_url else None


def smoke_test(client: Any, name: str, prompt: str = DEFAULT_SMOKE_PROMPT, qualifier: Optional[str] = None) -> str:
    """Invoke the function (its alias `qualifier`, if given) once, synchronously; returns the generated text
    or raises SmokeTestError."""
    payload = json.dumps({"prompt": prompt, "max_new_tokens": 20}).encode("utf-8")
    qualified = {"Qualifier": qualifier} if qualifier else {}
    response = client.invoke(FunctionName=name, InvocationType="RequestResponse", Payload=payload, **qualified)
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


def _whole_number(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of execution environments, got {value!r}") from None


def _reserved(value: str) -> Any:
    if value.strip().lower() == REMOVE:
        return REMOVE
    count = _whole_number(value)
    if count < 1:
        raise argparse.ArgumentTypeError(f"{count}: a cap under 1 throttles every invocation (the function could "
                                         f"not run at all); give at least 1, or '{REMOVE}' to remove the cap")
    return count


def _provisioned(value: str) -> int:
    count = _whole_number(value)
    if count < 0:
        raise argparse.ArgumentTypeError(f"{count}: give 1 or more environments, or 0 to remove provisioned concurrency")
    return count


def _alias(value: str) -> str:
    if not ALIAS_PATTERN.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r}: an alias name is 1-128 letters, digits, '-' or '_', "
                                         "not all digits (that would name a version)")
    return value


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
    parser.add_argument("--alias", type=_alias,
                        help="publish a version and point this alias at it; the Function URL and smoke test use it")
    parser.add_argument("--reserved-concurrency", type=_reserved, metavar="N|none",
                        help="cap the function at N execution environments (one request each); none removes the cap")
    parser.add_argument("--provisioned-concurrency", type=_provisioned, metavar="N",
                        help=f"keep N environments initialized behind the alias (default alias {DEFAULT_ALIAS}); "
                             "billed while configured; 0 removes it")
    parser.add_argument("--function-url", action="store_true",
                        help="ensure a public Function URL (the alias's, with --alias) and print it")
    parser.add_argument("--no-smoke-test", dest="smoke_test", action="store_false",
                        help="skip the test invocation after deploying")
    parser.add_argument("--smoke-prompt", default=DEFAULT_SMOKE_PROMPT, help="prompt of the test invocation")
    args = parser.parse_args(argv)
    reserved, provisioned = args.reserved_concurrency, args.provisioned_concurrency
    if provisioned and isinstance(reserved, int) and provisioned > reserved:
        parser.error(f"--provisioned-concurrency {provisioned} exceeds --reserved-concurrency {reserved}: "
                     "provisioned environments count against the function's cap, and Lambda refuses more")
    if provisioned is not None and args.alias is None:
        args.alias = DEFAULT_ALIAS  # Lambda provisions published versions only: through an alias here
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
        if args.alias:
            version = publish(client, cfg)
            change = point_alias(client, cfg.function_name, args.alias, version)
            print(f"Version {version} published; alias {args.alias} {change}, on version {version}.", flush=True)
        apply_concurrency(client, cfg.function_name, args.alias, args.reserved_concurrency,
                          args.provisioned_concurrency, cfg.memory)
        if args.function_url:
            url = ensure_function_url(client, cfg.function_name, args.alias)
            print(f"Function URL: {url}", flush=True)
            bare = args.alias and unqualified_url_besides(client, cfg.function_name, url)
            if bare:
                print(f"warning: {bare} (the URL of {cfg.function_name} without alias) runs $LATEST, not alias "
                      f"{args.alias} and its provisioned environments; point clients at {url}, then remove it: "
                      f"aws lambda delete-function-url-config --function-name {cfg.function_name}", file=sys.stderr)
        if args.smoke_test:
            print(f"Smoke test: invoking with prompt {args.smoke_prompt!r} ...", flush=True)  # a cold start is slow
            text = smoke_test(client, cfg.function_name, args.smoke_prompt, args.alias)
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
