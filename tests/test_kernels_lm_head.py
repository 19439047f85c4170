"""LM head + argmax and Gumbel-max sampling kernels, in the CUDA simulator.

* Logits: against ``reference.ops.rms_norm`` + a torch fp32 matvec on the same bf16 weights, 1e-5 relative (the
  reasoning is in tests/test_kernels_matvec.py: fp32 sums of the same products in a different order).
* Argmax: must equal ``torch.argmax`` of the logits the kernel wrote, exactly, including planted ties (the smallest
  index wins), the maximum in the last row (the last block to finish is not special), NaN (the first NaN wins) and
  a second launch on the same buffer (the kernel resets it itself).
* Sampling: the kernel's draw must equal argmax(logits / T + g) with the Gumbel noise g recomputed on the host from
  the same counter hash, for every draw; the draws' histogram must pass a chi-square test against
  softmax(logits / T).  Seeds are fixed, so these tests cannot flake: they pass or fail the same way every run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import megakernel  # noqa: F401  (installs the simulator layer)
from megakernel import launch
from megakernel.testing import ptx_check
from megakernel.kernels import lm_head as L
from reference import ops
from reference.check import check

SIM = launch.SIMULATOR
if not SIM and not launch.gpu_available():  # pragma: no cover
    pytest.skip("NUMBA_ENABLE_CUDASIM=0 but no GPU", allow_module_level=True)

TOL = 1e-5
EPS = 1e-6
DEV = launch.kernel_device()
kd = launch.as_kernel_array


def bf16_weights(n: int, k: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, k, generator=g) * (2.0 / k**0.5)).to(torch.bfloat16)  # logit std ~2, as the model


def run_lm_head(W: torch.Tensor, h: torch.Tensor, w: torch.Tensor, best=None, version=7, config=None):
    n, k = W.shape
    logits = launch.poison_(torch.empty(n, device=DEV))
    best = best if best is not None else L.new_best(DEV)
    L.lm_head_argmax(kd(h.to(DEV)), kd(w.to(DEV)), kd(launch.words(W.to(DEV)).view(-1)), kd(logits), n, k, EPS,
                     kd(best), version=version, config=config)
    return logits, best


def inputs(k: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(k, generator=g) * 2 + 0.3, torch.randn(k, generator=g) * 0.2


@pytest.mark.parametrize("n,k,version,config", [(257, 72, 5, None), (333, 40, 5, None), (37, 1096, 5, None),
                                                (257, 72, 7, None), (333, 40, 7, None), (37, 1096, 7, None),
                                                (45, 1096, 7, (4, 4))])
def test_logits_and_argmax(n, k, version, config):
    W = bf16_weights(n, k, seed=n + k)
    h, w = inputs(k, seed=1)
    logits, best = run_lm_head(W, h, w, version=version, config=config)
    ref = W.float() @ ops.rms_norm(h, w, EPS)
    check(f"lm_head v{version} {config} logits [{n}, {k}]", ref, logits.cpu(), TOL)
    token = L.read_token(best)
    assert token == int(torch.argmax(logits)) == int(torch.argmax(ref))
    assert int(L.token_view(best)) == token  # the int32 device token for the embedding lookup
    # the buffer is back in its between-launch state
    assert best[0].item() == L.INT64_MIN and best[1].item() == 0 and L.key_to_index(best[2].item()) == token


@pytest.mark.parametrize("version", [5, 7])
def test_tiny_hidden_state_uses_eps(version):
    """h ~ 1e-3 (mean square ~ eps): the final norm's eps changes the logits by O(1) here, so it must be right."""
    n, k = 70, 72
    W = bf16_weights(n, k, seed=9)
    h, w = inputs(k, seed=5)
    h = h * 5e-4
    logits, best = run_lm_head(W, h, w, version=version)
    ref = W.float() @ ops.rms_norm(h, w, EPS)
    assert (ref - W.float() @ ops.rms_norm(h, w, 0.0)).abs().max() > 0.1 * ref.abs().max()
    check(f"lm_head v{version} logits, tiny h", ref, logits.cpu(), TOL)
    assert L.read_token(best) == int(torch.argmax(ref))


def test_ties_go_to_the_smallest_index():
    n, k = 300, 40
    W = bf16_weights(n, k, seed=5)
    h, w = inputs(k, seed=2)
    logits, _ = run_lm_head(W, h, w)
    top = int(torch.argmax(logits))
    for row in (299, 211, 64, 63, 9):  # copies of the best row: bit-identical logits, several blocks and warps
        W[row] = W[top]
    logits, best = run_lm_head(W, h, w)
    tied = [r for r in range(n) if logits[r] == logits[min(top, 9)]]
    assert len(tied) == 6
    assert L.read_token(best) == int(torch.argmax(logits)) == min(tied) == min(top, 9)


def test_max_in_last_row_and_negative_logits():
    n, k = 290, 72
    W = bf16_weights(n, k, seed=6)
    h, w = inputs(k, seed=3)
    W[n - 1] = (W.float().abs().max(0).values * torch.sign(ops.rms_norm(h, w, EPS))).to(torch.bfloat16)
    logits, best = run_lm_head(W, h, w)
    assert L.read_token(best) == int(torch.argmax(logits)) == n - 1
    logits, best = run_lm_head(-W.float().abs().to(torch.bfloat16), h.abs(), w.abs(), best)  # all logits < 0
    assert logits.max() < 0
    assert L.read_token(best) == int(torch.argmax(logits))


def test_nan_logits_first_nan_wins():
    n, k = 100, 40
    W = bf16_weights(n, k, seed=7)
    W[70, 3] = float("nan")
    W[23, 5] = float("nan")
    h, w = inputs(k, seed=4)
    logits, best = run_lm_head(W, h, w)
    assert torch.isnan(logits[23]) and torch.isnan(logits[70])
    assert L.read_token(best) == int(torch.argmax(logits)) == 23


def test_consecutive_launches_without_reset_and_reset_best():
    n, k = 120, 40
    W = bf16_weights(n, k, seed=8)
    best = L.new_best(DEV)
    for seed in range(3):  # the kernel resets the buffer itself between launches
        h, w = inputs(k, seed=10 + seed)
        logits, _ = run_lm_head(W, h, w, best)
        assert L.read_token(best) == int(torch.argmax(logits))
    best.copy_(torch.tensor([123, 7, 0, 0]))  # as if a launch had died half way
    L.reset_best(best)
    assert best.tolist() == [L.INT64_MIN, 0, L.INT64_MIN, 0]
    arr = kd(best)
    arr[1] = 5
    L.reset_best(arr)
    assert L.read_token(arr) == 0 and best[1].item() == 0


def test_argmax_key_orders_like_torch_argmax():
    """The packed key: max key == torch.argmax over arrays of awkward values (±0, ±inf, NaN, denormals)."""
    key = L.argmax_key.py_func
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 1.0, -1.0, 3.4e38, -3.4e38, 2.5, 2.5],
                       dtype=np.float32)
    rng = np.random.default_rng(0)
    for _ in range(300):
        vals = rng.choice(special, size=rng.integers(1, 7)).astype(np.float32)
        if rng.random() < 0.5:
            vals[rng.integers(len(vals))] = np.float32(rng.standard_normal())
        keys = [int(key(np.float32(v), i)) for i, v in enumerate(vals)]
        assert keys.index(max(keys)) == int(torch.argmax(torch.from_numpy(vals))), vals
        assert L.key_to_index(max(keys)) == keys.index(max(keys))


# --------------------------------------------------------------------------------------------------------------
# Gumbel-max sampling
# --------------------------------------------------------------------------------------------------------------
LOGITS8 = torch.tensor([0.5, float("-inf"), 1.2, 0.0, 2.0, -0.3, 0.8, 1.5])
CHI2_CRIT_P001 = {6: 22.46, 7: 24.32, 15: 37.70}  # chi-square critical values at p = 0.001


def chi_square(counts: np.ndarray, probs: np.ndarray) -> tuple[float, int]:
    keep = probs > 0
    expected = probs[keep] * counts.sum()
    return float(((counts[keep] - expected) ** 2 / expected).sum()), int(keep.sum()) - 1


def draw(logits, temperature, seed, steps, best):
    kl, kb = kd(logits.to(DEV)), kd(best)
    out = []
    for step in steps:
        L.sample_gumbel(kl, logits.numel(), temperature, seed, step, kb)
        out.append(L.read_token(kb))
    return np.array(out)


@pytest.fixture(scope="module")
def draws():
    best = L.new_best(DEV)
    return draw(LOGITS8, 1.3, 1234, range(480), best)


def test_sample_matches_host_gumbel_noise(draws):
    lg = LOGITS8.numpy() * np.float32(1 / 1.3)
    expect = [int(np.argmax(lg + L.gumbel_noise_host(1234, step, 8))) for step in range(len(draws))]
    if SIM:
        assert draws.tolist() == expect
    else:  # logf on the GPU may differ in the last bit from the host's: allow a rare near-tie
        assert (draws == np.array(expect)).mean() > 0.99


def test_sample_distribution_is_softmax(draws):
    probs = torch.softmax(LOGITS8 / 1.3, 0).double().numpy()
    counts = np.bincount(draws, minlength=8)
    assert counts[1] == 0  # -inf logit: probability 0, never drawn
    stat, df = chi_square(counts, probs)
    print(f"chi2 {stat:.2f} (df {df}, critical {CHI2_CRIT_P001[df]}) counts {counts.tolist()}")
    assert stat < CHI2_CRIT_P001[df]


def test_host_noise_many_draws_is_softmax():
    """20,000 draws with the kernel's noise (recomputed on the host: the kernel equals it, see above)."""
    logits = np.linspace(-2.0, 1.5, 16).astype(np.float32)
    logits[[3, 11]] = 1.0
    t = 0.7
    draws = np.array([int(np.argmax(logits / np.float32(t) + L.gumbel_noise_host(99, s, 16)))
                      for s in range(20_000)])
    probs = torch.softmax(torch.from_numpy(logits).double() / t, 0).numpy()
    stat, df = chi_square(np.bincount(draws, minlength=16), probs)
    assert stat < CHI2_CRIT_P001[df], stat


def test_sampling_seeds_steps_and_reproducibility():
    best = L.new_best(DEV)
    logits = torch.zeros(11)  # uniform: every draw depends only on the noise
    a = draw(logits, 1.0, 7, range(12), best)
    b = draw(logits, 1.0, 7, range(12), best)
    c = draw(logits, 1.0, 8, range(12), best)
    d = draw(logits, 1.0, (1 << 40) + 7, range(12), best)  # the high half of a 64-bit seed matters
    assert a.tolist() == b.tolist()
    assert len(set(a.tolist())) > 3  # different steps, different draws
    assert a.tolist() != c.tolist() and a.tolist() != d.tolist()


def test_sampling_refuses_temperature_zero():
    best = kd(L.new_best(DEV))
    with pytest.raises(ValueError, match="temperature > 0"):
        L.sample_gumbel(kd(torch.zeros(8, device=DEV)), 8, 0.0, 1, 0, best)
    with pytest.raises(ValueError, match="temperature > 0"):
        L.sample_gumbel(kd(torch.zeros(8, device=DEV)), 8, -1.0, 1, 0, best)


def test_sampling_wide_vocabulary_uses_every_block():
    """V larger than the simulated grid: thread-strided loop, several blocks, the last-block publish."""
    v = 700
    logits = torch.full((v,), -30.0)
    logits[613] = 30.0  # the only token with real probability
    best = L.new_best(DEV)
    assert draw(logits, 1.0, 3, range(3), best).tolist() == [613] * 3


# --------------------------------------------------------------------------------------------------------------
# sm_90 PTX
# --------------------------------------------------------------------------------------------------------------
def test_ptx_clean_for_sm90(capsys):
    reports = {r.name: r for r in ptx_check.check_in_subprocess("megakernel.kernels.lm_head")}
    assert set(reports) == set(L.PTX_SIGNATURES)
    for r in reports.values():
        assert r.ok and not r.f64_lines and not r.local_lines
        if r.registers is not None:
            assert r.spill_store_bytes == 0 == r.spill_load_bytes
        with capsys.disabled():
            print(f"\n  {r.name:24s} regs {r.registers}  spills {r.spill_store_bytes}/{r.spill_load_bytes}")
        assert "atom.global.max.s64" in r.ptx and "atom.global.exch.b64" in r.ptx and "membar.gl" in r.ptx
    lm = reports["lm_head_argmax_kernel"].ptx
    assert "ld.global.v4.u32" in lm or "ld.global.nc.v4.u32" in lm
    assert "ld.global.v4.f32" in lm or "ld.global.nc.v4.f32" in lm
    lm6 = reports["lm_head_argmax_v7"].ptx
    assert "ld.global.v4.u32" in lm6 or "ld.global.nc.v4.u32" in lm6
    assert "ld.shared.v4.f32" in lm6  # x = h * (1 + w) staged once per block
