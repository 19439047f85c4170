import torch, megakernel
from reference import ensure_synthetic_checkpoint
from megakernel.persistent import PersistentDecoder
from tests.gpu.test_gpu_persistent import PROMPTS
ref = megakernel.load(ensure_synthetic_checkpoint(), "reference")
def res(dec, blocks):
    dec.resize_grid(blocks)
    logits, state = dec.prefill(PROMPTS[1])
    tokens = dec.run(state, int(logits[-1].argmax()), 24)
    return tokens, dec.logits.clone(), state.to_reference()
def diff(a, b):
    out = [f"tokens {'same' if a[0]==b[0] else 'DIFFER'}", f"logits maxdiff {float((a[1]-b[1]).abs().max()):.3g}"]
    for name in ("conv", "recurrent", "k_cache", "v_cache"):
        bad = [l for l in getattr(a[2], name) if not torch.equal(getattr(a[2], name)[l], getattr(b[2], name)[l])]
        if bad: out.append(f"{name} differs in layers {bad}")
    return "; ".join(out)
plain = PersistentDecoder(ref, max_context=1024, version=13, prefill_mode="reference")
full = plain.resize_grid(None)
base = res(plain, full)
print("plain repeat:", diff(res(plain, full), base), flush=True)
for opts in ({"ll_residual": True, "ll_together": 2}, {"ll_residual": True, "ll_together": 1}, {"ll_residual": True}):
    d = PersistentDecoder(ref, max_context=1024, version=13, prefill_mode="reference", options=opts)
    for blocks in (full, full, 37, 37):
        print(opts, blocks, diff(res(d, blocks), base), flush=True)
