"""Security properties that are not about input: no debug mode, nothing secret in the logs, every
limit documented. (Non-root, read-only image: tests/test_container.py; keys: tests/test_access.py.)"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys

import pytest
import requests

from devtools.servers import ROOT, gunicorn_server
from textgen.server import create_app
from textgen.settings import Settings


def test_debug_mode_cannot_be_switched_on(monkeypatch, tiny_model_dir):
    monkeypatch.setenv("FLASK_DEBUG", "1")
    with pytest.raises(RuntimeError, match="debug mode is not allowed"):
        create_app(Settings.from_env(environ={}, model_id=tiny_model_dir))
    # `python app.py` (the development server) refuses too, before loading anything.
    env = {**os.environ, "FLASK_DEBUG": "1", "MODEL_ID": tiny_model_dir}
    run = subprocess.run([sys.executable, "app.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode != 0 and "debug mode is not allowed" in run.stderr


def test_prompts_outputs_and_keys_stay_out_of_the_logs(tiny_model_dir):
    prompt = "zebra canary 4471 quietly"
    key = "key-canary-9f3e2d1c"
    with gunicorn_server(tiny_model_dir, API_KEY=key, LOG_LEVEL="INFO") as (url, proc):
        auth = {"Authorization": f"Bearer {key}"}
        body = {"inputs": prompt, "parameters": {"max_new_tokens": 24, "do_sample": False}}
        text = requests.post(url + "/generate", json=body, headers=auth, timeout=60).json()["generated_text"]
        requests.post(url + "/generate_stream", json=body, headers=auth, timeout=60).close()
        requests.post(url + "/v1/completions", json={"prompt": prompt, "max_tokens": 4}, headers=auth, timeout=60)
        requests.post(url + "/generate", json=body, headers={"Authorization": "Bearer wrong-" + key}, timeout=60)
        requests.post(url + "/generate", json={"inputs": prompt, "parameters": {"top_p": 7}}, headers=auth, timeout=60)
    output = proc.stdout.read()
    assert '"POST /generate HTTP/1.1" 200' in output  # the log was captured
    assert prompt not in output and "zebra" not in output
    assert key not in output
    longest = max(re.split(r"\s+", text), key=len)
    assert len(text) < 8 or text not in output
    assert len(longest) < 6 or longest not in output


def test_every_setting_is_documented():
    reference = open(os.path.join(ROOT, "docs", "configuration.md"), encoding="utf-8").read()
    missing = [f.name.upper() for f in dataclasses.fields(Settings) if f"`{f.name.upper()}`" not in reference]
    assert missing == []
