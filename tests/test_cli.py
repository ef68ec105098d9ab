"""`python -m textgen`: `generate` run in a subprocess as a user runs it, `serve` answering through gunicorn."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import fields

import pytest
import requests

from devtools.servers import ROOT, free_port, stop_process, wait_healthy
from textgen.transports.cli import build_parser
from textgen.engine import Engine
from textgen.model.loader import load_model
from textgen.settings import Settings
from textgen.validation import validate_generate

PROMPT = "Hello world"


@pytest.fixture(scope="module")
def cli_env(tiny_model_dir):
    # The machine's own settings (QUANTIZE, PORT, ...) must not change what these tests check.
    names = {f.name.upper() for f in fields(Settings)}
    env = {k: v for k, v in os.environ.items() if k not in names}
    return {**env, "MODEL_ID": tiny_model_dir, "THREADS": "1", "PYTHONIOENCODING": "utf-8"}


@pytest.fixture(scope="module")
def in_process(tiny_model_dir):
    """The engine in this process on the same model: what the command line must reproduce."""
    settings = Settings.from_env(environ={}, model_id=tiny_model_dir, threads=1)
    engine = Engine(*load_model(settings), settings).start()
    yield lambda body: engine.submit(validate_generate(body, settings)).result().text
    engine.stop()


def run_cli(env, *args):
    # Bytes, decoded here: text mode would turn a generated "\r" into "\n".
    done = subprocess.run([sys.executable, "-m", "textgen", *args], cwd=ROOT, env=env, capture_output=True, timeout=120)
    return done.returncode, done.stdout.decode("utf-8"), done.stderr.decode("utf-8")


def generated(env, *args) -> str:
    code, out, err = run_cli(env, "generate", PROMPT, "--max-new-tokens", "12", *args)
    assert code == 0, err
    assert out.endswith("\n")
    return out[:-1]


@pytest.mark.parametrize(
    "args, params",
    [
        (["--greedy"], {"do_sample": False}),
        (["--seed", "7", "--temperature", "0.8", "--top-k", "20"], {"seed": 7, "temperature": 0.8, "top_k": 20}),
    ],
    ids=["greedy", "seeded-sampling"],
)
def test_generate_matches_the_engine_in_process(cli_env, in_process, args, params):
    text = generated(cli_env, *args)
    assert text != ""
    assert text == in_process({"prompt": PROMPT, "max_new_tokens": 12, **params})


def test_stream_prints_the_same_text_also_with_a_stop_sequence(cli_env):
    plain = generated(cli_env, "--greedy")
    assert generated(cli_env, "--greedy", "--stream") == plain
    # A stop sequence from inside the text: its tokens are streamed before the engine cuts it from the
    # result, so the command must hold them back and print exactly the cut text.
    stop = plain[3:5]
    expected = plain[: plain.index(stop)]
    assert generated(cli_env, "--greedy", "--stop", stop) == expected
    assert generated(cli_env, "--greedy", "--stop", stop, "--stream") == expected


def test_json_prints_the_answer_with_details(cli_env):
    body = json.loads(generated(cli_env, "--json", "--seed", "5", "--max-new-tokens", "6"))
    assert isinstance(body["generated_text"], str)
    assert body["details"]["finish_reason"] in ("length", "eos_token")
    assert 1 <= body["details"]["generated_tokens"] <= 6
    assert body["details"]["seed"] == 5
    assert len(body["details"]["tokens"]) == body["details"]["generated_tokens"]  # as POST /generate's


@pytest.mark.parametrize(
    "option, value, field",
    [
        ("--max-new-tokens", "0", "max_new_tokens"),
        ("--max-new-tokens", "100000", "max_new_tokens"),  # over MAX_NEW_TOKENS_LIMIT: a settings check
        ("--top-p", "2", "top_p"),
    ],
)
def test_invalid_values_exit_2_with_the_field_named(cli_env, option, value, field):
    code, out, err = run_cli(cli_env, "generate", PROMPT, option, value)
    assert code == 2
    assert err.startswith("error: ") and f"`{field}`" in err
    assert "Traceback" not in err and out == ""


def test_help_documents_every_option(cli_env):
    code, out, _ = run_cli(cli_env, "--help")
    assert code == 0 and "generate" in out and "serve" in out
    options = "--max-new-tokens --temperature --top-k --top-p --seed --stop --greedy --stream --json --model --quantize"
    code, out, _ = run_cli(cli_env, "generate", "--help")
    assert code == 0 and all(option in out for option in options.split())
    # Every option of both commands has a help string (argparse would list it bare otherwise).
    commands = next(a for a in build_parser()._actions if a.dest == "command").choices
    for name, parser in commands.items():
        assert [a.dest for a in parser._actions if not a.help] == [], name
    code, out, _ = run_cli(cli_env, "serve", "--help")
    assert code == 0 and "--port" in out and "--host" in out and "gunicorn" in out


def test_serve_answers_health_and_stops_cleanly(cli_env, tmp_path):
    port = free_port()
    log = tmp_path / "serve.log"
    # From another directory: the command must find app.py and gunicorn.conf.py itself. `--log-level debug`
    # is not ours: it must reach gunicorn, which then prints its configuration.
    env = {**cli_env, "PYTHONPATH": ROOT}
    args = ["serve", "--port", str(port), "--host", "127.0.0.1", "--log-level", "debug"]
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "textgen", *args], cwd=tmp_path, env=env, stdout=out, stderr=out)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc=proc)
        assert requests.get(url + "/health", timeout=10).status_code == 200
    finally:
        stop_process(proc)
    output = log.read_text()
    assert proc.returncode == 0, output  # SIGTERM reached gunicorn's master (exec), which shut down cleanly
    assert f"Listening at: {url}" in output and "Current configuration" in output
