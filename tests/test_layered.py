"""The layered decoder (one Numba kernel per op) against its oracle, on the CPU through the CUDA simulator.

Oracle: the reference computing in fp32 from the same bf16 weights with a bf16 KV cache (what the kernels
compute). Tolerance 1e-4 relative: the kernels sum in a different order (~1e-6 expected); a real bug (a missed
decay, a wrong head mapping, an unwritten element) is O(1).
"""

import pytest
import torch

from reference import Qwen35Config
from reference.check import check
from reference.hf_compare import compare_states

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOL = 1e-4


@pytest.fixture(scope="module")
def stages(checkpoint_factory):
    from megakernel.layered import load

    path = checkpoint_factory("kernel_tiny", config=Qwen35Config.tiny(vocab_size=264))
    # decode kernels from exactly the oracle's prefill state (the bf16 prefill: tests/test_prefill.py)
    return load(path, "reference"), load(path, "layered", max_context=64, prefill_mode="reference")


def test_layered_matches_reference_logits_and_states(stages):
    ref, layered = stages
    prompt = [3, 141, 59, 26, 5]
    ref_logits, ref_state = ref.prefill(prompt)
    logits, state = layered.prefill(prompt)
    check("prefill logits", ref_logits, logits, TOL)
    token = int(ref_logits[-1].argmax())
    for step in range(4):
        out = layered.decode_step(token, state)
        expected = ref.decode_step(token, ref_state)
        check(f"step {step} logits", expected, out, TOL)
        compare_states(ref_state, state.to_reference(), TOL, prefix=f"step {step} ", verbose=True)
        assert int(out.argmax()) == int(expected.argmax())
        token = int(expected.argmax())


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
