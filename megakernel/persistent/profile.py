"""Where a persistent kernel's time goes: every block's arrival at and departure from every grid barrier, read from
the GPU's global timer by a profiling build of the kernel (``PersistentDecoder(..., profile=True)``).

For barrier ``k`` of a launch and block ``b``: the phase before it took ``arrive[b, k] - leave[b, k-1]`` on that
block (its work, waiting for its pages included), the barrier ``leave[b, k] - arrive[b, k]`` (waiting for the
slowest block, plus the barrier itself). Per phase, the critical path is the slowest block's work; what the others
spend waiting is idle time. Within a phase's work, ``page_wait[b, k]`` is the time block ``b``'s copy thread spent
waiting for weight pages to land (versions 2 and later; the rest of the work is computing, or waiting on memory
the phase reads): a phase whose critical block waits for most of its work is paced by the weight stream, one that
hardly waits by its own instructions. ``phase_table`` sums that per phase kind (in_proj, deltanet, ..., lm_head) over a step;
``plot_timeline`` draws blocks x time coloured by phase.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .schedule import step_phases


@dataclass
class Timeline:
    labels: list[str]       # the phase that ends at each barrier ("end" for the launch's last barrier)
    kinds: list[str]        # the phase's kind (its name without the layer)
    arrive: np.ndarray      # int64 [blocks, barriers], ns
    leave: np.ndarray       # int64 [blocks, barriers], ns
    steps: int
    page_wait: np.ndarray | None = None  # int64 [blocks, barriers], ns waiting for pages in the phase before

    @property
    def start(self) -> int:
        return int(self.arrive[:, 0].min())

    def work(self) -> np.ndarray:
        """[blocks, barriers]: each block's time in the phase before each barrier (ns)."""
        prev = np.concatenate([np.full((self.arrive.shape[0], 1), self.start), self.leave[:, :-1]], axis=1)
        return self.arrive - prev

    def wait(self) -> np.ndarray:
        return self.leave - self.arrive

    def barrier_costs(self) -> tuple[float, float]:
        """Per step, in microseconds, summed over the barriers: the latency (the last block's arrival to the first
        block's departure) and the departure spread (the first block's departure to the last's), the two parts of
        a step that no phase's critical path contains."""
        latency = (self.leave.min(axis=0) - self.arrive.max(axis=0)).sum() / 1e3 / self.steps
        spread = (self.leave.max(axis=0) - self.leave.min(axis=0)).sum() / 1e3 / self.steps
        return float(latency), float(spread)

    @property
    def total_ns(self) -> int:
        return int(self.leave[:, -1].max() - self.start)


def barrier_labels(phases) -> list[str]:
    """One label per grid barrier of a step: the phase before it, prefixed by those with no barrier of their own
    since the last one (``ll_inproj``: ``"in_proj+deltanet[3]"``)."""
    out, pending = [], []
    for p in phases:
        if not p.barrier_after:
            pending.append(p.name)
            continue
        out.append("+".join(pending + [p.name]) + ("" if p.layer is None else f"[{p.layer}]"))
        pending = []
    return out


def read_timeline(decoder, steps: int, context: int, sample: bool = False) -> Timeline:
    """The profile buffer of ``decoder``'s last launch (``steps`` steps at ``context``), labelled by the schedule."""
    phases = step_phases(decoder.config, context=context, sample=sample, version=decoder.version,
                         blocks=decoder.blocks, fold_attention=decoder.folds_attention,
                         fused_down=decoder.fuses_down, fused_out=decoder.fuses_out,
                         ll_inproj=decoder.hands_off_inproj, ll_residual=decoder.hands_off_residual)
    labels = [lab for _ in range(steps) for lab in barrier_labels(phases)] + ["end"]
    kinds = [lab.split("[")[0] for lab in labels]
    prof = decoder.prof.cpu().numpy()
    n = len(labels)
    e = prof.shape[1] // 3  # [arrive, leave] x e | page waits x e
    if n > e:
        raise ValueError(f"the profile buffer holds {e} barriers, the launch had {n}: "
                         "set_profile_steps(steps) before the launch")
    return Timeline(labels, kinds, prof[:, 0 : 2 * n : 2].copy(), prof[:, 1 : 2 * n : 2].copy(), steps,
                    prof[:, 2 * e : 2 * e + n].copy())


def phase_table(t: Timeline) -> list[dict]:
    """Per phase kind, summed over the launch and divided by the steps: the critical path (slowest block's work),
    the mean block's work, the mean wait at the barrier after it; with page waits recorded, the critical block's
    and the mean block's time waiting for weight pages within the work. Times in microseconds per step."""
    work, wait = t.work(), t.wait()
    pw = t.page_wait
    rows: dict[str, dict] = {}
    for k, kind in enumerate(t.kinds):
        r = rows.setdefault(kind, {"phase": kind, "count": 0, "critical_us": 0.0, "mean_work_us": 0.0,
                                   "mean_wait_us": 0.0, "critical_page_wait_us": 0.0, "mean_page_wait_us": 0.0})
        r["count"] += 1
        slowest = int(work[:, k].argmax())
        r["critical_us"] += work[slowest, k] / 1e3
        r["mean_work_us"] += work[:, k].mean() / 1e3
        r["mean_wait_us"] += wait[:, k].mean() / 1e3
        if pw is not None:
            r["critical_page_wait_us"] += pw[slowest, k] / 1e3
            r["mean_page_wait_us"] += pw[:, k].mean() / 1e3
    out = []
    for r in rows.values():
        for key in ("critical_us", "mean_work_us", "mean_wait_us", "critical_page_wait_us", "mean_page_wait_us"):
            r[key] /= t.steps
        r["count"] //= max(1, t.steps) if r["phase"] != "end" else 1
        out.append(r)
    return out


def format_table(t: Timeline) -> str:
    rows = phase_table(t)
    pages = t.page_wait is not None
    head = f"{'phase':<14} {'per step':>8} {'critical us':>12} {'mean work us':>13} {'mean wait us':>13}"
    lines = [head + (f" {'crit. page wait':>16} {'mean page wait':>15}" if pages else "")]
    for r in rows:
        line = (f"{r['phase']:<14} {r['count']:>8} {r['critical_us']:>12.1f} {r['mean_work_us']:>13.1f} "
                f"{r['mean_wait_us']:>13.1f}")
        if pages:
            line += f" {r['critical_page_wait_us']:>16.1f} {r['mean_page_wait_us']:>15.1f}"
        lines.append(line)
    total = t.total_ns / 1e3 / t.steps
    crit = sum(r["critical_us"] for r in rows)
    latency, spread = t.barrier_costs()
    lines.append(f"barrier latency {latency:.1f} us, departure spread {spread:.1f} us per step")
    lines.append(f"per step: {total:.1f} us; sum of critical paths {crit:.1f} us; barriers "
                 f"{len(t.labels) / t.steps:.0f}")
    return "\n".join(lines)


def plot_timeline(t: Timeline, ax=None, max_blocks: int | None = None, title: str | None = None):
    """Blocks (rows) x time (us), each phase a coloured bar, barrier waits left white."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(12, 4))
    kinds = sorted(set(t.kinds))
    cmap = plt.get_cmap("tab20")
    color = {k: cmap(i % 20) for i, k in enumerate(kinds)}
    work_start = np.concatenate([np.full((t.arrive.shape[0], 1), t.start), t.leave[:, :-1]], axis=1)
    nb = t.arrive.shape[0] if max_blocks is None else min(max_blocks, t.arrive.shape[0])
    colors = [color[kind] for kind in t.kinds]
    for b in range(nb):  # one call per block (one per bar took minutes for a 3-step launch)
        s = (work_start[b] - t.start) / 1e3
        w = (t.arrive[b] - work_start[b]) / 1e3
        ax.broken_barh(list(zip(s.tolist(), w.tolist())), (b - 0.4, 0.8), facecolors=colors, linewidth=0)
    ax.set_xlabel("time (us)")
    ax.set_ylabel("block")
    ax.set_ylim(-1, nb)
    handles = [plt.Rectangle((0, 0), 1, 1, color=color[k]) for k in kinds]
    ax.legend(handles, kinds, ncol=min(6, len(kinds)), fontsize=7, loc="upper right")
    if title:
        ax.set_title(title)
    return ax


_FLAGS = {"ool": "out_of_line", "nocompute": "nocompute", "nomixer": "nomixer", "pf": "prefetch",
          "pflate": "prefetch_late", "cbar": "counter", "defer": "defer", "early": "state_first",
          "oolrows": "rows_out_of_line", "pair": "paired_rows", "ef": "evict_first", "nobar": "_nobar",
          "l2keep": "l2_keep", "nocopy": "nocopy", "wrel": "warp_release",
          "mono": "monotonic", "pp": "page_pairs", "xr": "xregs", "ss": "split_sums", "eh": "early_residual",
          "fold": "fold_attention", "ooldn": "deltanet_out_of_line", "indec": "inline_decode",
          "fd": "fused_down", "lshift": "deltanet_late_shift",
          "fdb": "fd_bulk", "fo": "fused_out", "li": "lineinfo", "twice": "mixer_twice", "lean": "lean",
          "sd": "smem_descs", "lc": "lean_calls", "cs": "count_smem", "mma": "mma_pages",
          "dsh": "deferred_shift", "nfence": "_no_refill_fence",
          "pd": "packed_descs", "prod": "producer", "noindec": "_no_inline_decode",
          "nolto": "_no_lto", "hold": "producer_hold",
          "rst": "release_stamp", "thr": "producer_throttle", "ll": "ll_inproj",
          "llr": "ll_residual", "llt": "ll_together"}
_VALUES = {"pc=": "pair_copies", "fdp=": "fd_probe", "fdc=": "fd_chunk", "fdr=": "fd_reps", "fds=": "fd_stride",
           "lmp=": "lm_pool",
           "l2=": "l2_ahead",
           "l2m=": "l2_mixer", "ring=": "ring", "page=": "page_kb", "regs=": "max_registers",
           "ool=": "out_of_line", "mch=": "mma_chains", "bt=": "bar_thread", "cb=": "combine_batch",
           "cc=": "combine_cols", "skel=": "skeleton",
           "pbo=": "producer_backoff", "preg=": "producer_regs",
           "llb=": "ll_backoff", "llt=": "ll_together"}


def parse_variant(variant: str) -> tuple[int, dict]:
    """``"3+defer+ring=4"`` -> ``(3, {"defer": True, "ring": 4})``: a version and its build options as the
    profiling tools spell them (``tools/profile_persistent.py`` lists them; ``"nobar"`` comes back as ``"_nobar"``:
    the decoder's ``barriers=False``, not a build option)."""
    version, *opts = variant.split("+")
    options = {}
    for o in opts:
        if o in _FLAGS:
            name = _FLAGS[o]
            if name.startswith("_no_"):  # a switch that turns a default off ("_nobar" is not one)
                options[name[4:]] = False
            else:
                options[name] = True
            continue
        prefix = next((p for p in _VALUES if o.startswith(p)), None)
        if prefix is None:
            raise ValueError(f"unknown option {o!r} in variant {variant!r}: one of {sorted(_FLAGS)} or "
                             f"{[p + 'N' for p in _VALUES]}")
        options[_VALUES[prefix]] = int(o[len(prefix):])
    return int(version), options


__all__ = ["Timeline", "read_timeline", "phase_table", "format_table", "plot_timeline", "parse_variant"]
