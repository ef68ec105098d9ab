"""Put a model into a directory at image build time (Dockerfile): a path in the build context is copied,
anything else is a Hugging Face Hub id and is downloaded. The image then runs with the Hub switched off.

    python scripts/fetch_model.py MODEL_ID DEST [--context DIR]
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys

WEIGHT_PATTERNS = ["*.json", "*.safetensors", "*.txt", "*.model", "*.gguf", "tokenizer*"]


def fetch(model_id: str, dest: str, context: str = ".") -> str:
    local = os.path.join(context, model_id)
    if os.path.isdir(local):
        shutil.copytree(local, dest, dirs_exist_ok=True)
        return f"copied {local}"
    from huggingface_hub import snapshot_download

    snapshot_download(model_id, local_dir=dest, allow_patterns=WEIGHT_PATTERNS)
    return f"downloaded {model_id}"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_id")
    parser.add_argument("dest")
    parser.add_argument("--context", default=".")
    args = parser.parse_args(argv)
    print(fetch(args.model_id, args.dest, args.context))
    if not os.path.exists(os.path.join(args.dest, "config.json")):
        print(f"{args.dest} has no config.json: not a model", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
