"""The model's tokenizer through the `tokenizers` library alone, for the native families (onnx and torch
backends; the transformers backend keeps AutoTokenizer).

transformers' `AutoTokenizer` wraps the same Rust tokenizer (tokenizer.json), but importing it and
its Python-side vocabulary costs ~70 MB and seconds of CPU at start-up, which a 512 MB, 0.1-CPU
instance feels. This class offers the few things the service uses: encode (with offsets, for /tokenize), decode,
the special tokens and the chat template. Tokenizers whose files need transformers' Python logic (no
tokenizer.json, or BOS/EOS added by configuration rather than by the tokenizer's own post-processor)
keep `AutoTokenizer`.
"""

from __future__ import annotations

import functools
import json
import os
from typing import List, Optional, Tuple

_CONFIG = "tokenizer_config.json"


def _token_text(value) -> Optional[str]:
    return value.get("content") if isinstance(value, dict) else value


def lean_tokenizer_supported(model_dir: str) -> bool:
    if not os.path.exists(os.path.join(model_dir, "tokenizer.json")):
        return False
    config = _read_config(model_dir)
    return not (config.get("add_bos_token") or config.get("add_eos_token"))


def _read_config(model_dir: str) -> dict:
    path = os.path.join(model_dir, _CONFIG)
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as f:
        return json.load(f)


class LeanTokenizer:
    def __init__(self, model_dir: str):
        from tokenizers import Tokenizer

        self._tokenizer = Tokenizer.from_file(os.path.join(model_dir, "tokenizer.json"))
        config = _read_config(model_dir)
        self.eos_token = _token_text(config.get("eos_token"))
        self.bos_token = _token_text(config.get("bos_token"))
        self.eos_token_id = self._id(self.eos_token)
        named = (_token_text(config.get(k)) for k in ("bos_token", "eos_token", "unk_token", "pad_token"))
        special = {self._id(t) for t in named} | {
            i for i, token in self._tokenizer.get_added_tokens_decoder().items() if token.special
        }
        self.all_special_ids = sorted(i for i in special if i is not None)
        self.chat_template = config.get("chat_template") or _read_text(os.path.join(model_dir, "chat_template.jinja"))
        # transformers' post-decoding clean-up (" ." -> "."), when the tokenizer asks for it.
        self._clean_up = bool(config.get("clean_up_tokenization_spaces", False))

    def _id(self, token: Optional[str]) -> Optional[int]:
        return None if token is None else self._tokenizer.token_to_id(token)

    def __call__(self, text: str, add_special_tokens: bool = True) -> dict:
        return {"input_ids": self.encode(text, add_special_tokens)}

    def encode(self, text: str, add_special_tokens: bool = True) -> List[int]:
        return self._tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_with_offsets(self, text: str, add_special_tokens: bool = True) -> Tuple[List[int], List[Tuple[int, int]]]:
        """`encode`'s ids and each token's (start, stop) character offsets into `text`; a token the
        tokenizer adds itself (a BOS) has (0, 0)."""
        encoding = self._tokenizer.encode(text, add_special_tokens=add_special_tokens)
        return encoding.ids, encoding.offsets

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        text = self._tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)
        return _clean_up_spaces(text) if self._clean_up else text

    def apply_chat_template(self, messages, tokenize: bool = False, add_generation_prompt: bool = True, tools=None):
        """The model's chat template rendered as transformers renders it (sandboxed Jinja2), `tools` in
        OpenAI's form."""
        if not self.chat_template:
            raise ValueError("this tokenizer has no chat template")
        text = _compile(self.chat_template).render(
            messages=messages,
            tools=tools,
            add_generation_prompt=add_generation_prompt,
            bos_token=self.bos_token or "",
            eos_token=self.eos_token or "",
        )
        return self.encode(text) if tokenize else text

    def __len__(self) -> int:
        return self._tokenizer.get_vocab_size(with_added_tokens=True)


def _read_text(path: str) -> Optional[str]:
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        return f.read()


def _clean_up_spaces(text: str) -> str:
    """transformers' `clean_up_tokenization`: no space before punctuation and English contractions."""
    for before, after in ((" .", "."), (" ?", "?"), (" !", "!"), (" ,", ","), (" ' ", "'"), (" n't", "n't"),
                          (" 'm", "'m"), (" 's", "'s"), (" 've", "'ve"), (" 're", "'re")):
        text = text.replace(before, after)
    return text


@functools.lru_cache(maxsize=4)  # a server renders one template: compiled once, not per request
def _compile(template: str):
    import json as _json
    from datetime import datetime

    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message):
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = lambda value, indent=None: _json.dumps(value, ensure_ascii=False, indent=indent)
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)  # Llama 3's templates date their prompt
    return env.from_string(template)
