"""Turn a checkpoint into what the service image serves: the ONNX graph (8-bit weights by default),
the config and the tokenizer files, without the float32 weights and without torch (Dockerfile).

    python scripts/build_graph.py CHECKPOINT_DIR OUT_DIR [--quantize int8|int4|none]

OUT_DIR then loads with MODEL_ID=OUT_DIR and the same QUANTIZE: the loader finds the graph in
`OUT_DIR/onnx-<quantize>/` and needs no weights.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from textgen.model.onnx_backend.onnx_graph import build_graph  # noqa: E402
from textgen.model.onnx_backend.graph_files import prebuilt_dir  # noqa: E402

# Everything but the weights: the config, the generation defaults and every tokenizer file.
KEPT = ["config.json", "generation_config.json", "tokenizer*", "special_tokens_map.json", "vocab.json",
        "merges.txt", "*.model", "added_tokens.json", "chat_template.*"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    parser.add_argument("--quantize", choices=["int8", "int4", "none"], default="int8")
    args = parser.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    for pattern in KEPT:
        for path in glob.glob(os.path.join(args.checkpoint, pattern)):
            shutil.copy2(path, args.out)
    started = time.perf_counter()
    graph = build_graph(args.checkpoint, prebuilt_dir(args.out, args.quantize), args.quantize)
    size = sum(os.path.getsize(os.path.join(os.path.dirname(graph), f)) for f in os.listdir(os.path.dirname(graph)))
    print(f"built {graph} ({size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
