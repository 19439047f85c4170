"""The tools that generate text: ``megakernel.generate`` (any stage, streamed), ``reference.generate`` and the
CPU half of ``megakernel.demo``, on a tiny checkpoint (kernel stages in the CUDA simulator)."""

from __future__ import annotations

import subprocess

import pytest

from reference import Qwen35Config, load_model, load_tokenizer
from reference.tokenizer import TextStream

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

PROMPT = "a."  # single-byte tokens of the real tokenizer: inside a tiny vocabulary


@pytest.fixture(scope="module")
def tiny(checkpoint_factory):
    return checkpoint_factory("kernel_tiny", config=Qwen35Config.tiny(vocab_size=264))


def test_text_stream_emits_whole_characters_only():
    """Byte-level BPE splits many characters over tokens: nothing is printed until a character is whole."""
    tok = load_tokenizer()
    text = "😀🙈 ᚠᛇᚻ 𝔘𝔫𝔦 ǅ ꙮ 𒀀 naïve"
    ids = tok.encode(text)
    stream = TextStream(tok)
    pieces = [stream(t) for t in ids]
    assert "".join(pieces) + stream.close() == text
    assert "" in pieces and all("\ufffd" not in p for p in pieces)  # some tokens held bytes back
    cut = TextStream(tok)
    head = "".join(cut(t) for t in tok.encode("🦜")[:-1])  # three tokens
    assert head == "" and cut.close() == "\ufffd"  # an unfinished character, flushed at the end


def _generate(capsys, *argv):
    from megakernel import generate

    status = generate.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out, err


def test_generate_reference_streams_the_same_text_as_generate(tiny, capsys):
    tok = load_tokenizer()
    ids = tok.encode(PROMPT)
    model = load_model(tiny)
    expected = model.generate(ids, 6, temperature=0.8, top_k=50, seed=3, stop_at_eos=False).tolist()
    out, err = _generate(capsys, "--stage", "reference", "--model", tiny, "--prompt", PROMPT, "--max-new-tokens", 6,
                         "--temperature", 0.8, "--top-k", 50, "--seed", 3, "--no-stop-at-eos")
    assert out == PROMPT + tok.decode_bytes(expected).decode("utf-8", errors="replace") + "\n"
    last = err.strip().splitlines()[-1]
    assert last.startswith("6 tokens; prefill of 2 tokens") and " tok/s (" in last
    assert "the floor" in last and "is for an H100, and this run is on the CPU" in last


def test_generate_layered_in_the_simulator_matches_the_reference(tiny, capsys):
    from megakernel.launch import SIMULATOR

    if not SIMULATOR:
        pytest.skip("runs the kernels in the CUDA simulator (NUMBA_ENABLE_CUDASIM=1)")
    args = ["--model", tiny, "--prompt", PROMPT, "--max-new-tokens", 2, "--no-stop-at-eos"]
    ref_out, _ = _generate(capsys, "--stage", "reference", *args)
    out, err = _generate(capsys, "--stage", "layered", *args)
    assert out == ref_out  # greedy: the same tokens
    assert "2 tokens; prefill of 2 tokens" in err and "decode" in err


def test_reference_generate_streams(tiny, capsys):
    from reference import generate

    assert generate.main(["--model", str(tiny), "--prompt", PROMPT, "--max-new-tokens", "3", "--no-stop-at-eos"]) == 0
    out, err = capsys.readouterr()
    expected = load_model(tiny).generate(load_tokenizer().encode(PROMPT), 3, stop_at_eos=False).tolist()
    assert out == PROMPT + load_tokenizer().decode_bytes(expected).decode("utf-8", errors="replace") + "\n"
    assert "3 tokens in" in err and "tok/s" in err


def test_cpu_demo_says_what_it_does(tiny, capsys, monkeypatch):
    """No silent cap on --tokens, tok/s shown, the decode steps checked against a prefill; the simulator
    comparison (a subprocess, tested by megakernel.compare's own tests) is stubbed out here."""
    from megakernel import demo

    calls = []
    monkeypatch.setattr(demo.subprocess, "run", lambda cmd, env: calls.append(cmd) or subprocess.CompletedProcess(
        cmd, 0))
    tok = load_tokenizer()
    assert demo.cpu_demo(tiny, tok.encode(PROMPT), 5, tok) == 0
    out = capsys.readouterr().out
    assert "decodes 5 greedy tokens" in out and "[reference, CPU fp32] 5 tokens in" in out
    assert "tok/s decode" in out
    assert "checked: every decode step's logits match the prefill's (worst relative error" in out
    assert calls and "--tiny" in calls[0]


def test_demo_default_tokens_are_stated():
    from megakernel import demo

    (tokens,) = [a for a in demo.parser._actions if "--tokens" in a.option_strings]
    assert f"default: {demo.GPU_TOKENS} on a GPU, {demo.CPU_TOKENS} on a CPU" in tokens.help
