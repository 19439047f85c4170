"""The persistent megakernel (stage 3) on the CPU, through the simulator layer (concurrent blocks, real grid
barriers, race detection), on a two-layer tiny config [DeltaNet, attention] with several blocks.

Oracle: the reference computing in fp32 from the same bf16 weights with a bf16 KV cache. Tolerance 1e-4 relative:
the kernels sum in another order (~1e-6 expected); a real bug is O(1). Every version runs the same checks.
"""

import math
import os

import numpy as np
import pytest
import torch

from reference import Qwen35Config
from reference.check import check
from reference.config import FULL, LINEAR
from reference.hf_compare import compare_states

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

TOL = 1e-4
PROMPT = [3, 141, 59, 26, 5]
CONFIG = Qwen35Config.tiny(vocab_size=264, num_hidden_layers=2, layer_types=(LINEAR, FULL))


def _versions():
    from megakernel.persistent import VERSIONS

    return sorted(VERSIONS)


@pytest.fixture(scope="module")
def path(checkpoint_factory):
    return checkpoint_factory("persistent_tiny", config=CONFIG)


@pytest.fixture(scope="module")
def ref(path):
    import megakernel

    return megakernel.load(path, "reference")


@pytest.fixture(scope="module", params=_versions(), ids=lambda v: f"v{v}")
def pers(request, ref):
    from megakernel.persistent import PersistentDecoder

    return PersistentDecoder(ref, max_context=32, version=request.param, prefill_mode="reference")


def test_logits_every_state_and_layer_and_n_tokens_per_launch(ref, pers):
    """Three single-step launches against the reference (logits, each layer's hidden state, every state), then
    the same three steps in ONE launch: the same tokens."""
    ref_logits, ref_state = ref.prefill(PROMPT)
    _, state = pers.prefill(PROMPT)
    tokens = [int(ref_logits[-1].argmax())]
    for step in range(3):
        trace, ref_trace = {}, {}
        out = pers.decode_step(tokens[-1], state, trace=trace)
        expected = ref.decode_step(tokens[-1], ref_state, trace=ref_trace)
        check(f"v{pers.version} step {step} logits", expected, out, TOL)
        for layer, hidden in ref_trace["hidden"].items():
            check(f"step {step} layer {layer} hidden", hidden[-1], trace["hidden"][layer], TOL, verbose=False)
        compare_states(ref_state, state.to_reference(), TOL, prefix=f"v{pers.version} step {step} ")
        assert pers.last_run["barriers"] == pers.barriers_per_step() + 1  # the kernel counts its own
        tokens.append(int(out.argmax()))
        assert tokens[-1] == int(expected.argmax())
    assert pers.greedy_tokens(PROMPT, 4) == tokens
    assert pers.last_run["steps"] == 3 and pers.last_run["barriers"] == 3 * pers.barriers_per_step() + 1


def _decode_matches_reference(dec, ref, prompt, steps, label):
    """Prefill ``prompt`` in both, then ``steps`` single-step launches fed the reference's greedy tokens: the
    logits and every state (conv, DeltaNet, KV) against the reference after each step."""
    ref_logits, ref_state = ref.prefill(prompt)
    _, state = dec.prefill(prompt)
    token = int(ref_logits[-1].argmax())
    for step in range(steps):
        out = dec.decode_step(token, state)
        expected = ref.decode_step(token, ref_state)
        check(f"{label} step {step} logits", expected, out, TOL)
        compare_states(ref_state, state.to_reference(), TOL, prefix=f"{label} step {step} ")
        token = int(expected.argmax())


def test_finer_attention_splits_over_a_longer_context(ref):
    """Version 3 splits the context every 16 positions, at most one item per block: after a 40-token prompt
    the 3 blocks each score a split (3 partials per head to combine). Logits and every state vs the reference."""
    from megakernel.kernels.attention import attention_splits
    from megakernel.persistent import PersistentDecoder
    from megakernel.persistent.v3 import POSITIONS_PER_SPLIT

    dec = PersistentDecoder(ref, max_context=64, version=3, prefill_mode="reference")
    _decode_matches_reference(dec, ref, [(7 * i + 3) % CONFIG.vocab_size for i in range(40)], 2, "v3 context 40+")
    assert min(attention_splits(41, POSITIONS_PER_SPLIT), dec.blocks // CONFIG.num_key_value_heads) == 3


def _two_steps(dec, prompt):
    """Prefill ``prompt``, then two single-step launches (the first fed token 7, then each step's argmax): the
    logits of both steps and the state after them."""
    _, state = dec.prefill(prompt)
    token, logits = 7, []
    for _ in range(2):
        logits.append(dec.decode_step(token, state).clone())
        token = int(logits[-1].argmax())
    return logits, state.to_reference()


def _assert_same_bits(run, other, what):
    """Two ``_two_steps`` results are bit-identical: logits and every state (conv, DeltaNet, KV cache)."""
    (la, sa), (lb, sb) = run, other
    for a, b in zip(la, lb):
        assert torch.equal(a, b), f"{what}: the logits differ"
    for name in ("conv", "recurrent", "k_cache", "v_cache"):
        a, b = getattr(sa, name), getattr(sb, name)
        assert a.keys() == b.keys()
        for layer in a:
            assert torch.equal(a[layer], b[layer]), f"{what}: {name}[{layer}] differs"


@pytest.mark.parametrize("version, options", [(4, {}), (5, {}), (6, {}), (5, {"xregs": True}),
                                              (5, {"split_sums": True, "early_residual": True}),
                                              (6, {"deltanet_late_shift": True})],
                         ids=["v4", "v5", "v6", "v5-xregs", "v5-split-sums-early-residual", "v6-late-shift"])
def test_later_versions_compute_version_3s_bits(ref, version, options):
    """Versions 4-6 change where the weights live in L2, pair two rows per warp pass, release the ring's slots
    warp by warp, use another grid barrier and call the mixers out of line, never a single sum's order; ``xregs``
    (in version 6) reads x from registers,
    ``split_sums`` reduces two rows in one butterfly (each in ``warp_sum``'s order) and ``early_residual`` loads h
    before the dot products, and ``deltanet_late_shift`` awaits the DeltaNet's "last reader" count after the state
    columns: after the same prompt, two decode steps give bit-identical logits and states to
    version 3 (a page of the consumer with an odd row count takes the lone-row path: the tiny model's pages hold 2
    rows of the widest phase, and a block's last page of a phase may hold one)."""
    from megakernel.persistent import PersistentDecoder

    runs = [_two_steps(PersistentDecoder(ref, max_context=32, version=v, prefill_mode="reference",
                                         options=opts), PROMPT)
            for v, opts in ((3, {}), (version, options))]
    _assert_same_bits(runs[0], runs[1], f"version {version} {options} against version 3")


@pytest.mark.parametrize("version,blocks,prompt_len", [(5, 2, 40), (5, 3, 40), (2, 2, 130)],
                         ids=["v5-2-blocks", "v5-3-blocks", "v2-two-items-per-block"])
def test_folded_attention_computes_the_same_bits(ref, version, blocks, prompt_len):
    """``fold_attention`` runs an attention layer in one phase (each decode item makes its queries, the last split
    writes the new key and value, the blocks of the KV head's first splits combine once all its items are in).
    Version 5 after a 40-token prompt splits the context min(3, blocks) ways, so the combine is handed over between
    blocks; version 2 (64 positions per split, no cap) after 130 tokens gives 3 splits to 2 blocks, so a block
    scores two splits of one head. Two decode steps give the unfolded build's bits, with two grid barriers fewer per attention layer (the
    kernel counts its own)."""
    from megakernel.kernels.attention import attention_splits
    from megakernel.persistent import VERSIONS, PersistentDecoder

    pps = getattr(VERSIONS[version], "POSITIONS_PER_SPLIT", 64)
    cap = blocks // CONFIG.num_key_value_heads if version >= 3 else 0
    assert attention_splits(prompt_len + 1, pps, cap=cap) == (3 if version == 2 else min(3, blocks))
    prompt = [(7 * i + 3) % CONFIG.vocab_size for i in range(prompt_len)]
    runs, barriers = [], []
    for options in ({}, {"fold_attention": True}):
        dec = PersistentDecoder(ref, max_context=prompt_len + 8, version=version, blocks=blocks,
                                prefill_mode="reference", options=options)
        runs.append(_two_steps(dec, prompt))
        assert dec.last_run["barriers"] == dec.barriers_per_step() + 1
        barriers.append(dec.barriers_per_step())
    _assert_same_bits(runs[0], runs[1], f"fold_attention on {blocks} blocks against version {version}")
    assert barriers[1] == barriers[0] - 2 * len(CONFIG.full_layers)


@pytest.mark.parametrize("fused_out", [False, True], ids=["v7", "v7-fused-out"])
def test_fused_down_bits_do_not_depend_on_the_grid_or_the_run(ref, fused_out):
    """Version 7 adds every block's share of the MLP's down projection into the residual stream with integer
    atomics on fixed-point values (``split_down``): the sum cannot depend on the order the blocks arrive in, on
    how the rows are split (in whole chunks of ``fd_chunk`` rows, each chunk summed in fp32 first) or on how many
    replicas of the accumulator the atomics are spread over, or how far apart its elements lie. On 1, 2 and 3
    blocks, twice on 3, and with 2 and 3 replicas, two decode steps give bit-identical logits and states, with one
    grid barrier per MLP fewer than version 6 (the kernel counts its own). With ``fused_out`` each DeltaNet item
    also adds its share of out_proj into the accumulator, after a hand-off of the head's sum of squares between the
    items (on 1 block all of a head's items are one block's, on 2 and 3 they are spread), one barrier per DeltaNet
    layer fewer still."""
    from megakernel.persistent import PersistentDecoder

    runs = []
    grids = ((1, {}), (2, {}), (3, {}), (3, {}), (3, {"fd_reps": 2}),
             (2, {"fd_reps": 3, "fd_stride": 4, "fd_bulk": False}), (3, {"fd_bulk": False}))
    for blocks, options in grids:
        dec = PersistentDecoder(ref, max_context=32, version=7, blocks=blocks, prefill_mode="reference",
                                options={**options, "fused_out": fused_out})
        runs.append(_two_steps(dec, PROMPT))
        assert dec.last_run["barriers"] == dec.barriers_per_step() + 1
    for (blocks, options), run in zip(grids[1:], runs[1:]):
        _assert_same_bits(runs[0], run, f"version 7 (fused_out={fused_out}) on {blocks} blocks {options} against 1 "
                                        "block")
    # chunks of 3 rows in pages of 4: a chunk's fp32 sum is carried from one page to the next
    thirds = [_two_steps(PersistentDecoder(ref, max_context=32, version=7, blocks=blocks, prefill_mode="reference",
                                           options={"fd_chunk": 3, "fused_out": fused_out}), PROMPT)
              for blocks in (1, 2, 3)]
    for blocks, run in zip((2, 3), thirds[1:]):
        _assert_same_bits(thirds[0], run, f"version 7 with chunks of 3 rows on {blocks} blocks against 1 block")
    v6 = PersistentDecoder(ref, max_context=32, version=6, prefill_mode="reference")
    fewer = CONFIG.num_hidden_layers + (len(CONFIG.linear_layers) if fused_out else 0)
    assert dec.barriers_per_step() == v6.barriers_per_step() - fewer


def test_tensor_core_pages_bits_do_not_depend_on_the_grid(ref):
    """Version 11 multiplies the hidden-size pages on the tensor cores (``mma_pages``): a row's k chunks are summed
    in an order set by its index in the matrix (not its place in a page) and the warps' partials in a fixed order,
    so on 1 and 3 blocks (each grid cuts the rows into other pages) two decode steps give bit-identical logits and
    states. It is the option that changes them: without it, version 10's bits."""
    from megakernel.persistent import PersistentDecoder

    runs = [_two_steps(PersistentDecoder(ref, max_context=32, version=11, blocks=blocks, prefill_mode="reference"),
                       PROMPT) for blocks in (1, 3)]
    _assert_same_bits(runs[0], runs[1], "version 11 on 3 blocks against 1 block")
    off = _two_steps(PersistentDecoder(ref, max_context=32, version=11, blocks=2, prefill_mode="reference",
                                       options={"mma_pages": False}), PROMPT)
    v10 = _two_steps(PersistentDecoder(ref, max_context=32, version=10, blocks=2, prefill_mode="reference"), PROMPT)
    _assert_same_bits(v10, off, "version 11 without mma_pages against version 10")
    assert not torch.equal(runs[0][0][0], v10[0][0]), "mma_pages changed no bit"


@pytest.mark.parametrize("blocks", [2, 3])
def test_the_lm_head_pool_computes_the_same_bits(ref, blocks):
    """``lm_pool``: the LM head's last pages are claimed at run time by whichever block's copy thread gets there
    first (one page ahead of its consumers, from a counter the page table carries); the blocks that claim none
    skip their placeholder slots. Every row is computed the same way by whichever block takes it, so two decode
    steps give version 7's bits (the tiny model's 66 LM head pages: 40 % of them pooled)."""
    from megakernel.persistent import PersistentDecoder
    from megakernel.persistent.pages import lm_pool

    runs = []
    for options in ({}, {"lm_pool": 40}):
        dec = PersistentDecoder(ref, max_context=32, version=7, blocks=blocks, prefill_mode="reference",
                                options=options)
        runs.append(_two_steps(dec, PROMPT))
    assert lm_pool(CONFIG, dec.plan.page_words, 40)[0] > 2 * blocks
    _assert_same_bits(runs[0], runs[1], f"lm_pool on {blocks} blocks against version 7")


@pytest.mark.parametrize("blocks,pairs", [(2, 1), (3, 2)])
def test_pair_copies_compute_the_same_bits(ref, blocks, pairs):
    """``pair_copies``: the copy thread fetches a page and the next one with one copy into two adjacent slots
    (the LM head's pages, or every phase's), the second slot's mbarrier completing at once; the consumers still take
    one page at a time, so two decode steps give version 7's bits. The table marks the pairs (a negative ``n2``),
    the simulator's ring of 3 slots pairs slots 0 and 1 and copies slot 2 alone, and every page of the two steps
    is awaited through its own slot's mbarrier (the race detector sees a read before its copy)."""
    from megakernel.persistent import PersistentDecoder
    from megakernel.persistent.pages import page_table

    runs = []
    for options in ({}, {"pair_copies": pairs}):
        dec = PersistentDecoder(ref, max_context=32, version=7, blocks=blocks, prefill_mode="reference",
                                options=options)
        runs.append(_two_steps(dec, PROMPT))
    table, count = page_table(CONFIG, blocks, dec.plan.page_words, True, dec.option_value("fd_chunk", 1),
                              pairs=pairs)
    marked = table[:, :, 3] < 0
    assert marked.sum() >= blocks and (table[:, :, 3][marked] == -table[:, 1:, 1][marked[:, :-1]]).all()
    _assert_same_bits(runs[0], runs[1], f"pair_copies={pairs} on {blocks} blocks against version 7")


@pytest.mark.parametrize("blocks,options", [(2, {}), (3, {}), (3, {"smem_descs": False}), (2, {"smem_descs": 8})],
                         ids=["2", "3", "3-global-descs", "2-too-many-pages-for-smem"])
def test_lean_index_arithmetic_computes_the_same_bits(ref, blocks, options):
    """``lean`` (version 9): the page loops carry their ring slot and mbarrier parity from page to page, the copy
    thread takes 32-bit remainders, offsets are shifted, rows walked by a while loop: the same pages through the
    same slots in the same order, so two decode steps give version 8's bits (the simulator's ring of 3 slots
    wraps many times a step, so a slot or parity carried wrong reads a page that is not there yet, which the
    mbarrier model and the race detector see, or the wrong page, which the bits show). Version 9's copy thread
    reads the page table's rows from the block's copy in shared memory (``smem_descs``; also without it, and
    with room for fewer descriptors than a block's pages, when it falls back to global memory)."""
    from megakernel.persistent import PersistentDecoder

    runs = []
    for version, opts in ((8, {}), (9, options)):
        dec = PersistentDecoder(ref, max_context=32, version=version, blocks=blocks, prefill_mode="reference",
                                options=opts)
        runs.append(_two_steps(dec, PROMPT))
        assert dec.last_run["barriers"] == dec.barriers_per_step() + 1
    assert dec.option_value("lean", False)
    assert dec.plan.desc_pages == {None: 1024, False: 0, 8: 8}[options.get("smem_descs")]
    _assert_same_bits(runs[0], runs[1], f"version 9 on {blocks} blocks against version 8")


@pytest.mark.parametrize("version,option,value", [(9, "lean_calls", True), (10, "lean_calls", True),
                                                  (10, "count_smem", True), (10, "bar_thread", 33),
                                                  (12, "packed_descs", True)],
                         ids=["9-lean_calls", "10-lean_calls", "10-count_smem", "10-bar_thread", "12-packed_descs"])
def test_call_and_barrier_options_compute_the_same_bits(ref, version, option, value):
    """``lean_calls``: the out-of-line mixer bodies (DeltaNet, attention prepare and combine, and version 9's decode)
    receive each array as its address and shape, rebuilt on the other side as a C-contiguous array
    (``noinline.lean_wrapper``; the simulator checks every such array's shape and contiguity). ``count_smem``: the
    grid barriers count in shared memory (a count that went wrong would leave blocks waiting for a target nobody
    reaches, or report a wrong total). ``bar_thread``: another thread than the copy thread arrives at the grid
    barriers (version 12's ``deferred_shift`` has its own test against version 10). ``packed_descs``:
    the copy thread's descriptors packed in shared memory and walked by a carried index (a descriptor out of
    step would copy another page: other bits, or a wait that never ends). Either way, two
    decode steps on 3 blocks give the bits of the same version without it, through the same number of barriers,
    and the same conv state."""
    from megakernel.persistent import PersistentDecoder

    runs, tokens = [], []
    for on in (False, True):
        dec = PersistentDecoder(ref, max_context=32, version=version, blocks=3, prefill_mode="reference",
                                options={option: value if on else type(value)(0)})
        runs.append(_two_steps(dec, PROMPT))
        assert dec.last_run["barriers"] == dec.barriers_per_step() + 1
        if option == "packed_descs":  # several steps in one launch: the carried index wraps at each step's end
            tokens.append(dec.greedy_tokens(PROMPT, 4))
            assert dec.last_run["steps"] == 3
    assert dec.option_value(option, False) == value and dec.option_value("out_of_line", False)
    _assert_same_bits(runs[0], runs[1], f"version {version} with {option}={value} against without")
    assert len(set(map(tuple, tokens))) <= 1, f"{option}: tokens {tokens}"


def test_version_12_computes_version_10s_bits(ref):
    """Version 12 moves the DeltaNet q/k conv-state shift from the items' last reader to the out_proj phase and
    loads the state slabs first: no sum changes order. Two decode steps on 2 and 3 blocks give version 10's logits
    and every state (conv, DeltaNet, KV) bit for bit; a shift that came too early would be a race the simulator
    names, a missing or doubled one another conv state."""
    from megakernel.persistent import PersistentDecoder

    for blocks in (2, 3):
        runs = [_two_steps(PersistentDecoder(ref, max_context=32, version=v, blocks=blocks,
                                             prefill_mode="reference"), PROMPT) for v in (10, 12)]
        _assert_same_bits(runs[0], runs[1], f"version 12 on {blocks} blocks against version 10")


def test_version_12_shifts_more_q_k_channels_than_the_grid_has_threads(checkpoint_factory):
    """128 q/k channels (2 key heads of 32) on one block of 64 threads: the shift's threads take a second channel
    each (``qk_conv_shift``'s loop), and the bits stay version 10's."""
    import megakernel
    from megakernel.persistent import PersistentDecoder

    config = Qwen35Config.tiny(vocab_size=200, num_hidden_layers=2, layer_types=(LINEAR, FULL), linear_key_head_dim=32)
    ref = megakernel.load(checkpoint_factory("persistent_wide_qk", config=config), "reference")
    runs = [_two_steps(PersistentDecoder(ref, max_context=16, version=v, blocks=1, prefill_mode="reference"), PROMPT)
            for v in (10, 12)]
    assert 2 * config.linear_num_key_heads * config.linear_key_head_dim > 64
    _assert_same_bits(runs[0], runs[1], "version 12 on one block against version 10")


@pytest.mark.parametrize("blocks, more", [(1, {"producer_backoff": 500, "producer_regs": 40}),
                                          (3, {"producer_hold": True, "producer_throttle": True})],
                         ids=["1-backoff-warpgroup", "3-hold-throttle"])
def test_the_producer_warp_computes_version_12s_bits(ref, blocks, more):
    """``producer``: a ninth warp streams the pages and the eight consumer warps release each slot through an
    "empty" mbarrier, with no block barrier per page. The same pages in the same order, consumed by the same warps
    with the same sums: two decode steps give version 12's logits and every state bit for bit. The launch has one
    warp more; the consumers' ``syncthreads`` count them alone (a producer thread calling one fails), a slot
    refilled before every consumer warp left it is a race the simulator names, and a wrong empty-phase parity
    deadlocks (reported). On one block with ``producer_backoff`` and ``producer_regs`` (a producer warpgroup that
    gives its registers to the consumers: no-ops in the simulator, the roles and the counts are what is checked);
    on three with ``producer_hold`` (no copy issued while the block is at a grid barrier) and ``producer_throttle``
    (no later phase's page issued before an input projection's barrier)."""
    from megakernel.persistent import PersistentDecoder

    decs = [PersistentDecoder(ref, max_context=32, version=12, blocks=blocks, prefill_mode="reference",
                              options=options) for options in ({}, {"producer": True, **more})]
    runs = [_two_steps(d, PROMPT) for d in decs]
    extra = 128 if more.get("producer_regs") else 32  # (``producer_regs``: a producer warpgroup, one warp of which streams)
    assert decs[1].plan.producer_threads == extra
    assert decs[1].last_run["threads"] == decs[0].last_run["threads"] + extra
    _assert_same_bits(runs[0], runs[1], f"version 12 with a producer warp on {blocks} blocks against without")


@pytest.mark.parametrize("blocks, more", [(1, {}), (3, {}), (3, {"producer": True}), (3, {"ll_together": True})],
                         ids=["1", "3", "3-producer", "3-together"])
def test_flag_in_data_inproj_computes_version_12s_bits(ref, blocks, more):
    """``ll_inproj``: no grid barrier between a DeltaNet layer's in_proj and its items, which spin on the rows they
    read, written as flag-in-data words (value and tag in one 64-bit store, ``handoff``). The same sums: two decode
    steps give version 12's logits and every state bit for bit, through one barrier fewer per DeltaNet layer (the
    kernel's own count against the schedule's). An item reading a word before its writer stored it would read the
    last layer's tag and wait; one reading the floats instead of the words is a race the simulator names; a tag
    that did not change from step to step would let it take the last step's values (other bits). Several steps
    in one launch give the same tokens. The flag-in-data build runs under the reverse schedule (the last block
    starts first and reaches its items while the first blocks are still in in_proj: the forward and random ones
    let an item that does not wait find its words already written). With ``ll_together`` an item re-reads its
    words not yet written together (``handoff.ll_wait4``)."""
    from megakernel.persistent import PersistentDecoder
    from megakernel.testing import schedules

    base = {k: v for k, v in more.items() if k != "ll_together"}  # (ll_together needs ll_inproj)
    decs = [PersistentDecoder(ref, max_context=32, version=12, blocks=blocks, prefill_mode="reference",
                              options={**base, **options}) for options in ({}, {"ll_inproj": True, **more})]
    runs = [_two_steps(decs[0], PROMPT)]
    with schedules.use("reverse"):
        runs.append(_two_steps(decs[1], PROMPT))
        barriers = decs[1].last_run["barriers"]
        ll_tokens = decs[1].greedy_tokens(PROMPT, 4)
        ll_logits = decs[1].logits.clone()
    assert decs[1].barriers_per_step() == decs[0].barriers_per_step() - len(CONFIG.linear_layers)
    assert barriers == decs[1].barriers_per_step() + 1
    _assert_same_bits(runs[0], runs[1], f"version 12 with ll_inproj on {blocks} blocks against without")
    assert ll_tokens == decs[0].greedy_tokens(PROMPT, 4)
    assert torch.equal(ll_logits, decs[0].logits), "the last step's logits of a 3-step launch differ"


@pytest.mark.parametrize("blocks, more", [(1, {}), (3, {"ll_backoff": 100, "ll_together": True})],
                         ids=["1", "3-backoff-together"])
def test_flag_in_data_residual_computes_version_13s_bits(ref, blocks, more):
    """``ll_residual``: no grid barrier between a residual phase (out_proj, o_proj) and the MLP after it; the MLP's
    norm spins on h's rows, written as flag-in-data words, and the MLP accumulator alternates between two regions
    by layer parity. The same sums: two decode steps give version 13's logits and every state bit for bit, through
    one barrier fewer per layer (the kernel's own count against the schedule's), under the reverse schedule (the
    last block reaches its MLP while the first are still in the residual phase). A norm reading h's floats would
    be a race the simulator names; one accumulator for both parities would lose a fast block's down sums to a slow
    block's clear (other bits); the words carrying the last layer's tag would give it the last layer's h. Several
    steps in one launch give the same tokens. On three blocks with ``ll_backoff`` (a sleep between re-reads) and
    ``ll_together`` (a thread's four words re-read together)."""
    from megakernel.persistent import PersistentDecoder

    _residual_hand_off_keeps_version_13s_bits(
        ref, PersistentDecoder(ref, max_context=32, version=13, blocks=blocks, prefill_mode="reference",
                               options={"ll_residual": True, **more}),
        f"version 13 with ll_residual on {blocks} blocks")


def _residual_hand_off_keeps_version_13s_bits(ref, build, what):
    """``build`` (a decoder with ``ll_residual``) against version 13 on the same grid: two decode steps under the
    reverse schedule give its logits and every state bit for bit, through one barrier fewer per layer (the kernel's
    own count against the schedule's), and a 3-step launch the same tokens and last logits."""
    from megakernel.persistent import PersistentDecoder
    from megakernel.testing import schedules

    plain = PersistentDecoder(ref, max_context=32, version=13, blocks=build.requested_blocks,
                              prefill_mode="reference")
    runs = [_two_steps(plain, PROMPT)]
    with schedules.use("reverse"):
        runs.append(_two_steps(build, PROMPT))
        barriers = build.last_run["barriers"]
        tokens = build.greedy_tokens(PROMPT, 4)
        logits = build.logits.clone()
    assert build.barriers_per_step() == plain.barriers_per_step() - CONFIG.num_hidden_layers
    assert barriers == build.barriers_per_step() + 1
    _assert_same_bits(runs[0], runs[1], f"{what} against version 13")
    assert tokens == plain.greedy_tokens(PROMPT, 4)
    assert torch.equal(logits, plain.logits), "the last step's logits of a 3-step launch differ"


@pytest.mark.parametrize("blocks", [1, 3])
def test_version_14_computes_version_13s_bits(ref, blocks):
    """Version 14 is version 13 with ``ll_residual``, ``ll_together=2`` and ``packed_descs`` on by default: two
    decode steps give version 13's logits and every state bit for bit under the reverse schedule, through one grid
    barrier fewer per layer (the kernel's own count against the schedule's), and a 3-step launch the same tokens
    and last logits."""
    from megakernel.persistent import PersistentDecoder

    v14 = PersistentDecoder(ref, max_context=32, version=14, blocks=blocks, prefill_mode="reference")
    assert v14.option_value("ll_residual") and v14.option_value("ll_together") == 2
    assert v14.option_value("packed_descs")
    _residual_hand_off_keeps_version_13s_bits(ref, v14, f"version 14 on {blocks} blocks")


LONG_PROMPT = [(7 * i + 3) % 250 + 1 for i in range(40)]  # 40 tokens: three attention splits of 16 positions


@pytest.mark.parametrize("blocks, cols", [(3, 12), (2, 32)], ids=["3-blocks-8-columns", "2-blocks-32-columns"])
def test_column_combine_computes_version_13s_bits(ref, blocks, cols):
    """``combine_cols``: the attention combine over items of a few columns of a head, each thread's partials of
    every split loaded at once, parked in shared memory and summed in split order by one row of threads. The same
    sums: after a 40-token prompt (three splits on three blocks) two decode steps give version 13's logits and
    every state bit for bit. A wish of 12 columns becomes 8 (they must divide the head's 32 and the block's 64
    threads): eight row groups, four items per head, looped over by three blocks; 32 columns on two blocks: two
    row groups, so a thread loads two splits and the items of both heads queue on the blocks."""
    from megakernel.kernels.attention import combine_columns
    from megakernel.persistent import PersistentDecoder

    assert combine_columns(32, 64, 12) == 8 and combine_columns(24, 64, 32) == 8 and combine_columns(32, 64, 32) == 32
    decs = [PersistentDecoder(ref, max_context=64, version=13, blocks=blocks, prefill_mode="reference",
                              options=options) for options in ({}, {"combine_cols": cols})]
    runs = [_two_steps(d, LONG_PROMPT) for d in decs]
    assert decs[1].plan.workspace >= decs[0].plan.workspace
    _assert_same_bits(runs[0], runs[1], f"version 13 with combine_cols={cols} on {blocks} blocks against without")


def test_version_13_waits_for_more_q_k_words_than_the_block_has_threads(checkpoint_factory):
    """Two DeltaNet layers a step (the words rewritten from layer to layer within a launch) and 256 q/k channels on
    blocks of 64 threads: each item's threads wait for their channels' words one after another in the conv's loop
    (not all at once, as where a thread has one channel). A 3-step launch on 2 blocks under the reverse schedule
    gives version 12's tokens and logits bit for bit, through one barrier fewer per DeltaNet layer."""
    import megakernel
    from megakernel.persistent import PersistentDecoder
    from megakernel.testing import schedules

    config = Qwen35Config.tiny(vocab_size=200, num_hidden_layers=3, layer_types=(LINEAR, FULL, LINEAR),
                               linear_key_head_dim=64)
    ref = megakernel.load(checkpoint_factory("persistent_two_deltanet_wide_qk", config=config), "reference")
    runs = []
    for version in (12, 13):
        dec = PersistentDecoder(ref, max_context=16, version=version, blocks=2, prefill_mode="reference")
        with schedules.use("reverse"):
            runs.append((dec.greedy_tokens(PROMPT, 4), dec.logits.clone(), dec.last_run["barriers"]))
    assert 2 * config.linear_num_key_heads * config.linear_key_head_dim > dec.plan.threads
    assert runs[0][0] == runs[1][0] and torch.equal(runs[0][1], runs[1][1])
    assert runs[1][2] == runs[0][2] - 3 * len(config.linear_layers)  # 3 steps


def test_the_simulator_refuses_a_flag_in_data_word_rewritten_with_its_tag():
    """A flag-in-data word must change its tag with every store (a reader waiting for a tag could otherwise take
    the old value or the new one): the simulator's ``st_relaxed_u64`` raises on a store that keeps it, which makes a
    tag that repeats (within a launch or across launches) fail every schedule, not only the ones that would read
    early."""
    from megakernel.persistent import tma
    from megakernel.testing.races import SimulatorRace

    words = np.zeros(3, dtype=np.int64)
    tma.st_relaxed_u64(words, 1, (7 << 32) | 0x3FC00000)
    tma.st_relaxed_u64(words, 1, (8 << 32) | 0x3FC00000)  # a new tag: fine, even with the same value
    assert int(words[1]) >> 32 == 8 and int(tma.ld_relaxed_u64(words, 1)) == int(words[1])
    with pytest.raises(SimulatorRace, match="rewritten with the tag it already carries"):
        tma.st_relaxed_u64(words, 1, (8 << 32) | 0x40000000)


def test_load_takes_build_options_for_the_persistent_stage_only(tiny_checkpoint):
    """``megakernel.load(..., options=)``: a persistent version with build options on top (what the benchmark's
    build variants load); the other stages refuse them, naming the argument."""
    import megakernel

    dec = megakernel.load(tiny_checkpoint, "persistent", version=12, options={"producer": True})
    assert dec.version == 12 and dec.option_value("producer") and dec.plan.producer_threads == 32
    with pytest.raises(ValueError, match="options= applies to stage 'persistent' only"):
        megakernel.load(tiny_checkpoint, "layered", options={"producer": True})


def test_the_producer_warp_stops_when_a_launch_ends_early(ref):
    """A launch of 6 steps that meets its end-of-sequence token after the first: the producer has issued pages of
    the steps that will not run; the consumers stop it (``bars[STOP]``) and wait for what it issued before the
    block exits. The tokens are version 12's, and the next launch starts clean."""
    from megakernel.persistent import PersistentDecoder

    outs = []
    for options in ({}, {"producer": True}):
        dec = PersistentDecoder(ref, max_context=32, version=12, blocks=2, prefill_mode="reference", options=options)
        logits, state = dec.prefill(PROMPT)
        first = int(logits[-1].argmax())
        probe = dec.run(state, first, 1)  # the token the first step makes: the end-of-sequence token below
        logits, state = dec.prefill(PROMPT)
        tokens = dec.run(state, first, 6, eos=probe[0])
        again = dec.run(state, tokens[-1], 2)
        outs.append((tokens, again, dec.last_run["steps"]))
    assert outs[0] == outs[1] and len(outs[1][0]) == 1, outs


@pytest.mark.parametrize("options", [{}, {"count_smem": True}], ids=["count", "count-in-smem"])
def test_the_profiling_build_records_every_barrier_and_the_page_waits(ref, options):
    """``profile=True``: thread 0 of every block stamps the global timer at every grid barrier's arrival and
    departure and, per phase, adds up its time waiting for weight pages (``profile.read_timeline``). On 3 blocks
    and two steps in one launch: a stamp for every barrier the schedule has, no block leaving a barrier before the
    last one arrived, every page wait within its phase's work, none in the phases that take no pages (embedding,
    DeltaNet, attention), and the per-phase table with its page-wait columns."""
    from megakernel.persistent import PersistentDecoder
    from megakernel.persistent.profile import format_table, phase_table, read_timeline

    dec = PersistentDecoder(ref, max_context=32, version=9, blocks=3, prefill_mode="reference", profile=True,
                            options=options)
    logits, state = dec.prefill(PROMPT)
    dec.run(state, int(logits[-1].argmax()), 2)
    t = read_timeline(dec, 2, context=len(PROMPT))
    assert len(t.labels) == 2 * dec.barriers_per_step() + 1 and t.arrive.shape == (3, len(t.labels))
    assert (t.leave >= t.arrive).all() and (t.arrive[:, 1:] >= t.leave[:, :-1]).all()
    assert (t.leave.min(axis=0) >= t.arrive.max(axis=0)).all(), "a block left a barrier before the last arrived"
    work = t.work()
    assert (t.page_wait >= 0).all() and (t.page_wait <= work).all()
    no_pages = [k for k, kind in enumerate(t.kinds) if kind in ("embed", "deltanet") or kind.startswith("attn")]
    assert no_pages and (t.page_wait[:, no_pages] == 0).all()
    assert t.page_wait[:, t.kinds.index("lm_head")].min() > 0  # every block's copy thread timed its LM head pages
    rows = {r["phase"]: r for r in phase_table(t)}
    assert rows["mlp"]["count"] == CONFIG.num_hidden_layers and rows["lm_head"]["critical_us"] > 0
    assert "crit. page wait" in format_table(t) and "barrier latency" in format_table(t)
    latency, spread = t.barrier_costs()
    first_out = t.leave.min(axis=0)
    assert latency == pytest.approx((first_out - t.arrive.max(axis=0)).sum() / 1e3 / 2) and latency >= 0
    assert spread == pytest.approx((t.leave.max(axis=0) - first_out).sum() / 1e3 / 2) and spread >= 0


def test_the_release_stamp_splits_a_barriers_latency(ref):
    """``release_stamp`` (timing only): the page-wait column holds each block's time from its arrival stamp to its
    release-add, which comes before it leaves the barrier, at every barrier, the mixers' too."""
    from megakernel.persistent import PersistentDecoder
    from megakernel.persistent.profile import read_timeline

    dec = PersistentDecoder(ref, max_context=32, version=12, blocks=2, prefill_mode="reference", profile=True,
                            options={"release_stamp": True})
    logits, state = dec.prefill(PROMPT)
    dec.run(state, int(logits[-1].argmax()), 1)
    t = read_timeline(dec, 1, context=len(PROMPT))
    assert (t.page_wait > 0).all() and (t.arrive + t.page_wait <= t.leave).all()


def test_fixed_point_sums_are_exact_and_order_free():
    """``to_fixed`` truncates x 2^32 toward zero, ``from_fixed`` rounds once: summing converted products in any
    order gives the same integer, within one unit per term of the exact sum."""
    from megakernel.persistent.split_down import FIXED_SCALE, from_fixed, to_fixed

    rng = np.random.default_rng(0)
    products = (rng.standard_normal(3584) * 0.05).astype(np.float32)
    fixed = [int(to_fixed(p)) for p in products]
    assert sum(fixed) == sum(fixed[::-1]) == sum(rng.permutation(fixed).tolist())
    exact = float(np.sum(products.astype(np.float64)))
    total = np.int64(sum(fixed))
    assert abs(float(from_fixed(total)) - exact) < len(products) / float(FIXED_SCALE) + abs(exact) * 2**-23
    assert int(to_fixed(np.float32(-1.5))) == -(3 << 31) and int(to_fixed(np.float32(2**-33))) == 0


def test_back_to_back_launches_carry_the_monotonic_barrier_over(ref):
    """Version 5's barrier counts arrivals on a counter the kernel never resets; each launch ends by storing the
    next one's base. One launch per token with no host write between them (``relaunch``, the benchmark's "-step"
    mode) must give the tokens of one launch for all of them, and a run after that (the host zeroes the barrier
    words) too."""
    from megakernel.persistent import PersistentDecoder
    from megakernel.persistent import plan as P

    dec = PersistentDecoder(ref, max_context=32, version=5, prefill_mode="reference")
    all_in_one = dec.greedy_tokens(PROMPT, 4)
    logits, state = dec.prefill(PROMPT)
    relaunched = [int(logits[-1].argmax())]
    relaunched += dec.run(state, relaunched[0], 1)
    dec.relaunch(2)
    relaunched += dec.finish()
    assert relaunched == all_in_one
    assert int(dec.ctl[P.CTL_BAR_BASE]) == 3 * dec.blocks * (dec.barriers_per_step() + 1)
    assert dec.greedy_tokens(PROMPT, 4) == all_in_one


def test_eos_stops_the_launch(ref):
    """A token chosen inside the launch equal to the EOS id ends the launch after it. (Sampled at a high
    temperature: this tiny model's greedy text repeats one token; the draws are fixed by the seed.)"""
    from megakernel.persistent import PersistentDecoder

    dec = PersistentDecoder(ref, max_context=32, prefill_mode="reference")
    kw = dict(temperature=5.0, seed=2)
    full = dec.generate(PROMPT, 5, stop_at_eos=False, **kw).tolist()
    k = next(i for i in range(2, 5) if full[i] not in full[:i])  # the first new token drawn by the kernel
    out = dec.generate(PROMPT, 5, stop_at_eos=True, eos_token_id=full[k], **kw).tolist()
    assert out == full[: k + 1]
    assert dec.last_run["steps"] == k  # the kernel ran k steps (the first token comes from the prefill)


def test_sampling_in_the_kernel_follows_its_keys_and_is_reproducible(ref):
    """Each sampled token is exactly argmax(logits / T + g(seed, position)), g the counter-based Gumbel noise the
    host can recompute (lm_head.gumbel_noise_host); the same seed gives the same tokens."""
    from megakernel.kernels.lm_head import gumbel_noise_host
    from megakernel.persistent import PersistentDecoder

    dec = PersistentDecoder(ref, max_context=32, prefill_mode="reference")
    T, seed = 0.7, 12345
    runs = []
    for _ in range(2):
        logits, state = dec.prefill(PROMPT, last_only=True)
        token, drawn = int(logits[-1].argmax()), []
        for _ in range(2):
            pos = state.length
            token = dec.run(state, token, 1, sample=True, temperature=T, seed=seed)[0]
            noise = torch.from_numpy(gumbel_noise_host(seed, pos, CONFIG.vocab_size))
            assert token == int((dec.logits.cpu() / T + noise).argmax())
            drawn.append(token)
        runs.append(drawn)
    assert runs[0] == runs[1]


def test_gumbel_keys_sample_the_softmax():
    """The kernel's noise (exactly reproduced on the host) makes argmax(l / T + g) a draw from softmax(l / T):
    a chi-square test over 20,000 (seed, position) keys on a 6-token vocabulary. False-failure rate: 1e-4 (the
    statistic's 0.9999 quantile with 5 degrees of freedom is 25.7)."""
    from megakernel.kernels.lm_head import gumbel_noise_host

    logits = np.array([2.0, 1.0, 0.5, 0.0, -1.0, 1.5], dtype=np.float32)
    T = 0.8
    p = np.exp(logits / T - (logits / T).max())
    p /= p.sum()
    n = 20_000
    counts = np.zeros(6)
    for i in range(n):
        g = gumbel_noise_host(seed=i // 100, step=i % 100, n=6)
        counts[int(np.argmax(logits / T + g))] += 1
    chi2 = float(((counts - n * p) ** 2 / (n * p)).sum())
    assert chi2 < 25.7, f"chi-square {chi2:.1f} (counts {counts}, expected {n * p})"


@pytest.mark.parametrize("options", [dict(counter=True), dict(prefetch=True, prefetch_late=True), dict(ring=2),
                                     dict(defer=True, state_first=True, ring=2),
                                     dict(evict_first=True, rows_out_of_line=True, out_of_line=True),
                                     dict(counter=True, l2_ahead=3, evict_first=True), dict(l2_ahead=2, l2_keep=True),
                                     dict(monotonic=True, warp_release=True), dict(monotonic=True, page_pairs=True),
                                     dict(fold_attention=True, out_of_line=True),
                                     dict(l2_mixer=2, deltanet_out_of_line=True),
                                     dict(out_of_line=True, inline_decode=True),
                                     dict(fused_down=True, xregs=True, split_sums=True, paired_rows=True),
                                     dict(fused_down=True, fd_chunk=3, fd_stride=2)],
                         ids=["counter-barrier", "l2-prefetch", "ring-2", "deferred-refills-state-first",
                              "evict-first-out-of-line", "counter-barrier-l2-ahead", "l2-ahead-before-barrier",
                              "monotonic-barrier-warp-release", "page-pairs", "fold-attention-out-of-line",
                              "l2-mixer-deltanet-out-of-line", "out-of-line-inline-decode",
                              "fused-down-on-version-3", "fused-down-chunks-across-pages"])
def test_measured_build_variants_stay_correct(ref, options):
    """The v2/v3 build switches NOTES.md measured (not the defaults) compute the same: two steps, logits and every
    state against the reference (the counter barrier's release/acquire pairs under the race detector)."""
    from megakernel.persistent import PersistentDecoder

    dec = PersistentDecoder(ref, max_context=32, version=3, prefill_mode="reference", options=options)
    _decode_matches_reference(dec, ref, PROMPT, 2, str(options))
    assert dec.last_run["barriers"] == dec.barriers_per_step() + 1


def test_folded_attention_on_an_unseen_config(checkpoint_factory):
    """``fold_attention`` with one query head per KV head (G = 1), two KV heads (two counters), a head dim that is
    not a multiple of 32 and attention first: after a 15-token prompt the first step scores one split per KV head
    (every item is its head's last), the second two (the combine handed over). Version 5's bits."""
    import megakernel
    from megakernel.persistent import PersistentDecoder

    config = Qwen35Config.tiny(vocab_size=200, num_hidden_layers=2, layer_types=(FULL, LINEAR), head_dim=24,
                               partial_rotary_factor=0.5, num_attention_heads=2, num_key_value_heads=2)
    ref = megakernel.load(checkpoint_factory("persistent_fold_g1", config=config), "reference")
    prompt = PROMPT * 3
    runs = []
    for options in ({}, {"fold_attention": True}):
        dec = PersistentDecoder(ref, max_context=32, version=5, blocks=4, prefill_mode="reference", options=options)
        runs.append(_two_steps(dec, prompt))
        assert dec.last_run["barriers"] == dec.barriers_per_step() + 1
    _assert_same_bits(runs[0], runs[1], "fold_attention with G = 1 against version 5")


def test_fused_out_hands_the_heads_sums_of_squares_over(checkpoint_factory):
    """``fused_out`` with 3 DeltaNet items per value head (value head dim 24: 8 columns per item), so each item's
    gated norm waits for its head's other items, on other blocks: against the reference (logits, every state) and
    bit-identical on 1 and 3 blocks."""
    import megakernel
    from megakernel.persistent import PersistentDecoder

    config = Qwen35Config.tiny(vocab_size=200, num_hidden_layers=2, layer_types=(LINEAR, FULL),
                               linear_value_head_dim=24)
    ref = megakernel.load(checkpoint_factory("persistent_fused_out_ns3", config=config), "reference")
    dec = PersistentDecoder(ref, max_context=32, version=7, blocks=3, prefill_mode="reference",
                            options={"fused_out": True})
    assert dec.plan.config.linear_value_head_dim // dec.plan.cw == 3
    _decode_matches_reference(dec, ref, PROMPT, 2, "fused_out, 3 items per head")
    runs = [_two_steps(PersistentDecoder(ref, max_context=32, version=7, blocks=blocks, prefill_mode="reference",
                                         options={"fused_out": True}), PROMPT) for blocks in (1, 3)]
    _assert_same_bits(runs[0], runs[1], "fused_out on 3 blocks against 1 block")


def test_an_unknown_build_option_is_refused(ref):
    from megakernel.persistent import PersistentDecoder

    dec = PersistentDecoder(ref, max_context=32, version=4, prefill_mode="reference", options={"evict_frist": True})
    with pytest.raises(ValueError, match="unknown persistent kernel build option.*evict_frist"):
        dec.kernel()


def test_without_its_barriers_the_kernel_is_wrong(ref):
    """The test-only switch that removes every grid barrier: the race detector (or the result) says so."""
    from megakernel.persistent import PersistentDecoder
    from megakernel.testing.races import SimulatorRace

    dec = PersistentDecoder(ref, max_context=32, prefill_mode="reference", barriers=False)
    ref_logits, ref_state = ref.prefill(PROMPT)
    _, state = dec.prefill(PROMPT)
    token = int(ref_logits[-1].argmax())
    try:
        out = dec.decode_step(token, state)
    except SimulatorRace:
        return
    with pytest.raises(AssertionError):
        check("logits without barriers", ref.decode_step(token, ref_state), out, TOL, verbose=False)


def test_an_unseen_config_works(checkpoint_factory):
    """Attention first, grouped value heads (Hv = 2 Hk), head_dim 64 with half of it rotary, GQA 2:1."""
    import megakernel

    config = Qwen35Config.tiny(vocab_size=200, num_hidden_layers=2, layer_types=(FULL, LINEAR), head_dim=64,
                               partial_rotary_factor=0.5, num_attention_heads=4, num_key_value_heads=2,
                               linear_num_key_heads=1, linear_num_value_heads=2, hidden_size=40,
                               intermediate_size=96)
    path = checkpoint_factory("persistent_unseen", config=config)
    ref = megakernel.load(path, "reference")
    dec = megakernel.load(path, "persistent", max_context=16, prefill_mode="reference")
    ref_logits, ref_state = ref.prefill(PROMPT)
    _, state = dec.prefill(PROMPT)
    token = int(ref_logits[-1].argmax())
    check("unseen config logits", ref.decode_step(token, ref_state), dec.decode_step(token, state), TOL)
    compare_states(ref_state, state.to_reference(), TOL)


def test_bad_input_is_refused_before_launch(ref):
    from megakernel.persistent import GridNotCoResidentError, PersistentDecoder
    from reference import ContextTooLongError

    dec = PersistentDecoder(ref, max_context=8, prefill_mode="reference")
    _, state = dec.prefill(PROMPT)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        dec.decode_step(10_000, state)
    with pytest.raises(TypeError, match="int"):
        dec.decode_step(torch.tensor(3), state)
    with pytest.raises(ValueError, match="steps must be >= 1"):
        dec.run(state, 3, 0)
    with pytest.raises(ContextTooLongError, match="capacity 8"):
        dec.run(state, 3, 4)  # 5 + 4 > 8
    with pytest.raises(ContextTooLongError, match="capacity 8"):
        dec.generate(list(range(6)), 4)
    big = PersistentDecoder(ref, max_context=8, blocks=10_000, prefill_mode="reference")
    with pytest.raises(GridNotCoResidentError, match="grid not co-resident: 10000 blocks"):
        big.kernel()


@pytest.mark.parametrize("field,override", [
    ("hidden_act", {"hidden_act": "gelu"}),
    ("attention_bias", {"attention_bias": True}),
    ("num_attention_heads / num_key_value_heads, head_dim", {"head_dim": 512, "num_attention_heads": 8,
                                                            "num_key_value_heads": 1}),
    ("hidden_size", {"hidden_size": 44}),
])
def test_unsupported_configs_are_refused_naming_the_field(field, override):
    from megakernel.layout import UnsupportedConfigError
    from megakernel.persistent.plan import make_plan

    config = Qwen35Config.tiny(**override)
    with pytest.raises(UnsupportedConfigError, match=field.split(",")[0].split(" ")[0]):
        make_plan(config, 64, 64, 3)


# ---------------------------------------------------------------------------------------------- the schedule model
def test_schedule_dependencies_bytes_and_barriers():
    from megakernel.persistent.schedule import (ScheduleError, barriers_per_token, bytes_per_step, check_bytes,
                                                check_dependencies, step_phases)
    from reference.config import Qwen35Config as C

    from reference.notebook import PUBLISHED_CONFIG

    published = C.from_pretrained(PUBLISHED_CONFIG)
    assert barriers_per_token(published) == 134 and barriers_per_token(published, sample=True) == 135
    assert barriers_per_token(published, version=5, fold_attention=True) == 134 - 2 * len(published.full_layers)
    assert barriers_per_token(published, version=7, fused_down=True) == 134 - published.num_hidden_layers == 110
    assert barriers_per_token(published, version=7, fused_down=True, fused_out=True) == 110 - 18 == 92
    for config in (published, CONFIG):
        phases = step_phases(config, context=100)
        check_dependencies(phases)
        check_bytes(config, context=100)
        folded = step_phases(config, context=100, version=5, blocks=7, fold_attention=True)
        check_dependencies(folded)  # the attention layer as one phase: proj_att, kv -> kv, partials, attn_out
        assert bytes_per_step(folded) == bytes_per_step(step_phases(config, context=100, version=5, blocks=7))
        fused = step_phases(config, context=100, version=7, blocks=7, fused_down=True)
        check_dependencies(fused)  # h_acc: added into by the MLPs, read by the norms, folded and cleared by out_proj
        assert bytes_per_step(fused) == bytes_per_step(step_phases(config, context=100, version=7, blocks=7))
        both = step_phases(config, context=100, version=7, blocks=7, fused_down=True, fused_out=True)
        check_dependencies(both)  # h_out: added into by the DeltaNet phases, folded and cleared by o_proj
        assert bytes_per_step(both) == bytes_per_step(fused)
    # drop the barrier between the DeltaNet recurrence and out_proj: the model names the buffer and the phases
    phases = step_phases(published, context=100)
    broken = [p if p.name != "deltanet" or p.layer != 0 else type(p)(**{**p.__dict__, "barrier_after": False})
              for p in phases]
    with pytest.raises(ScheduleError, match=r"out_proj\[0\] reads 'o_lin' written by deltanet\[0\]"):
        check_dependencies(broken)
    # fused_down: without the barrier after an MLP, the next input norm would read h_acc mid-sum
    fused = step_phases(published, context=100, version=7, fused_down=True)
    broken = [p if p.name != "mlp" or p.layer != 0 else type(p)(**{**p.__dict__, "barrier_after": False})
              for p in fused]
    with pytest.raises(ScheduleError, match=r"in_proj\[1\] reads 'h_acc' written by mlp\[0\]"):
        check_dependencies(broken)
    # fused_out: without the barrier after the DeltaNet phase, the MLP's norm would read h and h_out mid-update
    both = step_phases(published, context=100, version=7, fused_down=True, fused_out=True)
    broken = [p if p.name != "deltanet" or p.layer != 0 else type(p)(**{**p.__dict__, "barrier_after": False})
              for p in both]
    with pytest.raises(ScheduleError, match=r"mlp\[0\] reads '(h|h_out)' written by deltanet\[0\]"):
        check_dependencies(broken)
    # ll_inproj: the items wait for flag-in-data words, not for a barrier; out_proj still reads in_proj's floats,
    # two barriers later; a phase reading the floats with no barrier between is named, as is one rewriting the words
    # before the items' barrier
    hand = step_phases(published, context=100, version=13, fused_down=True, ll_inproj=True)
    check_dependencies(hand)
    assert barriers_per_token(published, version=13, fused_down=True, ll_inproj=True) == 110 - 18 == 92
    assert bytes_per_step(hand) == bytes_per_step(step_phases(published, context=100, version=13, fused_down=True))
    broken = [p if p.name != "deltanet" or p.layer != 0 else type(p)(**{**p.__dict__, "reads": ("proj_lin",)})
              for p in hand]
    with pytest.raises(ScheduleError, match=r"deltanet\[0\] reads 'proj_lin' written by in_proj\[0\]"):
        check_dependencies(broken)
    broken = [p if p.name != "deltanet" or p.layer != 0 else type(p)(**{**p.__dict__, "writes": ("proj_ll~",)})
              for p in hand]
    with pytest.raises(ScheduleError, match=r"deltanet\[0\] overwrites 'proj_ll~' that deltanet\[0\]|"
                                            r"deltanet\[0\] and in_proj\[0\] both write 'proj_ll~'"):
        check_dependencies(broken)
    # ll_residual: the MLP's norm waits for h's words, not for a barrier; the accumulators alternate by layer, so
    # one accumulator for both parities (a residual phase clearing what an MLP past it adds into) is named, as is an
    # MLP reading h's floats
    res = step_phases(published, context=100, version=13, fused_down=True, ll_inproj=True, ll_residual=True)
    check_dependencies(res)
    assert barriers_per_token(published, version=13, fused_down=True, ll_inproj=True, ll_residual=True) == 92 - 24
    assert bytes_per_step(res) == bytes_per_step(hand)
    one_acc = [type(p)(**{**p.__dict__, "reads": tuple(b.rstrip("01") if b.startswith("h_acc") else b for b in p.reads),
                          "writes": tuple(b.rstrip("01") if b.startswith("h_acc") else b for b in p.writes)})
               for p in res]
    with pytest.raises(ScheduleError, match=r"mlp\[0\] overwrites 'h_acc' that out_proj\[0\] reads"):
        check_dependencies(one_acc)
    broken = [p if p.name != "mlp" or p.layer != 0 else type(p)(**{**p.__dict__, "reads": ("h",)}) for p in res]
    with pytest.raises(ScheduleError, match=r"mlp\[0\] reads 'h' written by out_proj\[0\]"):
        check_dependencies(broken)
    with pytest.raises(ValueError, match="ll_residual needs fused_down"):
        step_phases(published, ll_residual=True)


def test_barrier_bound_of_a_barrier_per_phase_kernel():
    """floor / (floor + barriers x cost), from the budget's floor: at the H100's measured ~2.8 us per barrier the
    134 barriers of the 0.8B step cap the fraction at ~58% at context 512 (NOTES.md), whatever the phases do."""
    from megakernel.persistent.schedule import barrier_bound
    from reference.budget import decode_budget
    from reference.config import Qwen35Config as C

    c = C.qwen35_0_8b()
    floor = decode_budget(c, 512).floor_seconds()
    assert barrier_bound(c, 512, 2.8e-6) == pytest.approx(floor / (floor + 134 * 2.8e-6))
    assert 0.57 < barrier_bound(c, 512, 2.8e-6) < 0.59
    assert barrier_bound(c, 512, 0.0) == 1.0 and barrier_bound(c, 512, 2.8e-6, barriers=0) == 1.0
    assert barrier_bound(c, 512, 2.8e-6, barriers=60) > barrier_bound(c, 512, 2.8e-6) > barrier_bound(c, 512, 4e-6)
    with pytest.raises(ValueError, match="barrier_seconds"):
        barrier_bound(c, 512, -1e-6)


def test_page_table_covers_every_row_once():
    """Every row of every matrix is streamed by exactly one block, once per step, in the phases' order."""
    from megakernel.persistent.pages import page_table, rows_phases

    for fused, out in ((False, False), (True, False), (True, True)):
        _pages_cover_every_row_once(rows_phases(CONFIG, fused, out), page_table, fused, out)


def _pages_cover_every_row_once(phases, page_table, fused, out):
    for nblocks, words in ((3, 128), (7, 64)):
        table, count = page_table(CONFIG, nblocks, words, fused, 4, out)
        seen = {p: np.zeros(ph.rows, dtype=int) for p, ph in enumerate(phases)}
        for b in range(nblocks):
            order = [int(table[b, i, 6]) for i in range(count[b])]
            assert order == sorted(order)
            for i in range(count[b]):
                r0, n, p = (int(x) for x in table[b, i, 4:7])
                seen[p][r0:r0 + n] += 1
                assert int(table[b, i, 1]) + int(table[b, i, 3]) <= words
        for p, rows in seen.items():
            assert (rows == 1).all(), phases[p].name
        for b in range(nblocks if fused else 0):  # fused_down: a block's down rows are the act rows it made
            mine: dict = {}
            for i in range(count[b]):
                r0, n, p = (int(x) for x in table[b, i, 4:7])
                mine.setdefault((phases[p].name, phases[p].layer), set()).update(range(r0, r0 + n))
            for layer in range(CONFIG.num_hidden_layers):
                assert mine.get(("mlp_gate_up", layer)) == mine.get(("mlp_down", layer)), (b, layer)
    assert math.isfinite(float(count.sum()))


def test_the_gpu_build_compiles_for_sm90_within_its_spill_budget():
    """The persistent kernel as the GPU compiles it (not the simulator's Python): Numba to LTO-IR, linked for
    sm_90a by nvJitLink as a launch on an H100 links it (``tools/ptxas_report.py``, in a subprocess with the
    simulator off). Catches a kernel that only the GPU machine could find broken (typing of the device-only paths,
    the inline PTX, ``setmaxnreg``) and a register regression. Measured through LTO (2026-11-28): v1 255 registers
    / 1,004 B of spill stores, v5 255 / 376 B, v5 with ``fold_attention`` 255 / 412 B, v6 255 / 192 B, v10 255 /
    152 B, v11 255 / 184 B, v12 255 / 168 B, v12 with the producer warp (``producer_regs``: compiled for 168, the
    consumers raised to 232 by ``setmaxnreg``) 168 / 64 B, v13 255 / 260 B, v14 255 / 252 B. (Numba's PTX assembled on its own, which the reports
    used until then, compiles each out-of-line body separately: v12 200 B and a 720 B stack frame against 160.)"""
    import re
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    env["PYTHONPATH"] = os.pathsep.join([str(root), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run([sys.executable, str(root / "tools" / "ptxas_report.py"),
                           "1,5,5+fold,6,10,11,12,12+prod+noindec+preg=40,13,14"],
                          capture_output=True, text=True, cwd=root, env=env, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    # spill-store bytes allowed (about 2x what was measured)
    budget = {"1": 2048, "5": 768, "5+fold": 1024, "6": 384, "10": 320, "11": 384, "12": 384,
              "12+prod+noindec+preg=40": 256, "13": 512, "14": 512}
    rows = re.findall(r"^(\S+)\s+(\d+) registers\s+spill stores\s+(\d+) B", proc.stdout, re.M)
    assert {v for v, _, _ in rows} == set(budget), proc.stdout
    for variant, registers, spills in rows:
        assert int(registers) <= 255 and int(spills) <= budget[variant], f"v{variant}: {registers} registers, " \
            f"{spills} B of spill stores (budget {budget[variant]} B)"

