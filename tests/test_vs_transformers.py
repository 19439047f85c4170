"""The reference against transformers (Qwen3_5ForCausalLM on the same checkpoint): logits AND states.

fp32: prefill logits and 16+ decode steps within a relative error of 1e-5 (max|err| / max|ref|), conv states,
DeltaNet states and the KV cache too. bf16: greedy tokens identical to transformers' eager attention.
"""

from __future__ import annotations

import pytest
import torch

from reference import Qwen35Config, load_model
from reference.check import check
from reference.hf_compare import TransformersRunner, compare_states, load_transformers_model
from tests.conftest import TEST_CONFIGS

FP32_TOL = 1e-5


def random_prompt(vocab: int, length: int, seed: int = 0) -> list[int]:
    return torch.randint(0, vocab, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def run_side_by_side(path, config, prompt_len, steps, tol, dtype=torch.float32, verbose=False):
    """Prefill + greedy decode on both; check logits and every state at every step. Returns worst errors."""
    ours = load_model(path, dtype=dtype)
    hf = TransformersRunner(load_transformers_model(path, dtype=dtype), config)
    prompt = random_prompt(config.vocab_size, prompt_len)
    worst = {"logits": 0.0, "states": 0.0}
    logits, state = ours.prefill(prompt)
    ref = hf.prefill(prompt)
    worst["logits"] = max(worst["logits"], check("prefill logits", ref, logits, tol, verbose).rel)
    worst["states"] = max([worst["states"]] + [r.rel for r in compare_states(hf.state(), state, tol, "prefill ")])
    token = int(ref[-1].argmax())
    for step in range(steps):
        out = ours.decode_step(token, state)
        ref = hf.decode_step(token)
        worst["logits"] = max(worst["logits"], check(f"step {step} logits", ref, out, tol, verbose).rel)
        worst["states"] = max([worst["states"]] + [r.rel for r in
                                                  compare_states(hf.state(), state, tol, f"step {step} ")])
        token = int(ref.argmax())
    return worst


@pytest.mark.parametrize("name", list(TEST_CONFIGS))
def test_fp32_prefill_and_decode_match_transformers(name, checkpoint_factory, capsys):
    config = TEST_CONFIGS[name]
    path = checkpoint_factory(name)
    # prompt lengths not a multiple of the 64-token chunk, and one longer than a chunk
    worst = run_side_by_side(path, config, prompt_len=70 if name == "tiny" else 37, steps=16, tol=FP32_TOL)
    with capsys.disabled():
        print(f"\n[{name}] fp32 vs transformers: worst logits rel err {worst['logits']:.2e}, "
              f"worst state rel err {worst['states']:.2e} (tol {FP32_TOL:.0e})")


def test_text_layout_and_sharded_checkpoint_match_transformers(checkpoint_factory):
    config = TEST_CONFIGS["grouped_values_1_group"]
    path = checkpoint_factory("grouped_values_1_group", layout="text", max_shard_bytes=40_000)
    assert (path / "model.safetensors.index.json").is_file()
    run_side_by_side(path, config, prompt_len=9, steps=4, tol=FP32_TOL)


def test_bf16_greedy_tokens_identical_to_transformers_eager(tiny_checkpoint):
    """bf16 everywhere (fp32-stored params rounded as transformers does): same greedy tokens over 32 steps."""
    config = TEST_CONFIGS["tiny"]
    ours = load_model(tiny_checkpoint, dtype=torch.bfloat16, keep_fp32=False)
    hf = load_transformers_model(tiny_checkpoint, dtype=torch.bfloat16, attn_implementation="eager")
    for seed in range(3):
        prompt = random_prompt(config.vocab_size, 11 + 7 * seed, seed)
        mine = ours.generate(prompt, max_new_tokens=32, stop_at_eos=False)
        theirs = hf.generate(torch.tensor([prompt]), max_new_tokens=32, min_new_tokens=32, do_sample=False,
                             eos_token_id=None, pad_token_id=0)[0, len(prompt):]
        assert mine.tolist() == theirs.tolist(), f"prompt {seed}: tokens differ"


def test_bf16_keep_fp32_params_matches_transformers_with_fp32_params(tiny_checkpoint):
    """The published checkpoint's fp32 A_log / norm weights kept fp32 on both sides: logits agree closely."""
    config = TEST_CONFIGS["tiny"]
    ours = load_model(tiny_checkpoint, dtype=torch.bfloat16, keep_fp32=True)
    assert ours.weights["layers.0.linear_attn.A_log"].dtype == torch.float32
    hf = TransformersRunner(load_transformers_model(tiny_checkpoint, dtype=torch.bfloat16, keep_fp32=True), config)
    prompt = random_prompt(config.vocab_size, 13)
    logits, state = ours.prefill(prompt)
    ref = hf.prefill(prompt)
    check("bf16 prefill logits", ref, logits, 2e-2)
    token = int(ref[-1].argmax())
    for _ in range(8):
        out, ref = ours.decode_step(token, state), hf.decode_step(token)
        check("bf16 decode logits", ref, out, 2e-2)
        assert int(out.argmax()) == int(ref.argmax())
        token = int(ref.argmax())


@pytest.mark.slow
def test_real_shapes_fp32_match_transformers(tmp_path_factory):
    """The real 0.8B shapes (all 24 layers, 248320 vocab): prefill + 4 decode steps, logits and states."""
    config = Qwen35Config.qwen35_0_8b()
    from reference import write_synthetic_checkpoint

    path = write_synthetic_checkpoint(tmp_path_factory.mktemp("real_shapes"), config, seed=0, tokenizer=False)
    worst = run_side_by_side(path, config, prompt_len=20, steps=4, tol=FP32_TOL)
    print(f"real shapes: worst logits rel {worst['logits']:.2e}, states {worst['states']:.2e}")
