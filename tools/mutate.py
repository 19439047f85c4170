"""Mutation testing: plant known bugs, one at a time, in a temporary copy of the project and check that the tests
meant to catch each one fail.

    python tools/mutate.py                  # every mutation, then the table (the one in NOTES.md: --markdown)
    python tools/mutate.py --check          # only check every planted text is found exactly once (seconds)
    python tools/mutate.py --list           # names, files and the tests that must catch each
    python tools/mutate.py -k attention     # the mutations whose name contains a word (repeatable)

Each mutation is a list of text replacements in one file and the tests (pytest node ids, cheapest first) that
must catch it. The replacements are applied to a fresh copy of the working tree (tracked and untracked,
non-ignored files, snapshotted once at the start) in a temporary directory, never to the working tree itself, and
the tests run there under the CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``, stopping at the first failure; the rest
of the environment passes through, e.g. a simulator schedule setting). A planted text that is missing or
found more than once stops everything before any test runs: the kernels move, and a mutation that silently
applies nowhere would report a bug "caught" that was never planted. Before the mutations, the union of the
selected tests runs once on an unmutated copy (``--no-baseline`` skips it), so a failure means the mutation.

``race`` mutations are races that only show up under varied simulator schedules or a race detector; the exit
status is 1 if any mutation is missed.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
KERNELS = "megakernel/kernels/"


@dataclass(frozen=True)
class Mutation:
    name: str
    file: str  # relative to the project root
    edits: tuple  # ((old text, new text), ...): each old text must occur exactly once in the file
    tests: tuple  # pytest node ids that must catch it, cheapest first
    race: bool = False  # needs varied schedules / the race detector to show


DELTANET_STEPS = "tests/test_kernels_deltanet.py::test_five_steps_match_reference"
DELTANET_REPEAT = "tests/test_kernels_deltanet.py::test_repeat_runs_are_bit_identical"
ATTN_DECODE = "tests/test_kernels_attention.py::test_decode_and_combine_match_reference"
ATTN_PREPARE = "tests/test_kernels_attention.py::test_prepare_matches_reference"
ATTN_DEVICE_POS = "tests/test_kernels_attention.py::test_device_held_position_gives_the_same_bits"
MATVEC_CONFIGS = "tests/test_kernels_matvec.py::test_matvec_v6_configs"
DECODER = "tests/test_layered.py::test_layered_matches_reference_logits_and_states"
DECODER_SPLIT = "tests/test_layered.py::test_split_launches_match_reference"
PERSISTENT_V1 = "tests/test_persistent.py::test_logits_every_state_and_layer_and_n_tokens_per_launch[v1]"
PERSISTENT_V2 = "tests/test_persistent.py::test_logits_every_state_and_layer_and_n_tokens_per_launch[v2]"
PERSISTENT_COUNTER = "tests/test_persistent.py::test_measured_build_variants_stay_correct[counter-barrier]"
PRODUCER = "tests/test_persistent.py::test_the_producer_warp_computes_version_12s_bits[3-hold-throttle]"
FLAG_IN_DATA = "tests/test_persistent.py::test_flag_in_data_inproj_computes_version_12s_bits[3]"
PERSISTENT_V4 = "tests/test_persistent.py::test_logits_every_state_and_layer_and_n_tokens_per_launch[v4]"
PERSISTENT_MONOTONIC = ("tests/test_persistent.py::test_measured_build_variants_stay_correct"
                        "[monotonic-barrier-warp-release]")
PERSISTENT_V5 = "tests/test_persistent.py::test_logits_every_state_and_layer_and_n_tokens_per_launch[v5]"
PERSISTENT_V5_RELAUNCH = "tests/test_persistent.py::test_back_to_back_launches_carry_the_monotonic_barrier_over"
PERSISTENT_PAGE_PAIRS = "tests/test_persistent.py::test_measured_build_variants_stay_correct[page-pairs]"
PERSISTENT_FOLD = "tests/test_persistent.py::test_folded_attention_computes_the_same_bits"
PERSISTENT_V6 = "tests/test_persistent.py::test_later_versions_compute_version_3s_bits[v6]"
PERSISTENT_V7 = "tests/test_persistent.py::test_logits_every_state_and_layer_and_n_tokens_per_launch[v7]"
PERSISTENT_V7_GRIDS = "tests/test_persistent.py::test_fused_down_bits_do_not_depend_on_the_grid_or_the_run[v7]"
PERSISTENT_V7_OUT = "tests/test_persistent.py::test_fused_out_hands_the_heads_sums_of_squares_over"
PERSISTENT_LM_POOL = "tests/test_persistent.py::test_the_lm_head_pool_computes_the_same_bits[3]"
PERSISTENT_PAIRS = "tests/test_persistent.py::test_pair_copies_compute_the_same_bits"
PERSISTENT_LEAN = "tests/test_persistent.py::test_lean_index_arithmetic_computes_the_same_bits"

MUTATIONS = [
    # ---- the two races the issue names
    Mutation("deltanet: q/k conv state written by a fixed block (the group's last), not the last reader",
             KERNELS + "deltanet.py",
             (("""                if prev == READERS - 1:
                    counters[hk] = 0  # every reader has arrived: reset for the next launch
""", """                if prev == READERS - 1:
                    counters[hk] = 0  # every reader has arrived: reset for the next launch
                if (h * NS + s) % READERS == READERS - 1:  # the writer flag now follows this condition
"""),),
             (DELTANET_STEPS, DELTANET_REPEAT, DECODER, DECODER_SPLIT), race=True),
    Mutation("block_sum without its trailing syncthreads (scratch reused by the next reduction)",
             "megakernel/device.py",
             (("""    v = scratch[lane] if lane < cuda.blockDim.x // WARP_SIZE else float32(0)
    v = warp_sum(v)
    cuda.syncthreads()
    return v
""", """    v = scratch[lane] if lane < cuda.blockDim.x // WARP_SIZE else float32(0)
    v = warp_sum(v)
    return v
"""),),
             ("tests/test_device_functions.py::test_block_reductions", "tests/test_kernels_rmsnorm.py",
              DELTANET_STEPS, ATTN_DECODE, DECODER, DECODER_SPLIT), race=True),
    # ---- other races and fences
    Mutation("combine_parts: one partial-sum buffer for every iteration (not double-buffered)",
             KERNELS + "matvec.py", (("    buf = (it % 2) * MAX_PARTS\n", "    buf = 0\n"),),
             (MATVEC_CONFIGS, DECODER_SPLIT), race=True),
    Mutation("deltanet: no threadfence before the reader counter", KERNELS + "deltanet.py",
             (("            cuda.threadfence()\n            prev = cuda.atomic.add(counters, hk, 1)\n",
               "            prev = cuda.atomic.add(counters, hk, 1)\n"),),
             (DELTANET_STEPS,), race=True),
    # Not listed: lm_head without the threadfence between its atomicMax and its ticket. Both are atomics, which the
    # simulator's race detector does not order against each other (NOTES.md, "what it cannot see"); only the GPU
    # stress tests (repeat-run bit identity) can catch it.
    # ---- the persistent megakernel's own hand-offs
    Mutation("persistent: no grid barrier between the DeltaNet items and out_proj", "megakernel/persistent/phases.py",
             (("""            deltanet_items(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws, flag, scr, 0)
            return barrier(grid, count, prof)
""", """            deltanet_items(j, Wf, conv_ws, conv, rec, scr, counters, b, nb, ws, flag, scr, 0)
            return count + 1
"""),),
             (PERSISTENT_V1, PERSISTENT_V2), race=True),
    Mutation("persistent v2: a ring slot refilled before every warp has read it", "megakernel/persistent/v2.py",
             (("            cuda.syncthreads()  # every warp is done with the slot\n", ""),),
             (PERSISTENT_V2,), race=True),
    Mutation("persistent v2: a page read from the slot after the one it was copied to", "megakernel/persistent/v2.py",
             (("                slot, par = ring_pos(cursor)\n            if WREL:",
               "                slot, par = ring_pos(cursor)\n                slot = (slot + 1) % R_\n            if WREL:"),),
             (PERSISTENT_V2,)),
    Mutation("persistent v4: the second row of a warp's pair written over the first", "megakernel/persistent/v2.py",
             (("            mine = emit(kind, row0 + r + NW, c, c,",
               "            mine = emit(kind, row0 + r, c, c,"),),
             (PERSISTENT_V4,)),
    Mutation("persistent page pairs: the second page's rows read from the first page's slot",
             "megakernel/persistent/v2.py",
             (("(baseb + r * kw) // 4, (baseb + (r + NW) * kw) // 4, xs, nv, lane)",
               "(basea + r * kw) // 4, (baseb + (r + NW) * kw) // 4, xs, nv, lane)"),),
             (PERSISTENT_PAGE_PAIRS,)),
    Mutation("persistent page pairs: both slots refilled before every warp is done with them",
             "megakernel/persistent/v2.py",
             (("""                cuda.syncthreads()  # every warp is done with both slots
""", ""),),
             (PERSISTENT_PAGE_PAIRS,), race=True),
    Mutation("persistent v4: a SwiGLU pair's up row read from the next gate row", "megakernel/persistent/v2.py",
             (("g, u = dot2(ring, w4(base + r * kw), w4(base + nrows * kw + r * kw),",
               "g, u = dot2(ring, w4(base + r * kw), w4(base + (r + 1) * kw),"),),
             (PERSISTENT_V4,)),
    Mutation("persistent v6: x in registers, a lane's pieces of x swapped in the second row of a pass",
             "megakernel/kernels/fused_matvec.py",
             (("acc_b = dot16_x(acc_b, wb, xr[8 * e], xr[8 * e + 1], xr[8 * e + 2],",
               "acc_b = dot16_x(acc_b, wb, xr[8 * e], xr[8 * e + 2], xr[8 * e + 1],"),),
             (PERSISTENT_V6,)),
    Mutation("persistent v6: split sums, the second row of a pass finished with the first row's sum",
             "megakernel/persistent/v2.py",
             (("        row = row_b if lane >= 16 else row_a\n", "        row = row_a if lane >= 16 else row_b\n"),),
             (PERSISTENT_V6,)),
    Mutation("persistent warp release: the first warp out of a slot refills it, not the last",
             "megakernel/persistent/v2.py",
             (("if cuda.atomic.add(bars, R_ + slot, 1) % NW == NW - 1:",
               "if cuda.atomic.add(bars, R_ + slot, 1) % NW == 0:"),),
             (PERSISTENT_MONOTONIC,), race=True),
    Mutation("persistent warp release: a warp counts itself out of a slot without a fence (releases nothing)",
             "megakernel/persistent/v2.py",
             (("""            cuda.threadfence_block()
            if cuda.atomic.add(bars, R_ + slot, 1)""", """            if cuda.atomic.add(bars, R_ + slot, 1)"""),),
             (PERSISTENT_MONOTONIC,), race=True),
    Mutation("persistent v5: the monotonic barrier lets a block leave one arrival early",
             "megakernel/persistent/phases.py",
             (("target = (base + int64(cuda.gridDim.x) * (count + 1)) & _LOW32",
               "target = (base + int64(cuda.gridDim.x) * (count + 1) - 1) & _LOW32"),),
             (PERSISTENT_V5,), race=True),
    Mutation("persistent v5: a launch hands the next one a base one barrier short", "megakernel/persistent/phases.py",
             (("                v = (base + int64(cuda.gridDim.x) * count) & _LOW32",
               "                v = (base + int64(cuda.gridDim.x) * (count - 1)) & _LOW32"),),
             (PERSISTENT_V5_RELAUNCH,), race=True),
    Mutation("persistent folded attention: a combining block waits for one decode item fewer than the head has",
             "megakernel/persistent/phases.py",
             (("                    wait_head(counters, kvh, ns)",
               "                    wait_head(counters, kvh, ns - 1)"),),
             (PERSISTENT_FOLD,), race=True),
    Mutation("persistent folded attention: a decode item counts itself in before its partials are written",
             "megakernel/persistent/phases.py",
             (("""            dec_body(kvh, split, ns, length, qs, kc[j], vc[j], pml, po, ws)
            count_in(counters, kvh)""", """            count_in(counters, kvh)
            dec_body(kvh, split, ns, length, qs, kc[j], vc[j], pml, po, ws)"""),),
             (PERSISTENT_FOLD,), race=True),
    Mutation("persistent folded attention: the new key and value written by the first split, not the last",
             "megakernel/persistent/phases.py",
             (("            if split == ns - 1:  # the split that scores the new position writes it first",
               "            if split == 0:  # the split that scores the new position writes it first"),),
             (PERSISTENT_FOLD,)),
    Mutation("persistent v7: the residual phase folds the MLP's accumulator into h but does not clear it",
             "megakernel/persistent/v2.py",
             (("""                h[row] = hn
                clear_acc(hacc, row)
""", """                h[row] = hn
"""),),
             (PERSISTENT_V7,)),
    Mutation("persistent v7: the step's embedding leaves the accumulator as the last step left it",
             "megakernel/persistent/v2.py",
             (("""                    clear_acc(hacc, d)
                    if LLR:""", """                    pass
                    if LLR:"""),),
             (PERSISTENT_V7,)),
    Mutation("persistent v7: a down page's slot refilled before every thread has read it",
             "megakernel/persistent/v2.py",
             (("""        if SK_BAR:
            cuda.syncthreads()  # every thread is done with the slot
        if SK_FILL""", """        if SK_FILL"""),),
             (PERSISTENT_V7, PERSISTENT_V7_GRIDS), race=True),
    Mutation("persistent v7: a chunk's fp32 sum closes at a page's end instead of the block's (grid-dependent bits)",
             "megakernel/persistent/split_down.py",
             (("            close = chunk == 1 or (row + 1) % chunk == 0 or row + 1 == end",
               "            close = chunk == 1 or (row + 1) % chunk == 0 or r + 1 == nrows"),),
             (PERSISTENT_V7_GRIDS,)),
    Mutation("persistent v7: the copy engine reads the stage before every thread has written its sums",
             "megakernel/persistent/split_down.py",
             (("""        tma.fence_proxy_async()  # the threads' shared-memory writes before the copy engine reads them
        cuda.syncthreads()
        if tid == 0:""", """        tma.fence_proxy_async()  # the threads' shared-memory writes before the copy engine reads them
        if tid == 0:"""),),
             (PERSISTENT_V7, PERSISTENT_V7_GRIDS), race=True),
    Mutation("persistent fused_out: a head's sum of squares leaves out its last item's share",
             "megakernel/persistent/v2.py",
             (("""            for k in range(NS_ITEM):
                s += ssq[hd * NS_ITEM + k]""", """            for k in range(NS_ITEM - 1):
                s += ssq[hd * NS_ITEM + k]"""),),
             (PERSISTENT_V7_OUT,)),
    Mutation("persistent lm_pool: the pool's claim counter not reset at a step's start", "megakernel/persistent/v2.py",
             (("                table_g[nb, 0, 0] = 0\n", "                pass\n"),),
             (PERSISTENT_LM_POOL,)),
    Mutation("persistent v8: a page pair copied before its second slot's readers are done",
             "megakernel/persistent/v2.py",
             (("""                            if g + 1 >= limit:
                                break""", """                            if g + 1 > limit:
                                break"""),),
             (PERSISTENT_PAIRS,), race=True),
    Mutation("persistent v9: the carried mbarrier parity not flipped when a page loop wraps the ring",
             "megakernel/persistent/v2.py",
             (("            return 0, par ^ 1\n", "            return 0, par\n"),),
             (PERSISTENT_LEAN,), race=True),
    Mutation("persistent v9: every block copies block 0's descriptors into shared memory",
             "megakernel/persistent/v2.py",
             (("descs[0, i >> 2, i & 3] = table_g[b, i >> 2, i & 3]", "descs[0, i >> 2, i & 3] = table_g[0, i >> 2, i & 3]"),),
             (PERSISTENT_LEAN,)),
    Mutation("persistent count_smem: the barrier count in shared memory never advances (every later barrier's "
             "target is already reached)", "megakernel/persistent/phases.py",
             (("grid[2][0] = count + 1  # read by the block", "grid[2][0] = count  # read by the block"),),
             ("tests/test_persistent.py::test_call_and_barrier_options_compute_the_same_bits[10-count_smem]",),
             race=True),
    Mutation("persistent v11: a weight row's chunk rotation follows its place in the page, not its index in the "
             "matrix (its bits then depend on the grid)", "megakernel/persistent/mma.py",
             (("            cc = wrap(((s + i) & 7) + (q & 1), nch)", "            cc = wrap(i + (q & 1), nch)"),
              ("        first = g == ((s + n0) & 7)\n        mine = first or g == ((s + n0 + 1) & 7)",
               "        first = g == n0\n        mine = first or g == n0 + 1")),
             ("tests/test_mma.py::test_a_rows_bits_do_not_depend_on_its_place_in_the_page",)),
    Mutation("persistent v11: the warps' partials of a page and of the next share one buffer (a fast warp overwrites "
             "them before the slow ones finished the rows)", "megakernel/persistent/v2.py",
             (("            buf = (cursor & 1) * (PART_N // 2)  # (two pages' partials: a warp may start the next page's)\n"
               "            if COMPUTE:\n                mma_partials(",
               "            buf = 0\n            if COMPUTE:\n                mma_partials("),),
             ("tests/test_persistent.py::test_logits_every_state_and_layer_and_n_tokens_per_launch[v11]",), race=True),
    Mutation("persistent v12: the DeltaNet q/k conv state never shifted (the deferred shift's stores dropped)",
             "megakernel/persistent/v2.py",
             (("                                shift_store(conv[j], scr[PL0:PL0 + P_LIN], b, nb, shifted)\n",
               "                                pass\n"),),
             ("tests/test_persistent.py::test_version_12_computes_version_10s_bits",)),
    Mutation("persistent v12: the DeltaNet items shift the q/k conv state themselves, unsynchronised, while other "
             "items of the key head still read it", KERNELS + "deltanet.py",
             (("        if not DEFER and not LATE and flag[0] != 0:\n",
               "        if (not LATE and flag[0] != 0) or (DEFER and s == 0 and h % G == 0):\n"),),
             ("tests/test_persistent.py::test_version_12_computes_version_10s_bits",), race=True),
    Mutation("persistent v12: the deferred shift leaves out the q/k channels beyond the grid's threads",
             KERNELS + "deltanet.py",
             (("            while c < QKC:\n                shift_channel(conv_state, proj, c)\n",
               "            while c < 0:\n                shift_channel(conv_state, proj, c)\n"),),
             ("tests/test_persistent.py::test_version_12_shifts_more_q_k_channels_than_the_grid_has_threads",)),
    Mutation("persistent v13: a DeltaNet item takes an in_proj word's value without waiting for its tag",
             "megakernel/persistent/handoff.py",
             (("    while ((word >> 32) & _LOW32) != tag:\n        word = tma.ld_relaxed_u64(words, i)\n",
               "    while False:\n        word = tma.ld_relaxed_u64(words, i)\n"),),
             (FLAG_IN_DATA,), race=True),
    Mutation("persistent v13: the words' tag does not change within a launch (an item may take the last step's "
             "values)", "megakernel/persistent/handoff.py",
             (("    return (int64(base) + int64(count) + 1) & _LOW32\n",
               "    return int64(base) & _LOW32\n"),),
             (FLAG_IN_DATA,), race=True),
    Mutation("persistent v13: the next launch's tags start where this one's did (a word of the last launch may "
             "carry the tag an item waits for)", "megakernel/persistent/handoff.py",
             (("    v = (int64(base) + int64(count)) & _LOW32\n", "    v = int64(base) & _LOW32\n"),),
             (FLAG_IN_DATA,), race=True),
    Mutation("persistent v13: the schedule model lets any phase read a buffer with no barrier after its write (not "
             "only the flag-in-data words)", "megakernel/persistent/schedule.py",
             (("            if w is not None and w != idx and epoch_of[w] == epoch and not buf.endswith(\"~\"):\n",
               "            if w is not None and w != idx and epoch_of[w] == epoch and not buf:\n"),),
             ("tests/test_persistent.py::test_schedule_dependencies_bytes_and_barriers",)),
    Mutation("stage_gated: a warp's second head of a pass scaled by its first head's rstd", KERNELS + "fused_matvec.py",
             (("            gated_head_put(xs, ua, ub, uc, ue, r2, base2, lane, dim2, nv)\n",
               "            gated_head_put(xs, ua, ub, uc, ue, r, base2, lane, dim2, nv)\n"),),
             ("tests/test_kernels_matvec.py::test_gated_norm_matvec_residual[17-24-9-None-True-7]", DECODER)),
    Mutation("combine_cols: a column's splits summed in reverse order (other bits)", KERNELS + "attention.py",
             (("            for i in range(n_splits):  # split order, as combine_item sums\n",
               "            for i in range(n_splits - 1, -1, -1):  # split order, as combine_item sums\n"),),
             ("tests/test_persistent.py::test_column_combine_computes_version_13s_bits[3-blocks-8-columns]",)),
    Mutation("combine_cols: each row group of threads leaves out its first split's partials",
             KERNELS + "attention.py",
             (("            if i < n_splits:\n                buf[i * cols + j] = vals[k]\n",
               "            if i < n_splits and k > 0:\n                buf[i * cols + j] = vals[k]\n"),),
             ("tests/test_persistent.py::test_column_combine_computes_version_13s_bits[3-blocks-8-columns]",)),
    Mutation("persistent ll_residual: the embedding phase clears only the even layers' accumulator (the last "
             "step's final MLP sums are folded again by layer 0)", "megakernel/persistent/v2.py",
             (("                    if LLR:  # (and the other region, which layer 0's residual phase folds)\n"
               "                        clear_acc(hacc, R1 + d)\n", ""),),
             ("tests/test_persistent.py::test_flag_in_data_residual_computes_version_13s_bits[1]",)),
    Mutation("persistent ll_residual: the MLP's norm reads h's floats, not its flag-in-data words",
             "megakernel/persistent/v2.py",
             (("                    ss = HO.ll_stage_norm(acc_in, D_, rtag, post_norm, xs, D_ // 8, scratch, LL_BACKOFF,\n"
               "                                              LL_TOGETHER_NORM)\n",
               "                    ss = stage_norm(h, post_norm, xs, D_ // 8, scratch)\n"),),
             ("tests/test_persistent.py::test_flag_in_data_residual_computes_version_13s_bits[3-backoff-together]",)),
    Mutation("handoff ll_wait4: the wait ends once the first two words carry the tag (the other two may be "
             "taken stale)", "megakernel/persistent/handoff.py",
             (("    while not (ll_ready(w0, tag) and ll_ready(w1, tag) and ll_ready(w2, tag) and ll_ready(w3, tag)):\n",
               "    while not (ll_ready(w0, tag) and ll_ready(w1, tag)):\n"),),
             ("tests/test_persistent.py::test_flag_in_data_inproj_computes_version_12s_bits[3-together]",
              "tests/test_persistent.py::test_flag_in_data_residual_computes_version_13s_bits[3-backoff-together]")),
    Mutation("persistent packed_descs: the carried descriptor index not wrapped at the end of a step",
             "megakernel/persistent/v2.py",
             (("            bars[DIDX] = d + 1 if d + 1 < pb else 0\n", "            bars[DIDX] = d + 1\n"),),
             ("tests/test_persistent.py::test_call_and_barrier_options_compute_the_same_bits[12-packed_descs]",)),
    Mutation("persistent producer: the producer refills a slot without waiting for its empty mbarrier (the "
             "consumer warps may still read it)", "megakernel/persistent/v2.py",
             (("            if g >= R_ and tma.mbar_wait_or_stop(bars, EMPTY0 + slot, epar, STOP, BACKOFF) == 0:\n",
               "            if g < 0 and tma.mbar_wait_or_stop(bars, EMPTY0 + slot, epar, STOP, BACKOFF) == 0:\n"),),
             (PRODUCER,), race=True),
    Mutation("persistent producer: a consumer warp leaves its slot before all its lanes are done with it (no "
             "syncwarp before lane 0's arrival)", "megakernel/persistent/v2.py",
             (("        cuda.syncwarp()\n        if lane == 0:\n            tma.mbar_arrive(bars, EMPTY0 + slot)\n",
               "        if lane == 0:\n            tma.mbar_arrive(bars, EMPTY0 + slot)\n"),),
             (PRODUCER,), race=True),
    Mutation("persistent producer: the empty mbarrier expects one consumer warp, not all of them",
             "megakernel/persistent/v2.py",
             (("                    tma.mbar_init(bars, EMPTY0 + s, NW)\n",
               "                    tma.mbar_init(bars, EMPTY0 + s, 1)\n"),),
             (PRODUCER,), race=True),
    Mutation("warp roles: the consumers' block barrier still counts the producer warp (barrier0 left as it is)",
             "megakernel/persistent/warp_roles.py",
             (("    out = _BAR0_RE.sub(f'call void asm sideeffect \"bar.sync {NAMED_BARRIER}, {threads};\", "
               "\"~{{memory}}\"() '\n",
               "    out = ir if True else _BAR0_RE.sub(f'call void asm sideeffect \"bar.sync {NAMED_BARRIER}, "
               "{threads};\", \"~{{memory}}\"() '\n"),),
             ("tests/test_warp_roles.py::test_narrow_ir_rewrites_the_block_barriers_and_block_size",)),
    Mutation("warp roles: the compiler hook leaves a marked kernel's IR as it is (the consumers' barriers count "
             "the producer: a hang on the GPU)", "megakernel/persistent/warp_roles.py",
             (("        if threads is None or all(ir.startswith(_DONE) for ir in irs):\n",
               "        if True or threads is None or all(ir.startswith(_DONE) for ir in irs):\n"),),
             ("tests/test_warp_roles.py::test_the_probe_builds_with_narrowed_barriers[lto]",
              "tests/test_warp_roles.py::test_the_probe_builds_with_narrowed_barriers[ptx]")),
    Mutation("attention combine: a thread's second head dimension sums its first dimension's batch of partials",
             "megakernel/kernels/attention.py",
             (("                if i0 > 0 or d > tid:\n", "                if i0 > 0:\n"),),
             (ATTN_DECODE + "[gqa2_dh320_r32-20-18-32]",)),
    Mutation("persistent counter barrier: no release fence before the arrival", "megakernel/persistent/phases.py",
             (("""        gen = cuda.atomic.add(ctl, GEN, 0)
        cuda.threadfence()
""", """        gen = cuda.atomic.add(ctl, GEN, 0)
"""),),
             (PERSISTENT_COUNTER,), race=True),
    Mutation("persistent counter barrier: the waiting blocks spin on the wrong generation (they never wait; "
             "no barrier at all)", "megakernel/persistent/phases.py",
             (("""            while cuda.atomic.add(ctl, GEN, 0) == gen:
""", """            while cuda.atomic.add(ctl, GEN, 0) == gen - 1:
"""),),
             (PERSISTENT_COUNTER,), race=True),
    # ---- DeltaNet
    Mutation("deltanet: state decay dropped", KERNELS + "deltanet.py",
             (("                    v = sreg[m] * decay\n", "                    v = sreg[m]\n"),), (DELTANET_STEPS,)),
    Mutation("deltanet: beta dropped from the delta", KERNELS + "deltanet.py",
             (("        delta = (vsh[cj] - pred) * beta\n", "        delta = vsh[cj] - pred\n"),), (DELTANET_STEPS,)),
    Mutation("deltanet: value head h reads key head h % Hk (repeat, not repeat_interleave)", KERNELS + "deltanet.py",
             (("        hk = h // G\n", "        hk = h % Hk\n"),), (DELTANET_STEPS, DECODER)),
    Mutation("deltanet: a v channel's new input written to the oldest conv slot", KERNELS + "deltanet.py",
             (("            conv_state[ch, KM1 - 1] = x_v\n", "            conv_state[ch, 0] = x_v\n"),),
             (DELTANET_STEPS,)),
    # ---- attention
    Mutation("attention: KV head j serves query heads j.. instead of j*G.. (GQA mapping)", KERNELS + "attention.py",
             (("        h0 = kvh * G\n", "        h0 = kvh\n"),), (ATTN_DECODE, DECODER_SPLIT)),
    Mutation("attention: split end one past its bound (overlapping splits)", KERNELS + "attention.py",
             (("        end = ((split + 1) * length) // n_splits\n",
               "        end = ((split + 1) * length) // n_splits + 1\n"),), (ATTN_DECODE, DECODER_SPLIT)),
    Mutation("attention: split end = start + length // n_splits (the remainder dropped; several splits only)",
             KERNELS + "attention.py",
             (("        end = ((split + 1) * length) // n_splits\n", "        end = start + length // n_splits\n"),),
             (ATTN_DECODE, DECODER_SPLIT)),
    Mutation("attention: device-held length excludes the new token", KERNELS + "attention.py",
             (("    return int32(p[0]) + int32(1)  # the new token", "    return int32(p[0])  # the new token"),),
             (ATTN_DEVICE_POS, DECODER)),
    Mutation("attention: RoPE pairs dim i with R-1-i instead of i +- R/2", KERNELS + "attention.py",
             (("            p = d + HALF if lo else d - HALF\n", "            p = R - 1 - d\n"),),
             (ATTN_PREPARE, DECODER)),
    # ---- matvec family
    Mutation("combine_parts drops the last warp's partial sum", KERNELS + "matvec.py",
             (("    for j in range(1, G):\n", "    for j in range(1, G - 1):\n"),), (MATVEC_CONFIGS, DECODER_SPLIT)),
    Mutation("combine_pair drops the up row's split partials", KERNELS + "fused_matvec.py",
             (("        b += parts[first + half + j]\n", ""),),
             ("tests/test_kernels_matvec.py::test_norm_swiglu_matvec",)),
    Mutation("residual matvec overwrites h instead of adding", KERNELS + "matvec.py",
             (("                        y[row] += acc\n", "                        y[row] = acc\n"),),
             ("tests/test_kernels_matvec.py::test_matvec_residual_adds_exactly_the_product", DECODER)),
    Mutation("fused RMSNorm: weight w instead of (1 + w)", KERNELS + "fused_matvec.py",
             (("    one = float32(1)\n    j = 4 * ((q & 1) * nv + (q >> 1))\n",
               "    one = float32(0)\n    j = 4 * ((q & 1) * nv + (q >> 1))\n"),),
             ("tests/test_kernels_matvec.py::test_norm_matvec", DECODER)),
    Mutation("stage_norm4: the squares' sum left to the compiler (LTO contracts it by context)",
             KERNELS + "fused_matvec.py",
             (("    return D.fma(h3, h3, D.fma(h2, h2, D.fma(h0, h0, h1 * h1)))  # the contraction the other contexts "
               "chose\n", "    return h0 * h0 + h1 * h1 + h2 * h2 + h3 * h3\n"),),
             ("tests/test_ptx_check.py::test_the_norm_staging_rounds_alike_in_every_context",)),
    Mutation("norm_matvec: eps dropped from the RMSNorm", KERNELS + "fused_matvec.py",
             (("""            cur = load_batch(W, row, n, nv, v0, stride)
            r = D.rsqrt(stage_norm(h, norm_w, xs, nv, scratch) / float32(k) + eps)
""", """            cur = load_batch(W, row, n, nv, v0, stride)
            r = D.rsqrt(stage_norm(h, norm_w, xs, nv, scratch) / float32(k))
"""),),
             ("tests/test_kernels_matvec.py::test_fused_norms_use_eps_on_tiny_inputs",)),
    Mutation("lm_head: eps dropped from the final RMSNorm", KERNELS + "lm_head.py",
             (("            r = D.rsqrt(stage_norm(h, norm_w, xs, nv, scratch) / float32(k) + eps)\n",
               "            r = D.rsqrt(stage_norm(h, norm_w, xs, nv, scratch) / float32(k))\n"),),
             ("tests/test_kernels_lm_head.py::test_tiny_hidden_state_uses_eps",)),
    # ---- LM head, bf16, decoder wiring
    Mutation("argmax ties go to the largest index", KERNELS + "lm_head.py",
             (("    return s * _TWO32 + (_LOW32 - int64(index))\n", "    return s * _TWO32 + int64(index)\n"),
              ("    return _LOW32 - (key & _LOW32)\n", "    return key & _LOW32\n"),
              ("    return 0xFFFFFFFF - (int(key) & 0xFFFFFFFF)\n", "    return int(key) & 0xFFFFFFFF\n")),
             ("tests/test_kernels_lm_head.py::test_ties_go_to_the_smallest_index",)),
    Mutation("f32 -> bf16 truncates instead of rounding to nearest even", "megakernel/device.py",
             (("    return uint32((u + uint32(0x7FFF) + ((u >> uint32(16)) & uint32(1))) >> uint32(16))\n",
               "    return uint32(u >> uint32(16))\n"),),
             ("tests/test_device_functions.py::test_f32_to_bf16_matches_torch_in_kernel", ATTN_PREPARE)),
    Mutation("advance leaves the device position where it was", KERNELS + "embedding.py",
             (("        position[0] = p + 1\n", "        position[0] = p\n"),), (DECODER,)),
    Mutation("decoder: the gated norm reads z one element late", "megakernel/layered.py",
             (("        z0 = c.conv_dim\n", "        z0 = c.conv_dim + 1\n"),), (DECODER,)),
    # ---- the reference against transformers: only bit-exact comparison sees this
    Mutation("reference: decode scales q by * Dk**-0.5 instead of / sqrt(Dk) (1-ulp differences)",
             "reference/ops/gated_delta_rule.py",
             (("    q = q / (Dk**0.5)  # decode divides", "    q = q * Dk**-0.5  # decode divides"),),
             ("tests/test_vs_transformers.py::test_fp32_prefill_and_decode_match_transformers",)),
]


def check_texts(mutations, root: Path = ROOT) -> list[str]:
    """Problems: every edit's old text must occur exactly once in its file (and differ from the new text)."""
    problems = []
    for m in mutations:
        path = root / m.file
        if not path.is_file():
            problems.append(f"{m.name}: {m.file} does not exist")
            continue
        text = path.read_text()
        for old, new in m.edits:
            n = text.count(old)
            if n != 1 or old == new:
                first = old.strip().splitlines()[0] if old.strip() else repr(old)
                problems.append(f"{m.name}: {m.file}: text found {n} times (must be once): {first!r}")
    return problems


def project_files(root: Path = ROOT) -> list[str]:
    """Tracked and untracked non-ignored files of the working tree (what a clean checkout plus local edits has)."""
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=root,
                         check=True, capture_output=True).stdout.decode()
    return sorted({f for f in out.split("\0") if f and (root / f).is_file()})


def copy_project(dest: Path, files: list[str], root: Path = ROOT) -> None:
    for f in files:
        target = dest / f
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / f, target)


def apply(m: Mutation, tree: Path) -> None:
    path = tree / m.file
    text = path.read_text()
    for old, new in m.edits:
        if text.count(old) != 1:
            raise SystemExit(f"{m.name}: {m.file}: planted text not found exactly once in the copy")
        text = text.replace(old, new)
    path.write_text(text)


FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+)", re.M)


def run_tests(tree: Path, tests, timeout: float):
    """(status, detail, seconds): 'passed', 'failed' (detail: the first failing test), 'error' (pytest could not
    run the selection: detail = the output's tail) or 'timeout'."""
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, "-m", "pytest", "-x", "-q", "-rfE", "-p", "no:cacheprovider", *tests]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", f"no result after {timeout:.0f} s", time.monotonic() - t0
    dt = time.monotonic() - t0
    out = proc.stdout + proc.stderr
    if proc.returncode == 0:
        return "passed", "", dt
    failed = FAILED.findall(out)
    if proc.returncode == 1 and failed:
        return "failed", failed[0], dt
    return "error", f"pytest exit {proc.returncode}: " + " | ".join(out.strip().splitlines()[-5:]), dt


def check_imports_copy(tree: Path) -> None:
    """The copy's packages must be the ones imported there (not an installed checkout elsewhere)."""
    code = "import megakernel, reference; print(megakernel.__file__); print(reference.__file__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=tree, capture_output=True, text=True,
                         env=dict(os.environ, NUMBA_ENABLE_CUDASIM="1", PYTHONDONTWRITEBYTECODE="1"))
    paths = out.stdout.split()
    if out.returncode or len(paths) != 2 or not all(Path(p).resolve().is_relative_to(tree.resolve()) for p in paths):
        raise SystemExit(f"the copy in {tree} imports the project from elsewhere ({out.stdout.strip()} "
                         f"{out.stderr.strip()[-300:]}): run this with the project's interpreter, from any directory")


def table(rows, markdown: bool) -> str:
    head = ("mutation", "kind", "file", "result", "s")
    body = [(m.name, "race" if m.race else "bug", m.file.replace(KERNELS, "kernels/"), result, f"{dt:.0f}")
            for m, result, dt in rows]
    if markdown:
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        lines += ["| " + " | ".join(r) + " |" for r in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in body + [head]) for i in range(len(head))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in [head] + body)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python tools/mutate.py", description=__doc__.split("\n\n")[0])
    p.add_argument("-k", action="append", default=[], help="only mutations whose name contains this (repeatable)")
    p.add_argument("--check", action="store_true", help="only check that every planted text is found exactly once")
    p.add_argument("--list", action="store_true", help="list the mutations and the tests that must catch each")
    p.add_argument("--no-baseline", action="store_true", help="skip the run of the selected tests unmutated")
    p.add_argument("--markdown", action="store_true", help="print the table as markdown (NOTES.md)")
    p.add_argument("--timeout", type=float, default=1800.0, help="seconds per mutation (default 1800)")
    args = p.parse_args(argv)

    chosen = [m for m in MUTATIONS if not args.k or any(k.lower() in m.name.lower() for k in args.k)]
    if not chosen:
        raise SystemExit(f"no mutation name contains any of {args.k}")
    if args.list:
        for m in chosen:
            print(f"{m.name}{'  [race]' if m.race else ''}\n    {m.file}\n    " + "\n    ".join(m.tests))
        return 0
    problems = check_texts(chosen)
    if problems:
        raise SystemExit("planted texts that do not match the sources exactly once (update MUTATIONS):\n  "
                         + "\n  ".join(problems))
    print(f"{len(chosen)} mutations: every planted text found exactly once", flush=True)
    if args.check:
        return 0

    files = project_files()
    with tempfile.TemporaryDirectory(prefix="mutate-") as tmp:
        base = Path(tmp) / "baseline"
        copy_project(base, files)
        check_imports_copy(base)
        if not args.no_baseline:
            selection = list(dict.fromkeys(t for m in chosen for t in m.tests))
            status, detail, dt = run_tests(base, selection, args.timeout * 2)
            print(f"baseline ({len(selection)} selections, unmutated): {status} {detail} in {dt:.0f} s", flush=True)
            if status != "passed":
                raise SystemExit("the selected tests do not pass unmutated: fix that first")
        rows = []
        for i, m in enumerate(chosen):
            tree = Path(tmp) / f"m{i}"
            shutil.copytree(base, tree)  # from the snapshot: edits to the working tree meanwhile do not leak in
            apply(m, tree)
            status, detail, dt = run_tests(tree, m.tests, args.timeout)
            result = {"failed": f"caught by {detail}", "passed": "MISSED", "timeout": "TIMEOUT (" + detail + ")",
                      "error": "ERROR " + detail}[status]
            rows.append((m, result, dt))
            print(f"[{i + 1}/{len(chosen)}] {m.name}: {result} ({dt:.0f} s)", flush=True)
            shutil.rmtree(tree, ignore_errors=True)
    print()
    print(table(rows, args.markdown))
    missed = [m.name for m, result, _ in rows if not result.startswith("caught")]
    print(f"\n{len(rows) - len(missed)} of {len(rows)} caught" + (f"; not caught: {len(missed)}" if missed else ""))
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
