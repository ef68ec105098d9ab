import pytest

from textgen.settings import Settings


def test_defaults_suit_distilgpt2():
    s = Settings.from_env(environ={})
    assert s.model_id == "distilbert/distilgpt2"
    assert s.port == 5000 and s.max_request_bytes == 1_000_000
    assert s.max_total_tokens is None  # = the model's context (1024 for DistilGPT2)


def test_every_field_reads_its_upper_case_variable():
    env = {
        "MODEL_ID": "/models/x",
        "MAX_INPUT_TOKENS": "100",
        "MAX_TOTAL_TOKENS": "200",
        "MAX_NEW_TOKENS_LIMIT": "64",
        "DEFAULT_DO_SAMPLE": "false",
        "DEFAULT_TEMPERATURE": "0.7",
        "THREADS": "3",
        "PORT": "8080",
        "QUEUE_TIMEOUT": "2.5",
    }
    s = Settings.from_env(environ=env)
    assert s.model_id == "/models/x" and s.max_input_tokens == 100 and s.max_total_tokens == 200
    assert s.max_new_tokens_limit == 64 and s.default_do_sample is False and s.default_temperature == 0.7
    assert s.threads == 3 and s.port == 8080 and s.queue_timeout == 2.5


def test_empty_variable_means_default_and_overrides_win():
    s = Settings.from_env(environ={"PORT": "", "MAX_BATCH_SIZE": "4"}, max_batch_size=2)
    assert s.port == 5000 and s.max_batch_size == 2


def test_a_bad_value_names_the_variable():
    with pytest.raises(ValueError, match="PORT='abc' is not a valid int"):
        Settings.from_env(environ={"PORT": "abc"})


def test_int4_is_for_the_onnx_backend():
    """4-bit weights are ONNX Runtime's MatMulNBits: the default backends take them, the torch ones
    are refused at once, with a message naming both settings (not a worker failing later)."""
    for backend in ("auto", "onnx"):
        settings = Settings.from_env(environ={"QUANTIZE": "int4", "MODEL_BACKEND": backend})
        assert (settings.quantize, settings.model_backend) == ("int4", backend)
    for backend in ("torch", "native", "transformers"):
        with pytest.raises(ValueError, match=f"QUANTIZE=int4 is served by the onnx backend only, not MODEL_BACKEND={backend}"):
            Settings.from_env(environ={"QUANTIZE": "int4", "MODEL_BACKEND": backend})


def test_backend_quantize_and_chunk_settings():
    s = Settings.from_env(environ={"MODEL_BACKEND": "torch", "QUANTIZE": "int8", "PREFILL_CHUNK_TOKENS": "64"})
    assert s.model_backend == "torch" and s.quantize == "int8" and s.prefill_chunk_tokens == 64
    assert Settings.from_env(environ={}).model_backend == "auto"
    for backend in ("onnx", "native", "transformers"):  # "native": the old name of "torch", still read
        assert Settings.from_env(environ={"MODEL_BACKEND": backend}).model_backend == backend
    with pytest.raises(ValueError, match="QUANTIZE='int2': expected one of none, int8, int4"):
        Settings.from_env(environ={"QUANTIZE": "int2"})
    with pytest.raises(ValueError, match="MODEL_BACKEND='tensorflow'"):
        Settings.from_env(environ={"MODEL_BACKEND": "tensorflow"})
    with pytest.raises(ValueError, match="PREFILL_CHUNK_TOKENS"):
        Settings.from_env(environ={"PREFILL_CHUNK_TOKENS": "0"})
