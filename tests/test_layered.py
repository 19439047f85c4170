"""The layered decoder (one Numba kernel per op) against its oracle, on the CPU through the CUDA simulator.

Oracle: the reference computing in fp32 from the same bf16 weights with a bf16 KV cache (what the kernels
compute). Tolerances: logits 1e-4 relative (max|err| / max|ref|); every state element within 1e-4 of the largest
value of its own head (``compare_states``), bf16 cache elements within that plus one bf16 step of the element.
The kernels sum in a different order (~1e-6 expected); a real bug (a missed decay, a wrong head mapping, an
unwritten element) is O(1). The next-token distributions must agree within ``KL_MAX`` nats at every step.

Two decoders: the tiny config with the planned launches (one warp per matvec row, one attention split, one-warp
blocks in the DeltaNet step and ``attn_combine``), and a config whose launches split: long rows over two warps
(``matvec_config``, with K = 264 so both warps of a row hold weights), a context long enough for three attention
splits, two KV heads (GQA 2:1), and head dims (Dk 32, Dh 40) that give the DeltaNet step and ``attn_combine``
two-warp blocks, whose block reductions reuse one scratch buffer.
"""

import pytest
import torch

from megakernel.kernels import attention
from reference import Qwen35Config
from reference.check import check, next_token_kl
from reference.config import FULL, LINEAR
from reference.hf_compare import compare_states

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOL = 1e-4
# KL(p_ref || p_kernels) <= max|logit error|^2 / 2 (Hoeffding's lemma). Summation-order errors (~1e-6 of the
# largest logit) give ~1e-13 nats (measured); 1e-9 nats means logit errors of ~4e-5, below what the logits check
# alone would let through (1e-4 of the largest logit, ~6e-4 here).
KL_MAX = 1e-9
SPLIT_CONFIG = Qwen35Config.tiny(vocab_size=128, hidden_size=264, num_hidden_layers=2, layer_types=(LINEAR, FULL),
                                 num_attention_heads=4, num_key_value_heads=2, head_dim=40, linear_key_head_dim=32)
SPLIT_MATVEC = (4, 2)  # 4-warp blocks, 2 warps per row (per gate/up row pair in the SwiGLU kernel)
SPLIT_PROMPT = 130  # decode lengths 131..133: three splits of POSITIONS_PER_SPLIT = 64 positions


@pytest.fixture(scope="module")
def stages(checkpoint_factory):
    from megakernel.layered import load

    path = checkpoint_factory("kernel_tiny", config=Qwen35Config.tiny(vocab_size=264))
    # decode kernels from exactly the oracle's prefill state (the bf16 prefill: tests/test_prefill.py)
    return load(path, "reference"), load(path, "layered", max_context=64, prefill_mode="reference")


@pytest.fixture(scope="module")
def split_stages(checkpoint_factory):
    from megakernel.layered import LayeredDecoder, load

    ref = load(checkpoint_factory("kernel_split", config=SPLIT_CONFIG), "reference")
    return ref, LayeredDecoder(ref, max_context=3 * attention.POSITIONS_PER_SPLIT, prefill_mode="reference",
                               matvec_config=SPLIT_MATVEC)


def teacher_forced(ref, layered, prompt, steps):
    """Prefill both, then feed the reference's greedy tokens to both: logits, next-token KL and every state
    element checked after every step."""
    ref_logits, ref_state = ref.prefill(prompt)
    logits, state = layered.prefill(prompt)
    check("prefill logits", ref_logits, logits, TOL)
    token = int(ref_logits[-1].argmax())
    for step in range(steps):
        out = layered.decode_step(token, state)
        expected = ref.decode_step(token, ref_state)
        check(f"step {step} logits", expected, out, TOL)
        kl = float(next_token_kl(expected, out))
        assert kl <= KL_MAX, f"step {step}: next-token KL {kl:.2e} nats > {KL_MAX:.0e}"
        compare_states(ref_state, state.to_reference(), TOL, prefix=f"step {step} ", verbose=True)
        assert int(out.argmax()) == int(expected.argmax())
        token = int(expected.argmax())
    return state


def test_layered_matches_reference_logits_and_states(stages):
    ref, layered = stages
    teacher_forced(ref, layered, [3, 141, 59, 26, 5], steps=4)


def test_split_launches_match_reference(split_stages):
    """Split-K rows (``combine_parts``, the SwiGLU pair split) and three attention splits merged by
    ``attn_combine``, through the decoder's device-held position: logits, KL and every state per element."""
    ref, layered = split_stages
    prompt = [(7 * i + 3) % SPLIT_CONFIG.vocab_size for i in range(SPLIT_PROMPT)]
    state = teacher_forced(ref, layered, prompt, steps=3)
    assert layered.grid_splits == 3
    assert attention.attention_splits(SPLIT_PROMPT + 1) == attention.attention_splits(state.length) == 3


def test_matvec_config_is_checked(split_stages):
    from megakernel.layered import LayeredDecoder

    ref, _ = split_stages
    with pytest.raises(ValueError, match=r"matvec_config must be \(warps_per_block, G\)"):
        LayeredDecoder(ref, max_context=8, matvec_config=(4, 2, 1))


def test_layered_greedy_tokens_and_device_argmax(stages):
    ref, layered = stages
    prompt = [7, 8, 9]
    expected = ref.generate(prompt, 5, stop_at_eos=False).tolist()
    assert layered.greedy_tokens(prompt, 5) == expected
    assert layered.generate(prompt, 5, stop_at_eos=False).tolist() == expected


def test_layered_bad_input(stages):
    from reference import ContextTooLongError

    _, layered = stages
    with pytest.raises(ValueError, match="outside the vocabulary"):
        layered.prefill([1, 10_000])
    for token in (torch.tensor(1), 1.0, None):  # refused before the state is looked at
        with pytest.raises(TypeError, match="decode_step takes one token id as an int"):
            layered.decode_step(token, None)
    with pytest.raises(ContextTooLongError, match="capacity 64"):
        layered.prefill(list(range(65)))
    _, state = layered.prefill(list(range(63)))
    layered.decode_step(1, state)
    with pytest.raises(ContextTooLongError, match="capacity 64"):
        layered.decode_step(1, state)


def test_unsupported_config_is_refused(checkpoint_factory):
    from megakernel.layered import load
    from megakernel.layout import UnsupportedConfigError

    path = checkpoint_factory("kernel_bias", config=Qwen35Config.tiny(vocab_size=128, attention_bias=True))
    with pytest.raises(UnsupportedConfigError, match="attention_bias"):
        load(path, "layered")
