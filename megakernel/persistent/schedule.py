"""The megakernel's schedule as Python data: what each phase of a decode step reads, writes and streams, who
does it, and where the grid waits.

This is the kernel's plan in a form a reader (and a test) can inspect without a GPU, in the spirit of Hazy
Research's ``python_vm.py``: notebook 07 draws it, and the tests check that

* every read of a buffer is ordered after the phase that wrote it by a barrier (``check_dependencies``: a phase
  whose reads race with an earlier phase's writes, or whose writes race with an earlier phase's reads, is an
  error; remove a barrier from the list and it says which buffer and which phases);
* executing the phases in order in plain PyTorch (``execute``) gives the reference's logits and every state, so
  the list is complete and in the right order;
* the kernel passes exactly as many grid barriers as the schedule has (the kernel counts its own, ``CTL_BARRIERS``).

A phase's ``work`` is how it is spread over the grid: ``rows`` (matvec rows, ``units`` of them, split over every
block by the shared matvec skeleton), ``items`` (independent work items: DeltaNet column slabs, attention heads or
splits; block b takes items b, b + nblocks, ...), or ``all`` (every block the same small job).
"""

from __future__ import annotations

from dataclasses import dataclass

from reference.config import LINEAR
from reference.budget import decode_budget

from .pages import item_columns

# buffers: activations in the scratch arena, and the decode state
STATE = ("conv", "rec", "kv")


@dataclass(frozen=True)
class Phase:
    name: str                 # embed, in_proj, deltanet, out_proj, qkv, attn_prepare, attn_decode, attn_combine
    layer: int | None         #   (or attention: the three folded), o_proj, mlp_gate_up, mlp_down, lm_head, sample
    work: str                 # "rows" | "items" | "all"
    units: int                # rows or items
    reads: tuple[str, ...]
    writes: tuple[str, ...]   # "h+" = read-modify-write of the residual stream's rows (each row by one warp)
    weight_bytes: int
    state_bytes: int = 0      # DeltaNet state read + written, KV cache read
    barrier_after: bool = True

    @property
    def label(self) -> str:
        return self.name if self.layer is None else f"{self.name}[{self.layer}]"


def step_phases(config, context: int = 1, sample: bool = False, version: int = 1,
                blocks: int | None = None, fold_attention: bool = False, fused_down: bool = False,
                fused_out: bool = False, ll_inproj: bool = False, ll_residual: bool = False) -> list[Phase]:
    """The phases of one decode step at a context of ``context`` cached positions (the new token included).
    ``blocks``: the grid, for versions that cap the attention splits at one item per block (versions 3, 4).
    ``fold_attention``: the build option of versions 2+ (``phases.make_folded_attention``). ``fused_down``
    (version 7): each MLP is one phase: a block makes its rows of ``act`` and adds their share of the down
    projection into the residual accumulator ``h_acc`` (``split_down``), which the next phases that read h read
    with it, and the next residual phase folds into h (and clears). ``fused_out`` (with ``fused_down``; measured,
    not kept): each DeltaNet item adds its columns' share of out_proj into the accumulator ``h_out`` (after a hand-off per
    value head for the gated norm's sum of squares, within the phase), and the same phase folds the last MLP's
    ``h_acc`` into h (no phase reads h then): one phase and one barrier fewer per DeltaNet layer. ``ll_inproj``:
    in_proj also writes its rows as flag-in-data words (``proj_ll~``: a reader waits for each word's tag, so it
    needs no barrier after the write, ``handoff``), which the DeltaNet items read; no barrier between them.
    ``ll_residual`` (with ``fused_down``): the residual phases (out_proj, o_proj) also write h's rows as words
    (``h_ll~``), which the MLP's norm reads, with no barrier between; the MLP accumulator alternates between two
    buffers by layer parity (``h_acc0``, ``h_acc1``): layer i's residual phase folds and clears the last MLP's
    while the MLP after it adds into the other."""
    if ll_residual and not fused_down:
        raise ValueError("step_phases: ll_residual needs fused_down (the accumulators it alternates)")
    c = config
    D, F, V = c.hidden_size, c.intermediate_size, c.vocab_size
    Hv, Dk, Dv = c.linear_num_value_heads, c.linear_key_head_dim, c.linear_value_head_dim
    Hq, Hkv, Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
    from megakernel.kernels.attention import attention_splits

    from .decoder import VERSIONS

    pps = getattr(VERSIONS.get(version), "POSITIONS_PER_SPLIT", None)
    if pps is None:
        splits = attention_splits(max(1, context))
    else:  # the plan's cap: one item per block (phases.make_splits)
        cap = max(1, blocks // max(1, c.num_key_value_heads)) if blocks else 0
        splits = attention_splits(max(1, context), pps, cap=cap)
    rows_in = c.conv_dim + c.value_dim + 2 * Hv
    rows_qkv = 2 * Hq * Dh + 2 * Hkv * Dh
    # weight bytes as reference.budget counts them (2 bytes per parameter; the small fp32 parameters too)
    acc = ("h_acc",) if fused_down else ()
    acc += ("h_out",) if fused_out else ()
    mlp_acc = ("h_acc",)
    res = ()  # what a residual phase writes besides h and the accumulators
    phases = [Phase("embed", None, "all", 1, ("token",), ("h",) + (("h_acc0", "h_acc1") if ll_residual else acc),
                    D * 2)]
    for i, kind in enumerate(c.layer_types):
        if ll_residual:  # the last MLP's accumulator (read and cleared by this layer's residual phase), this one's
            acc, mlp_acc, res = (f"h_acc{(i - 1) % 2}",), (f"h_acc{i % 2}",), ("h_ll~",)
        if kind == LINEAR:
            small = c.conv_dim * c.linear_conv_kernel_dim + 2 * Hv  # conv taps, A_log, dt_bias
            state = 2 * Hv * Dk * Dv * 4 + 2 * c.conv_dim * (c.linear_conv_kernel_dim - 1) * 2
            phases.append(Phase("in_proj", i, "rows", rows_in, ("h",) + acc,
                                ("proj_lin",) + (("proj_ll~",) if ll_inproj else ()), (rows_in + 1) * D * 2,
                                barrier_after=not ll_inproj))
            if fused_out:  # o_lin and the sums of squares pass between the items of a head within the phase
                phases.append(Phase("deltanet", i, "items", Hv * Dv // item_columns(c),
                                    ("proj_lin", "conv", "rec", "h_acc"), ("conv", "rec", "h_out", "h+", "h_acc"),
                                    small * 2 + (D * c.value_dim + Dv) * 2, state_bytes=state))
            else:
                phases += [
                    Phase("deltanet", i, "items", Hv * Dv // item_columns(c),
                          ("proj_ll~" if ll_inproj else "proj_lin", "conv", "rec"), ("o_lin", "conv", "rec"), small * 2,
                          state_bytes=state),
                    Phase("out_proj", i, "rows", D, ("o_lin", "proj_lin") + acc, ("h+",) + acc + res,
                          (D * c.value_dim + Dv) * 2, barrier_after=not ll_residual),
                ]
        else:
            phases.append(Phase("qkv", i, "rows", rows_qkv, ("h",) + acc, ("proj_att",), (rows_qkv + 1) * D * 2))
            phases += _attention_phases(i, Hq, Hkv, Dh, splits, context, fold_attention)
            phases.append(Phase("o_proj", i, "rows", D, ("attn_out",) + acc, ("h+",) + acc + res, D * Hq * Dh * 2,
                                barrier_after=not ll_residual))
        if fused_down:  # act stays in the block that made it: no buffer between the blocks, no barrier
            h_in = ("h_ll~",) if ll_residual else ("h",) + (("h_out",) if fused_out else ())
            phases.append(Phase("mlp", i, "rows", F, h_in, mlp_acc, (2 * F + 1) * D * 2 + D * F * 2))
            acc = mlp_acc + (("h_out",) if fused_out else ())
        else:
            phases += [
                Phase("mlp_gate_up", i, "rows", F, ("h",), ("act",), (2 * F + 1) * D * 2),
                Phase("mlp_down", i, "rows", D, ("act",), ("h+",), D * F * 2),
            ]
    phases.append(Phase("lm_head", None, "rows", V, ("h",) + acc, ("logits", "token"), (V + 1) * D * 2))
    if sample:
        phases.append(Phase("sample", None, "all", V, ("logits",), ("token",), 0))
    return phases


def _attention_phases(i, Hq, Hkv, Dh, splits, context, fold: bool) -> list[Phase]:
    """Attention layer ``i`` between qkv and o_proj: prepare (the norm weights), decode (the KV cache), combine;
    or, folded, one phase of ``Hkv * splits`` decode items that make their own queries, write the new key and value
    (the last split) and combine (a query head each, on the blocks of the KV head's first splits, once all its
    items are in). Its partials pass between its own items through a counter, not a barrier: written here, read
    within the phase, like the cache's new position."""
    kv_bytes = 2 * Hkv * context * Dh * 2
    if fold:
        return [Phase("attention", i, "items", Hkv * splits, ("proj_att", "kv"), ("kv", "partials", "attn_out"),
                      2 * Dh * 2, state_bytes=kv_bytes)]
    return [Phase("attn_prepare", i, "items", Hq + Hkv, ("proj_att",), ("q", "gate", "kv"), 2 * Dh * 2),
            Phase("attn_decode", i, "items", Hkv * splits, ("q", "kv"), ("partials",), 0, state_bytes=kv_bytes),
            Phase("attn_combine", i, "items", Hq, ("partials", "gate"), ("attn_out",), 0)]


def barriers_per_token(config, sample: bool = False, version: int = 1, fold_attention: bool = False,
                       fused_down: bool = False, fused_out: bool = False, ll_inproj: bool = False,
                       ll_residual: bool = False) -> int:
    """Grid barriers one decode step costs (the kernel adds one per launch, after its last step); with
    ``fold_attention`` one per attention layer instead of three, with ``fused_down`` one per MLP instead of two,
    with ``fused_out`` or ``ll_inproj`` one per DeltaNet layer fewer, with ``ll_residual`` one per layer fewer."""
    return sum(p.barrier_after for p in step_phases(config, sample=sample, version=version,
                                                    fold_attention=fold_attention, fused_down=fused_down,
                                                    fused_out=fused_out, ll_inproj=ll_inproj,
                                                    ll_residual=ll_residual))


def barrier_bound(config, context: int, barrier_seconds: float, barriers: int | None = None,
                  version: int = 1, bandwidth: float | None = None) -> float:
    """The best fraction of the bandwidth floor a kernel with a grid barrier after each phase can reach: every
    phase streams at full bandwidth and each of its ``barriers`` (default: this schedule's count) adds
    ``barrier_seconds`` to the critical path, so floor / (floor + barriers x barrier_seconds). The H100 measured
    ~2.8 us per barrier inside the persistent kernel (NOTES.md): with 134, ~58% at context 512."""
    from reference.budget import H100_COPY_BANDWIDTH, decode_budget

    if barrier_seconds < 0:
        raise ValueError(f"barrier_seconds must be >= 0, got {barrier_seconds}")
    n = barriers_per_token(config, version=version) if barriers is None else barriers
    floor = decode_budget(config, context).floor_seconds(bandwidth or H100_COPY_BANDWIDTH)
    return floor / (floor + n * barrier_seconds)


class ScheduleError(AssertionError):
    """A phase reads (or overwrites) a buffer without a barrier ordering it after the phase that wrote (read) it."""


def check_dependencies(phases: list[Phase], steps: int = 2) -> None:
    """Raise ``ScheduleError`` unless every cross-phase hand-off is ordered by a barrier, over ``steps`` steps
    (the last phase of a step hands the token to the next step's first). Within one phase, the work is disjoint
    by construction (each row, item and split has one owner; "h+" rows are read and written by their owner).
    A buffer named with a trailing "~" holds flag-in-data words (``handoff``): its readers wait for the words'
    tags, so a read needs no barrier after the write; a write still needs one after the buffer's last read (a
    slow reader would spin forever on words already overwritten with a later tag) and after its last write."""
    seq = [p for _ in range(steps) for p in phases]
    last_write: dict[str, int] = {}
    reads_since: dict[str, list[int]] = {}
    epoch = 0  # barriers passed so far
    epoch_of: list[int] = []
    for idx, p in enumerate(seq):
        epoch_of.append(epoch)
        reads = set(p.reads) | {w[:-1] for w in p.writes if w.endswith("+")}
        writes = {w.rstrip("+") for w in p.writes}
        for buf in reads:
            w = last_write.get(buf)
            if w is not None and w != idx and epoch_of[w] == epoch and not buf.endswith("~"):
                raise ScheduleError(f"{p.label} reads {buf!r} written by {seq[w].label} with no barrier between")
        for buf in writes:
            for r in reads_since.get(buf, []):
                if r != idx and epoch_of[r] == epoch:
                    raise ScheduleError(f"{p.label} overwrites {buf!r} that {seq[r].label} reads, with no barrier "
                                        "between")
            w = last_write.get(buf)
            if w is not None and w != idx and epoch_of[w] == epoch:
                raise ScheduleError(f"{p.label} and {seq[w].label} both write {buf!r} with no barrier between")
        for buf in reads:
            reads_since.setdefault(buf, []).append(idx)
        for buf in writes:
            last_write[buf] = idx
            reads_since[buf] = [r for r in reads_since.get(buf, []) if r == idx]
        if p.barrier_after:
            epoch += 1


def bytes_per_step(phases: list[Phase]) -> int:
    return sum(p.weight_bytes + p.state_bytes for p in phases)


def check_bytes(config, context: int = 1) -> None:
    """The schedule streams exactly the bytes of ``reference.budget`` (weights + DeltaNet and conv states + KV
    cache), plus the embedding row it looks up (which the budget leaves out: a lookup, not a stream)."""
    phases = step_phases(config, context + 1)  # the budget's context excludes the new token
    budget = decode_budget(config, context=context)
    total = bytes_per_step(phases)
    embed_row = config.hidden_size * 2
    if total != budget.total_bytes + embed_row:
        raise ScheduleError(f"schedule streams {total} B per step, the budget says {budget.total_bytes} B "
                            f"(+ {embed_row} B of embedding row)")


__all__ = ["Phase", "step_phases", "barriers_per_token", "check_dependencies", "check_bytes", "bytes_per_step",
           "ScheduleError"]
