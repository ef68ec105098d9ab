"""Where a decode step's time goes in ONNX Runtime: its own profiler over N steps at one batch size.

    python bench/step_profile.py --model random --batch 1          # DistilGPT2's shape, int8
    python bench/step_profile.py --model smollm2 --batch 1 --threads 1 2

For each thread count: the step's wall time (median), ONNX Runtime's `model_run` time, the summed time
of its node kernels (the rest of `model_run` is the executor's own: scheduling, thread hand-offs,
allocations), nodes per step, the op types by kernel time, and MatMulNBits' time by output shape (which
projection: q/k/v, o and down, gate/up, the LM head). The KV cache holds a 128-token prompt;
each step rewrites the same position, so every step does the same work (`--prompt` sets its length).
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.bench_models import prepare  # noqa: E402
from devtools.benchmark import CACHE  # noqa: E402
from devtools.step_timing import decode_step_times  # noqa: E402
from textgen.model.loader import load_model  # noqa: E402
from textgen.model.onnx_backend import onnx_model  # noqa: E402
from textgen.settings import Settings  # noqa: E402

PROMPT = 128


def profiled(model_name: str, threads: int, quantize: str):
    """The model loaded with ONNX Runtime's profiler on (its session options, nothing else changed)."""
    plain = onnx_model.session_options
    prefix = os.path.join(tempfile.mkdtemp(prefix="step-profile-"), "ort")

    def with_profiling(*args, **kwargs):
        options = plain(*args, **kwargs)
        options.enable_profiling = True
        options.profile_file_prefix = prefix
        return options

    model = prepare(model_name)
    settings = Settings.from_env(environ={"CACHE_DIR": CACHE, **model.service_env}, model_id=model.directory,
                                 model_backend="onnx", quantize=quantize, threads=threads)
    onnx_model.session_options = with_profiling
    try:
        return load_model(settings)[0]
    finally:
        onnx_model.session_options = plain


def summarise(trace_path: str, steps: int) -> dict:
    with open(trace_path) as f:
        events = json.load(f)
    runs = [e["dur"] for e in events if e.get("name") == "model_run"][-steps:]
    nodes = [e for e in events if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time")]
    per_run = len(nodes) / max(len([e for e in events if e.get("name") == "model_run"]), 1)
    kept = nodes[-int(per_run * steps):]
    by_op, matmuls = collections.Counter(), collections.Counter()
    for e in kept:
        by_op[e["args"].get("op_name", "?")] += e["dur"]
        if e["args"].get("op_name") == "MatMulNBits":  # by output shape: which projection
            shape = e["args"].get("output_type_shape", [{}])[0]
            matmuls["x".join(map(str, next(iter(shape.values()), [])))] += e["dur"]
    kernel = sum(by_op.values()) / steps
    return {
        "model_run_ms": statistics.median(runs) / 1000,
        "kernels_ms": kernel / 1000,
        "nodes_per_step": round(per_run),
        "ops_ms": {op: round(us / steps / 1000, 3) for op, us in by_op.most_common(10)},
        "matmul_nbits_ms_by_output": {shape: round(us / steps / 1000, 3) for shape, us in matmuls.most_common()},
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="random", help="random | smollm2 | llama-3.2-1b")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--threads", type=int, nargs="+", default=[2])
    parser.add_argument("--quantize", default="int8")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--prompt", type=int, default=PROMPT, help="tokens in each row's KV cache")
    args = parser.parse_args(argv)
    for threads in args.threads:
        model = profiled(args.model, threads, args.quantize)
        decode_step_times(model, args.batch, args.prompt, 5)  # warm-up
        wall = decode_step_times(model, args.batch, args.prompt, args.steps)
        trace = model.session.end_profiling()
        summary = summarise(trace, args.steps)
        print(f"{args.model} {args.quantize} batch {args.batch}, {threads} thread(s): step {statistics.median(wall):.2f} ms wall, "
              f"model_run {summary['model_run_ms']:.2f} ms, kernels {summary['kernels_ms']:.2f} ms "
              f"({summary['kernels_ms'] / summary['model_run_ms']:.0%}), {summary['nodes_per_step']} nodes")
        for op, ms in summary["ops_ms"].items():
            print(f"    {op:28} {ms:7.3f} ms")
        print("    MatMulNBits by output shape (rows x outputs): " + ", ".join(
            f"{shape} {ms:.3f} ms" for shape, ms in summary["matmul_nbits_ms_by_output"].items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
