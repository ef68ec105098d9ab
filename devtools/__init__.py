"""What the tests, the benchmarks (bench/) and the scripts share, so that nothing imports bench/ or
scripts/: real servers (servers.py), the models built here (models.py), the benchmarks' measures
(benchmark.py), the models bench/run.py measures (bench_models.py), llama.cpp's llama-server as a
benchmark peer (llama_server.py), the decode step timed alone (step_timing.py), ONNX Runtime's integer GEMM in a graph (integer_gemm.py), quality against float32 on real text (quality.py), the image builds (images.py) and the generator of docs/configuration.md (config_doc.py)."""
