"""Command line: `python -m textgen generate "prompt"` (in-process, no HTTP) and `python -m textgen serve`.

`generate` goes through the same path as POST /generate (TGI's `Parameters` -> the typed request ->
Engine.submit -> the handle's events), so a prompt and its options behave exactly as the same JSON body
would over HTTP.
`serve` only execs gunicorn with the project's gunicorn.conf.py, so it runs as a deployment does.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import List, Optional

from ..errors import ServiceError
from ..settings import Settings

# Where app.py and gunicorn.conf.py live: the checkout (or /app in the image), above the package.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Exit status for bad input or configuration (argparse uses 2 for its own usage errors as well).
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m textgen",
        description="Text generation from the command line, or the HTTP service under gunicorn.",
        epilog="Settings not given as options come from environment variables (MODEL_ID, THREADS, ...).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    gen = commands.add_parser(
        "generate",
        help="generate text for a prompt in this process (no server)",
        description="Generate text for PROMPT in this process, with the same validation and engine as POST "
        "/generate. Options not given take the service's defaults (DEFAULT_* environment variables; "
        "sampling with top_k=50 unless --greedy).",
    )
    gen.add_argument("prompt", help="the text to continue")
    gen.add_argument(
        "--max-new-tokens", type=int, metavar="N", help="most tokens to generate (default: $DEFAULT_MAX_NEW_TOKENS, 50)"
    )
    gen.add_argument("--temperature", type=float, metavar="T", help="sampling temperature, > 0")
    gen.add_argument("--top-k", type=int, metavar="K", help="sample among the K most likely tokens, > 0")
    gen.add_argument(
        "--top-p", type=float, metavar="P", help="nucleus sampling: likeliest tokens up to probability P, in (0, 1]"
    )
    gen.add_argument("--seed", type=int, metavar="S", help="random seed, for reproducible sampling")
    gen.add_argument(
        "--stop", action="append", metavar="STR", help="stop before this text; repeat for several (up to 4)"
    )
    gen.add_argument("--greedy", action="store_true", help="always pick the most likely token (no sampling)")
    gen.add_argument("--stream", action="store_true", help="print the text token by token as it is generated")
    gen.add_argument(
        "--json",
        action="store_true",
        help="print the JSON answer of /generate, with details (finish_reason, tokens, seed); overrides --stream",
    )
    gen.add_argument("--model", metavar="MODEL_ID", help="hub id or local model directory (default: $MODEL_ID)")
    gen.add_argument(
        "--quantize", choices=("none", "int8", "int4"), help="weights: float32 as stored, int8 or int4 (default: $QUANTIZE)"
    )
    gen.set_defaults(run=generate)

    serve = commands.add_parser(
        "serve",
        usage="%(prog)s [-h] [--port N] [--host H] [GUNICORN_ARG ...]",
        help="run the HTTP service under gunicorn",
        description=f"Run `gunicorn -c gunicorn.conf.py app:app` from {ROOT}. Any other argument is passed to "
        "gunicorn as is (e.g. --log-level debug); see `gunicorn --help`.",
        # Without this, a gunicorn option that starts like one of ours (--ho...) would be taken as ours.
        allow_abbrev=False,
    )
    serve.add_argument("--port", type=int, metavar="N", help="port to listen on (default: $PORT, else 5000)")
    serve.add_argument("--host", metavar="H", help="address to bind (default: 0.0.0.0, every interface)")
    serve.set_defaults(run=serve_command)
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    # Known args only, so that `serve` can hand the rest to gunicorn; other commands take no extras.
    args, extra = parser.parse_known_args(argv)
    if args.command != "serve" and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.run(args, extra)
    except ServiceError as exc:  # the request broke a rule (validation, token budget): the message says which
        return _fail(exc.message)
    except ValueError as exc:  # a bad environment variable or setting (Settings, the model loader)
        return _fail(str(exc))


def generate(args: argparse.Namespace, extra: List[str]) -> int:
    overrides = {name: value for name, value in (("model_id", args.model), ("quantize", args.quantize)) if value}
    settings = Settings.from_env(**overrides)
    # Validate before loading the model: a bad option fails in a fraction of a second.
    request = _validate(args, settings)

    from ..engine import create_engine  # loads the model runtime: only once there is something to generate
    from ..model.preflight import NotServable, check_servable
    from .responses import result_body

    try:
        check_servable(settings)
    except NotServable as exc:  # one line, as the server says it at start
        return _fail(f"cannot serve this model: {exc}")
    try:
        engine = create_engine(settings)
    except (OSError, ValueError) as exc:  # no such directory or hub model, or a setting it cannot honour
        return _fail(f"cannot load model {settings.model_id!r}: {exc}")
    try:
        handle = engine.submit(request)
        try:
            result, tokens = _consume(handle, stream=args.stream and not args.json)
        except KeyboardInterrupt:
            handle.cancel()
            return 130
    finally:
        engine.stop()
    if args.json:
        print(json.dumps(result_body(request, result, tokens), ensure_ascii=False))
    elif not args.stream:
        print(result.text)
    return 0


def _validate(args: argparse.Namespace, settings: Settings):
    """The options as TGI's `parameters` (their bounds and messages), mapped into the request as
    POST /generate maps a body's."""
    from ..validation import FieldNames, Parameters, parse_model
    from ..validation.tgi import tgi_request

    # Only what was given is set, so the service's defaults apply to the rest, as over HTTP.
    options = {"details": True}
    for name in ("max_new_tokens", "temperature", "top_k", "top_p", "seed", "stop"):
        if getattr(args, name) is not None:
            options[name] = getattr(args, name)
    if args.greedy:
        options["do_sample"] = False
    parameters = parse_model(Parameters, options)
    return tgi_request(args.prompt, parameters, settings, args.stream, FieldNames(prompt="prompt"))


def _consume(handle, stream: bool):
    """Wait for the result and keep its token events (a streamed request's `details.tokens`); with
    `stream`, print the text as it comes (joined, exactly the result's text)."""
    from ..engine import GenerationResult

    tokens = []
    for event in handle.events():
        if isinstance(event, GenerationResult):
            if stream:
                _write("\n")
            return event, tokens
        tokens.append(event)
        if stream and event.released:
            _write(event.released)  # held back by the engine while it could begin a stop sequence
    raise AssertionError("event stream ended without a result")  # pragma: no cover - events() always ends so


def serve_command(args: argparse.Namespace, extra: List[str]) -> int:
    env = dict(os.environ)
    if args.port is not None:
        env["PORT"] = str(args.port)  # gunicorn.conf.py binds to $PORT, and the app's settings agree
    gunicorn_args = ["-c", os.path.join(ROOT, "gunicorn.conf.py")]
    if args.host:
        port = args.port if args.port is not None else Settings.from_env(env).port
        host = f"[{args.host}]" if ":" in args.host and not args.host.startswith("[") else args.host  # IPv6
        gunicorn_args += ["--bind", f"{host}:{port}"]  # command-line options override the config file
    if extra[:1] == ["--"]:
        extra = extra[1:]
    os.chdir(ROOT)  # `app:app` is imported from the working directory
    sys.stdout.flush()
    # exec, not a child process: signals (SIGTERM from a platform, Ctrl-C) reach gunicorn's master directly.
    os.execve(sys.executable, [sys.executable, "-m", "gunicorn", *gunicorn_args, *extra, "app:app"], env)
    return 0  # pragma: no cover - execve does not return


def _write(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return EXIT_USAGE
