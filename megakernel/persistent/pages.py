"""The weight stream of the persistent megakernel (version 2+): which rows of which matrix every block reads, in
which order, in shared-memory pages.

A decode step reads every weight matrix once. Version 2 gives each block a contiguous range of rows of every matrix
(block ``b`` of ``nb`` takes rows ``[b N / nb, (b+1) N / nb)``: one contiguous byte range, so one bulk copy), cuts
its ranges into pages of at most ``page_words`` 32-bit words (whole rows only), and streams the pages through a ring
of shared-memory slots in the order the step consumes them. The MLP's gate and up rows travel together: a page holds
``n`` gate rows then the same ``n`` up rows.

The list is the same every step (weights never depend on the token), so it is built once on the host as a table,
``table[block, page] = (src1, n1, src2, n2, row0, nrows, phase, K)`` (word offsets into the weight arena, row range,
the index of the rows-phase it belongs to, the row length), plus ``count[block]`` pages per step. The kernel's
producer (thread 0) walks the table ahead of the consumers, across phase and step boundaries, as far as the ring
allows; the consumers walk it in step with the phases.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reference.config import LINEAR

from ..layout import arena_layout

# rows-phase kinds (what the consumer does with a row's dot product)
K_NORM = 0      # y[row] = acc * rstd(h)           in_proj, qkv (x = rms_norm(h) staged)
K_GATED = 1     # h[row] += acc                    DeltaNet out_proj (x = gated_rms_norm(o, z) staged)
K_PLAIN = 2     # h[row] += acc                    o_proj, down (x = the vector as is)
K_SWIGLU = 3    # act[row] = silu(g * r) * (u * r) gate/up pairs
K_LMHEAD = 4    # logits[row] = acc * r, argmax    the LM head
K_DOWN_T = 5    # hacc += W^T[rows] act[rows]       MLP down, split over the intermediate dimension (fused_down)
K_OUT_T = 6     # hacc += W^T[cols] x[cols]         DeltaNet out_proj, by the DeltaNet items' columns (fused_out)
DESC = 8        # int32 fields per page


@dataclass(frozen=True)
class RowsPhase:
    name: str
    layer: int | None
    kind: int
    rows: int
    k: int
    w1: int                 # word offset of the matrix (gate for SwiGLU)
    w2: int = -1            # up matrix for SwiGLU


def rows_phases(config, fused_down: bool = False, fused_out: bool = False) -> list[RowsPhase]:
    """The matvec phases of one step, in the order the kernel runs them. ``fused_down``: each MLP's down
    projection is read as its transpose (``DeviceWeights(down_transposed=True)``), ``F`` rows of the hidden size
    split over the blocks like the gate/up rows, so a block's down rows are the rows of ``act`` it made.
    ``fused_out``: each DeltaNet out_proj is read as its transpose (``DeviceWeights(out_transposed=True)``), its
    ``value_dim`` rows by the DeltaNet items' columns (``page_table`` gives a block its items' rows)."""
    c = config
    lay = arena_layout(c)
    D, F, V = c.hidden_size, c.intermediate_size, c.vocab_size
    Hv = c.linear_num_value_heads
    Hq, Hkv, Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    lin = {layer: j for j, layer in enumerate(c.linear_layers)}
    full = {layer: j for j, layer in enumerate(c.full_layers)}
    out = []
    for i, kind in enumerate(c.layer_types):
        if kind == LINEAR:
            j = lin[i]
            out.append(RowsPhase("in_proj", i, K_NORM, c.conv_dim + c.value_dim + 2 * Hv, D,
                                 lay.lin_in + j * lay.lin_stride))
            if fused_out:
                out.append(RowsPhase("out_proj", i, K_OUT_T, c.value_dim, D, lay.lin_out + j * lay.lin_stride))
            else:
                out.append(RowsPhase("out_proj", i, K_GATED, D, c.value_dim, lay.lin_out + j * lay.lin_stride))
        else:
            j = full[i]
            out.append(RowsPhase("qkv", i, K_NORM, 2 * Hq * Dh + 2 * Hkv * Dh, D, lay.att_qkv + j * lay.att_stride))
            out.append(RowsPhase("o_proj", i, K_PLAIN, D, Hq * Dh, lay.att_o + j * lay.att_stride))
        m = i * lay.mlp_stride
        out.append(RowsPhase("mlp_gate_up", i, K_SWIGLU, F, D, lay.mlp_gate + m, lay.mlp_up + m))
        if fused_down:
            out.append(RowsPhase("mlp_down", i, K_DOWN_T, F, D, lay.mlp_down + m))
        else:
            out.append(RowsPhase("mlp_down", i, K_PLAIN, D, F, lay.mlp_down + m))
    out.append(RowsPhase("lm_head", None, K_LMHEAD, V, D, lay.lm_head))
    return out


def block_rows(rows: int, block: int, nblocks: int) -> tuple[int, int]:
    """Block ``block``'s contiguous share of ``rows`` rows: [first, end)."""
    return rows * block // nblocks, rows * (block + 1) // nblocks


def rows_per_page(phase: RowsPhase, page_words: int) -> int:
    per_row = phase.k // 2 * (2 if phase.kind == K_SWIGLU else 1)
    if per_row > page_words:
        raise ValueError(f"{phase.name}: a row of {phase.k} weights ({per_row} words with its pair) does not fit a "
                         f"page of {page_words} words")
    return page_words // per_row


def item_columns(config) -> int:
    """Value columns per DeltaNet work item (``deltanet.deltanet_launch_config``'s default, as the plan has it)."""
    cw = 16
    while config.linear_value_head_dim % cw:
        cw //= 2
    return cw


LM_POOL_SLACK = 2  # placeholders per block: this many times its even share of the LM head's pool


def lm_pool(config, page_words: int, percent: int) -> tuple[int, int, int]:
    """``(pool pages, static rows, rows per page)`` of the LM head with ``percent`` % of its pages in a pool that
    the blocks claim at run time (``lm_pool``): the pool is the last pages of the vocabulary, the rows before it
    are split over the blocks as usual."""
    rpp = page_words // (config.hidden_size // 2)
    pages = -(-config.vocab_size // rpp)
    pool = min(pages - 1, pages * percent // 100) if percent > 0 else 0
    return pool, config.vocab_size - pool * rpp if pool else config.vocab_size, rpp


def lm_placeholders(pool: int, nblocks: int) -> int:
    """Each block's placeholder pages for the LM head's pool (the kernel computes the same)."""
    return (LM_POOL_SLACK * pool + nblocks - 1) // nblocks if pool else 0


PAIRS_LM = 1   # ``page_table(pairs=)``: the LM head's pages may be copied two at a time
PAIRS_ALL = 2  # every phase's


def page_table(config, nblocks: int, page_words: int, fused_down: bool = False,
               chunk: int = 1, fused_out: bool = False, lm_pool_percent: int = 0,
               pairs: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(table int32 [nblocks, max pages, DESC], count int32 [nblocks]): every block's pages for one step.
    ``fused_down``: the MLP's gate/up and down rows split in whole chunks of ``chunk`` rows
    (``split_down.aligned_rows``: the same rows for both, so a block's down rows are the act rows it made).
    ``fused_out``: a block's out_proj rows are the columns of its DeltaNet items (items b, b + nblocks, ...),
    item by item. ``lm_pool_percent``: the LM head's last pages form a pool (``lm_pool``); each block gets the
    static rows' share and then ``lm_placeholders`` entries (n1 = -1) that its copy thread turns into pool pages
    by claiming them, one page ahead, from a counter the table carries in an extra row: ``table[nblocks, 0, 0]``
    (so the table has ``nblocks + 1`` rows). ``pairs`` (``PAIRS_LM``: the LM head's pages, ``PAIRS_ALL``: every
    phase's): a page whose next page continues its byte range (same phase, one row range each) carries
    ``n2 = -n1(next)`` if it fills its page: the copy thread may fetch both with one copy of up to twice a page
    (``pair_copies``); a kernel that copies pages one at a time ignores a negative ``n2``."""
    from .split_down import aligned_rows

    phases = rows_phases(config, fused_down, fused_out)
    cw = item_columns(config)
    pool, static_rows, _ = lm_pool(config, page_words, lm_pool_percent)
    per_block: list[list[tuple]] = [[] for _ in range(nblocks)]
    for p, ph in enumerate(phases):
        rpp = rows_per_page(ph, page_words)
        words = ph.k // 2
        mlp = fused_down and ph.kind in (K_SWIGLU, K_DOWN_T)
        for b in range(nblocks):
            if ph.kind == K_OUT_T:
                spans = [(i * cw, (i + 1) * cw) for i in range(b, ph.rows // cw, nblocks)]
            elif ph.kind == K_LMHEAD and pool:
                spans = [block_rows(static_rows, b, nblocks)]
            else:
                spans = [aligned_rows(ph.rows, b, nblocks, chunk) if mlp else block_rows(ph.rows, b, nblocks)]
            for first, end in spans:
                for r0 in range(first, end, rpp):
                    n = min(rpp, end - r0)
                    src2, n2 = (ph.w2 + r0 * words, n * words) if ph.kind == K_SWIGLU else (0, 0)
                    per_block[b].append((ph.w1 + r0 * words, n * words, src2, n2, r0, n, p, ph.k))
            if ph.kind == K_LMHEAD and pool:
                per_block[b] += [(0, -1, 0, 0, -1, 0, p, ph.k)] * lm_placeholders(pool, nblocks)
    if pairs:
        kinds = [ph.kind for ph in phases]
        for pages in per_block:
            for i in range(len(pages) - 1):
                a, n = pages[i], pages[i + 1]
                # the first fills its slot exactly, so the second lands at the start of the next slot
                if (a[6] == n[6] and a[3] == 0 and n[3] == 0 and a[1] == page_words and n[1] > 0
                        and a[0] + a[1] == n[0]
                        and (pairs == PAIRS_ALL or kinds[a[6]] == K_LMHEAD)):
                    pages[i] = a[:3] + (-n[1],) + a[4:]
    count = np.array([len(x) for x in per_block], dtype=np.int32)
    table = np.zeros((nblocks + (1 if pool else 0), max(1, int(count.max())), DESC), dtype=np.int64)
    for b, pages in enumerate(per_block):
        if pages:
            table[b, : len(pages)] = pages
    if table.max() >= 1 << 31:
        raise ValueError("weight arena too large for 32-bit word offsets in the page table")
    return table.astype(np.int32), count


__all__ = ["RowsPhase", "rows_phases", "block_rows", "rows_per_page", "page_table", "DESC", "K_NORM", "K_GATED",
           "K_PLAIN", "K_SWIGLU", "K_LMHEAD", "K_DOWN_T", "K_OUT_T", "item_columns", "lm_pool",
           "lm_placeholders", "LM_POOL_SLACK", "PAIRS_LM", "PAIRS_ALL"]
