"""Profile the persistent kernel versions on a GPU: one launch of a few steps per variant, the per-phase table and
a timeline chart (blocks x time).

Usage: python tools/profile_persistent.py OUT_DIR [VARIANTS] [CONTEXT]
  VARIANTS  comma-separated: a version ("1", "2") with build options after "+": "2+ool" (mixer bodies out of
            line), "2+l2=6" (prefetch 6 pages ahead into L2), "2+ring=3+page=16" (another weight ring),
            "2+pf" / "2+pflate" (mixer inputs prefetched into L2 before / after the projection's pages), "2+cbar"
            (counter barrier), "2+defer" (no refills between a mixer's projection and the mixer), "2+early" (the
            DeltaNet body's state loads first), "2+nocompute" / "2+nomixer" / "2+nobar" (timing experiments: skip
            the dot products / the mixers / the grid barriers), "5+fold" (attention in one phase: one grid barrier
            per attention layer instead of three), "7+pc=1" (the LM head's pages copied two at a time: version 8),
            "7+twice" (timing only: every mixer item run twice in a row), "8+lean" (cheap index arithmetic in the
            page loops: version 9); default "1,2".
  PROFILE_LOCK=FILE  compile outside, time inside an exclusive lock on FILE: several variants can then run as
            parallel processes (compiling at once, timing one at a time).
  PROFILE_PREFILL=MODE  how the prompt is prefilled (default "reference": no layered kernels to compile)."""

import fcntl
import os
import sys
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

import megakernel  # noqa: E402
from megakernel.persistent import PersistentDecoder  # noqa: E402
from megakernel.persistent.profile import format_table, parse_variant, plot_timeline, read_timeline  # noqa: E402
from reference import ensure_synthetic_checkpoint  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
variants = (sys.argv[2] if len(sys.argv) > 2 else "1,2").split(",")
context = int(sys.argv[3]) if len(sys.argv) > 3 else 16
ref = megakernel.load(ensure_synthetic_checkpoint(), "reference")
prompt = [(i * 7919) % 200_000 + 17 for i in range(context)]
steps = 3
for variant in variants:
    v, options = parse_variant(variant)
    nobar = options.pop("_nobar", False)
    t0 = time.perf_counter()
    dec = PersistentDecoder(ref, max_context=max(1024, 2 * context), version=v, profile=True, options=options,
                            barriers=not nobar, prefill_mode=os.environ.get("PROFILE_PREFILL", "reference"))
    dec.kernel()
    print(f"{variant}: compiled in {time.perf_counter() - t0:.0f} s", flush=True)
    lock = open(os.environ["PROFILE_LOCK"], "a") if os.environ.get("PROFILE_LOCK") else None
    if lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
    logits, state = dec.prefill(prompt)
    dec.run(state, int(logits[-1].argmax()), 2)  # warm-up
    logits, state = dec.prefill(prompt)
    dec.run(state, int(logits[-1].argmax()), steps)
    torch.cuda.synchronize()
    t = read_timeline(dec, steps, context=context + 2)
    if lock:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    print(f"\n=== persistent {variant}: {dec.blocks} blocks x {dec.plan.threads} threads, "
          f"{getattr(dec, 'registers', '?')} registers, context {context}")
    print(format_table(t))
    tag = variant.replace("+", "_").replace("=", "")
    s0 = t.start  # the data first (relative ns as int32, compressed: small enough to commit), then the chart
    np.savez_compressed(out / f"timeline_v{tag}.npz", arrive=(t.arrive - s0).astype(np.int32),
                        leave=(t.leave - s0).astype(np.int32), labels=np.array(t.labels),
                        page_wait=t.page_wait.astype(np.int32))
    fig, ax = plt.subplots(figsize=(14, 5))
    plot_timeline(t, ax=ax, title=f"persistent {variant}, three steps, context {context}")
    fig.savefig(out / f"timeline_v{tag}.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    del dec
