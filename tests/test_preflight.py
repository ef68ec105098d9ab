"""A model this install cannot serve is said in one line at start (textgen/model/preflight.py), by the
gunicorn master before any worker boots and by the CLI, instead of a worker's 58-line traceback."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from devtools.servers import ROOT, free_port
from tests.no_torch import hidden_torch_env
from textgen.model import preflight
from textgen.model.preflight import NotServable, check_servable
from textgen.settings import Settings

# A family with no graph builder (GPT-NeoX, Pythia's): what the image cannot serve.
NEOX_CONFIG = {"model_type": "gpt_neox", "architectures": ["GPTNeoXForCausalLM"], "hidden_size": 64,
               "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 400}

def config_dir(path, config):
    """A checkpoint as far as the start-up check reads it: its config."""
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    return str(path)


@pytest.fixture
def neox_dir(tmp_path):
    return config_dir(tmp_path / "neox", NEOX_CONFIG)


def settings(**fields):
    return Settings.from_env(environ={}, **fields)


def without_torch(monkeypatch):
    monkeypatch.setattr(preflight, "_installed", lambda package: package not in ("torch", "transformers"))


def error_of(s):
    with pytest.raises(NotServable) as info:
        check_servable(s)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_a_family_without_a_graph_builder_and_no_torch_names_its_type_and_the_families_served(neox_dir, monkeypatch):
    without_torch(monkeypatch)
    message = error_of(settings(model_id=neox_dir))
    assert "'gpt_neox'" in message and "(gemma3_text, gpt2, granite, llama, mistral, phi3, qwen2, qwen3, smollm3)" in message
    assert "torch and transformers" in message and "requirements-torch.txt" in message


def test_a_served_family_with_what_its_graph_does_not_compute_names_it(tmp_path, monkeypatch):
    """Gemma 2's logit soft-capping in a Gemma 3 config: refused by the native definitions, not ignored."""
    without_torch(monkeypatch)
    config = {"model_type": "gemma3_text", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
              "vocab_size": 400, "final_logit_softcapping": 30.0}
    message = error_of(settings(model_id=config_dir(tmp_path / "capped", config)))
    assert "model_type 'gemma3_text' with final_logit_softcapping 30.0 is not served without torch" in message


def test_the_same_family_with_torch_installed_goes_to_transformers_quietly(neox_dir, monkeypatch):
    monkeypatch.setattr(preflight, "_installed", lambda package: True)
    check_servable(settings(model_id=neox_dir))


def test_a_native_family_needs_no_torch(tiny_model_dir, monkeypatch):
    without_torch(monkeypatch)
    check_servable(settings(model_id=tiny_model_dir))  # GPT-2: the ONNX backend
    assert "MODEL_BACKEND=torch" in error_of(settings(model_id=tiny_model_dir, model_backend="torch"))


def test_a_native_family_without_weights_says_what_is_missing(tiny_model_dir, tmp_path, monkeypatch):
    without_torch(monkeypatch)
    config_only = tmp_path / "config-only"
    config_only.mkdir()
    (config_only / "config.json").write_text(open(os.path.join(tiny_model_dir, "config.json")).read())
    assert "has neither safetensors weights nor a prebuilt ONNX graph" in error_of(settings(model_id=str(config_only)))


def test_a_checkpoint_without_its_graph_where_onnx_is_absent_says_how_to_build_one(tiny_model_dir, tmp_path, monkeypatch):
    """The image has onnxruntime but not onnx (the graph is built at image build time): a checkpoint
    mounted there as the model cannot have its graph built by the worker."""
    monkeypatch.setattr(preflight, "_installed", lambda package: package not in ("torch", "transformers", "onnx"))
    message = error_of(settings(model_id=tiny_model_dir))
    assert "no ONNX graph for QUANTIZE=none" in message and "scripts/build_graph.py" in message
    prebuilt = tmp_path / "prebuilt"
    shutil.copytree(tiny_model_dir, prebuilt)
    graph = prebuilt / "onnx-none"
    graph.mkdir()
    (graph / "model.onnx").write_bytes(b"")  # found by name: the check reads no graph
    check_servable(settings(model_id=str(prebuilt)))


def test_a_forced_backend_that_cannot_serve_the_family_says_so(neox_dir):
    assert "MODEL_BACKEND=onnx: no ONNX graph for model_type 'gpt_neox'" in error_of(settings(model_id=neox_dir, model_backend="onnx"))


def test_int4_for_a_family_only_transformers_serves_says_so(neox_dir, monkeypatch):
    """QUANTIZE=int4 is ONNX Runtime's: with MODEL_BACKEND=auto a family without a graph builder is refused
    at start (torch installed or not), rather than served in float32 by transformers."""
    monkeypatch.setattr(preflight, "_installed", lambda package: True)
    message = error_of(settings(model_id=neox_dir, quantize="int4"))
    assert "QUANTIZE=int4" in message and "'gpt_neox'" in message and "QUANTIZE=int8 or none" in message


def test_a_model_id_that_names_nothing_says_which(tmp_path, monkeypatch):
    assert "no such directory" in error_of(settings(model_id=str(tmp_path / "absent")))
    assert "has no config.json" in error_of(settings(model_id=str(tmp_path)))
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # the Hub is unreachable here anyway
    message = error_of(settings(model_id="no-such-owner/no-such-model"))
    assert "not a local directory, and the Hugging Face Hub did not provide it" in message
    assert "set MODEL_ID to a directory" in message


def test_gunicorn_ends_with_one_line_and_no_worker_boots(neox_dir, tmp_path):
    env = {**hidden_torch_env(tmp_path, neox_dir), "PORT": str(free_port())}
    done = subprocess.run([sys.executable, "-m", "gunicorn", "app:app"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)
    output = done.stdout + done.stderr
    assert done.returncode == 1, output
    ours = [line for line in output.splitlines() if line.startswith("textgen: cannot serve this model:")]
    assert len(ours) == 1 and "'gpt_neox'" in ours[0], output
    assert "Traceback" not in output and "Booting worker" not in output, output


def test_the_cli_says_the_same_in_one_line(neox_dir, tmp_path):
    done = subprocess.run([sys.executable, "-m", "textgen", "generate", "Hello"], cwd=ROOT,
                          env=hidden_torch_env(tmp_path, neox_dir), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "'gpt_neox'" in done.stderr, done.stderr
    assert "Traceback" not in done.stderr


def test_a_gguf_file_is_left_to_the_worker_to_convert_once_its_file_and_torch_are_there(tmp_path, monkeypatch):
    """The directory holding a GGUF file has no config.json until the worker converts it: the check
    looks only for the file, its architecture (the header) and for what converting needs."""
    import gguf

    writer = gguf.GGUFWriter(str(tmp_path / "model.gguf"), "llama")  # a header and no tensors: enough here
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    (tmp_path / "not.gguf").write_bytes(b"GGUF")
    gguf_file = settings(model_id=str(tmp_path), model_gguf_file="model.gguf")
    monkeypatch.setattr(preflight, "_installed", lambda package: True)
    check_servable(gguf_file)
    assert "not a readable GGUF file" in error_of(settings(model_id=str(tmp_path), model_gguf_file="not.gguf"))
    without_torch(monkeypatch)
    assert "converting a GGUF file needs torch and transformers" in error_of(gguf_file)
    assert "MODEL_GGUF_FILE: no file" in error_of(settings(model_id=str(tmp_path), model_gguf_file="absent.gguf"))


def test_a_gguf_file_already_converted_is_checked_as_its_conversion_without_reading_the_file(tmp_path, tiny_model_dir, monkeypatch):
    """Once a worker has converted MODEL_GGUF_FILE into CACHE_DIR, a start needs neither torch nor the
    file's metadata (reading a vocabulary's worth of fields took ~2 s of every start): the conversion
    is checked as the model directory it is, its family included."""
    from textgen.model.loader import file_fingerprint

    (tmp_path / "model.gguf").write_bytes(b"GGUF" + bytes(64))  # unreadable: only its fingerprint is taken
    cache = tmp_path / "cache"
    key = file_fingerprint(str(tmp_path / "model.gguf"))
    gguf_file = settings(model_id=str(tmp_path), model_gguf_file="model.gguf", cache_dir=str(cache))
    without_torch(monkeypatch)
    assert "converting a GGUF file needs torch and transformers" in error_of(gguf_file)  # not converted yet

    shutil.copytree(tiny_model_dir, cache / f"gguf-{key}")
    check_servable(gguf_file)  # a GPT-2 conversion: served without torch, and the file is never read

    (cache / f"gguf-{key}" / "config.json").write_text(json.dumps(NEOX_CONFIG))  # the conversion is GPT-NeoX now
    assert "'gpt_neox'" in error_of(gguf_file)
