"""The program Nsight Compute profiles: one persistent-kernel launch of a few decode steps, after a warm-up launch.

Usage (on a GPU machine; ncu replays the profiled launch once per counter pass, restoring memory in between):

    ncu --clock-control none --kernel-name regex:persistent --launch-skip 1 --launch-count 1 \\
        --section WarpStateStats --section SchedulerStats --section SourceCounters -o OUT/v7 \\
        python3 tools/ncu_persistent.py [VARIANT] [CONTEXT] [STEPS] [CUBIN]
    ncu --import OUT/v7.ncu-rep --page details --csv          # stall reasons, issue rates
    ncu --import OUT/v7.ncu-rep --page source --csv --print-source sass > OUT/sass.csv
    nvdisasm -g -c CUBIN > OUT/lines.sass         # with a "+li" variant: the Python line of every instruction
    python tools/ncu_lines.py OUT/sass.csv OUT/lines.sass   # stall samples per Python line and per function

VARIANT as ``tools/profile_persistent.py`` spells it (default "7"), CONTEXT the prompt length (default 512), STEPS
the decode steps of the profiled launch (default 8), CUBIN where to write the profiled kernel's machine code. The
prompt is prefilled by the reference (no other Numba kernel runs), so the only launches are the warm-up and the
profiled one."""

import sys

import torch

import megakernel
from megakernel.persistent import PersistentDecoder
from megakernel.persistent.profile import parse_variant
from reference import ensure_synthetic_checkpoint

variant = sys.argv[1] if len(sys.argv) > 1 else "7"
context = int(sys.argv[2]) if len(sys.argv) > 2 else 512
steps = int(sys.argv[3]) if len(sys.argv) > 3 else 8
version, options = parse_variant(variant)
options.pop("_nobar", None)
ref = megakernel.load(ensure_synthetic_checkpoint(), "reference")
dec = PersistentDecoder(ref, max_context=max(1024, 2 * context), version=version, options=options,
                        prefill_mode="reference")
prompt = [(i * 7919) % 200_000 + 17 for i in range(context)]
logits, state = dec.prefill(prompt)
dec.run(state, int(logits[-1].argmax()), 2)  # warm-up launch (skipped by ncu)
logits, state = dec.prefill(prompt)
dec.run(state, int(logits[-1].argmax()), steps)  # the profiled launch
torch.cuda.synchronize()
if len(sys.argv) > 4:  # the machine code ncu saw, for `nvdisasm -g` (SASS offsets -> Python lines)
    for compiled in dec.kernel().overloads.values():
        with open(sys.argv[4], "wb") as f:
            cubin = compiled._codelibrary.get_cubin()
            f.write(getattr(cubin, "code", cubin))  # bytes, or an ObjectCode holding them
print(f"variant {variant}: {dec.blocks} blocks x {dec.plan.threads} threads, {steps} steps at context {context}")
