"""The real Qwen3.5 tokenizer offline, and the tokenizer files written into synthetic checkpoints."""

import pytest

from reference import load_tokenizer
from reference.tokenizer import QWEN35_VOCAB_USED, write_hf_tokenizer_files

TEXTS = [
    "Hello, world! The quick brown fox jumps over the lazy dog.",
    "Zahlen 1234567 und Umlaute: äöü ß — naïve café",
    "中文分词测试，以及日本語のテキスト。",
    "हिन्दी भाषा और ภาษาไทย ครับ",  # combining marks (\p{M}): Qwen3.5's pre-tokenizer differs from Qwen2's here
    "def f(x):\n    return x ** 2  # code\n\n\ttabs",
    "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n",
]


def test_round_trip_and_specials():
    tok = load_tokenizer()
    assert tok.vocab_size == QWEN35_VOCAB_USED
    assert tok.eos_token_id == 248044
    for text in TEXTS:
        ids = tok.encode(text)
        assert all(0 <= i < QWEN35_VOCAB_USED for i in ids)
        assert tok.decode(ids) == text
    assert tok.encode("<|im_start|>")[0] == tok.im_start_id


@pytest.fixture(scope="module")
def hf_tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    path = tmp_path_factory.mktemp("tok")
    write_hf_tokenizer_files(path)
    return AutoTokenizer.from_pretrained(path)


def test_written_tokenizer_files_agree_with_the_ranks(hf_tokenizer):
    tok = load_tokenizer()
    for text in TEXTS:
        assert hf_tokenizer.encode(text, add_special_tokens=False) == tok.encode(text), text
        assert hf_tokenizer.decode(tok.encode(text)) == text
    assert hf_tokenizer.convert_tokens_to_ids("<|endoftext|>") == 248044
    assert len(hf_tokenizer) == QWEN35_VOCAB_USED


def test_padding_ids_decode_visibly():
    tok = load_tokenizer()
    ids = tok.encode("a b") + [248100] + tok.encode(" c")
    assert tok.decode(ids) == "a b<|unused_248100|> c"
    assert tok.decode(ids, skip_special_tokens=True) == "a b c"
