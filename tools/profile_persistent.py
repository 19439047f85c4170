"""Profile the persistent kernel versions on a GPU: one launch of a few steps per version, the per-phase table and
a timeline chart (blocks x time). Usage: python tools/profile_persistent.py OUT_DIR [versions] [context]"""

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

import megakernel  # noqa: E402
from megakernel.persistent import PersistentDecoder  # noqa: E402
from megakernel.persistent.profile import format_table, plot_timeline, read_timeline  # noqa: E402
from reference import ensure_synthetic_checkpoint  # noqa: E402

out = Path(sys.argv[1])
out.mkdir(parents=True, exist_ok=True)
versions = [int(v) for v in (sys.argv[2] if len(sys.argv) > 2 else "1,2").split(",")]
context = int(sys.argv[3]) if len(sys.argv) > 3 else 16
ref = megakernel.load(ensure_synthetic_checkpoint(), "reference")
prompt = [(i * 7919) % 200_000 + 17 for i in range(context)]
steps = 3
for v in versions:
    dec = PersistentDecoder(ref, max_context=max(1024, 2 * context), version=v, profile=True)
    dec.kernel()
    logits, state = dec.prefill(prompt)
    dec.run(state, int(logits[-1].argmax()), 2)  # warm-up
    logits, state = dec.prefill(prompt)
    dec.run(state, int(logits[-1].argmax()), steps)
    torch.cuda.synchronize()
    t = read_timeline(dec, steps, context=context + 2)
    print(f"\n=== persistent v{v}: {dec.blocks} blocks x {dec.plan.threads} threads, {getattr(dec, 'registers', '?')} "
          f"registers, context {context}")
    print(format_table(t))
    fig, ax = plt.subplots(figsize=(14, 5))
    plot_timeline(t, ax=ax, title=f"persistent v{v}, one step of three, context {context}")
    fig.savefig(out / f"timeline_v{v}.png", dpi=110, bbox_inches="tight")
    import numpy as np

    np.savez(out / f"timeline_v{v}.npz", arrive=t.arrive, leave=t.leave, labels=np.array(t.labels))
    del dec
