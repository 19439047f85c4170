"""The main job: decode with every stage this machine can run, each checked against the one before.

    make demo            # or: python -m megakernel.demo [--model DIR] [--tokens N]

On a GPU: the reference (fp32 compute over the bf16 weights, bf16 KV cache: the kernels' oracle) generates N greedy
tokens; the layered decoder (one Numba kernel per op) generates them eagerly and from a captured CUDA graph; the
tokens must be identical, the logits of the first steps are compared, and each stage's speed is printed with its
fraction of the bandwidth floor.

On a CPU-only machine: the reference generates on the CPU (slowly: ~1 tok/s at the real shapes), and the layered
decoder is compared with the reference layer by layer on a tiny config in Numba's CUDA simulator (the same kernels,
run as Python threads).

Default model: the synthetic checkpoint with the real Qwen3.5-0.8B shapes (generated on first use into
data/checkpoints/; its text is meaningless, its numerics are not). --model DIR uses real weights.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import torch

from reference import ensure_synthetic_checkpoint, load_tokenizer
from reference.budget import decode_budget
from reference.check import check


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def gpu_demo(path, ids, n: int, tok) -> int:
    from .layered import load

    ref = load(path, "reference")
    floor = decode_budget(ref.config, context=len(ids)).floor_seconds()
    print(f"bandwidth floor on an H100 (3.02 TB/s): {1e3 * floor:.3f} ms/token ({1 / floor:,.0f} tok/s)\n")
    expected, dt = _timed(lambda: ref.generate(ids, n, stop_at_eos=False).tolist())
    print(f"[reference]     {n} tokens, {n / dt:7.1f} tok/s incl. prefill: {tok.decode(expected)!r}")
    # decode from the oracle's own prefill state: the step-by-step check below is then the decode kernels' alone
    layered = load(path, "layered", max_context=max(512, len(ids) + n + 1), prefill_mode="reference")
    # logits of the first steps, teacher-forced with the reference's tokens
    logits, state = layered.prefill(ids)
    ref_logits, ref_state = ref.prefill(ids)
    for i, t in enumerate(expected[:4]):
        check(f"layered vs reference, step {i} logits", ref.decode_step(t, ref_state), layered.decode_step(t, state),
              1e-3)
    ok = True
    for mode, fn in (("layered", layered.greedy_tokens), ("layered-graph", layered.graph_greedy_tokens)):
        fn(ids, 4)  # warm-up (compiles kernels, captures the graph)
        tokens, dt = _timed(lambda: fn(ids, n))
        _, prefill = _timed(lambda: layered.prefill(ids, last_only=True))
        per_token = (dt - prefill) / max(1, n - 1)
        same = tokens == expected
        ok &= same
        print(f"[{mode:<13}] {n} tokens, {1 / per_token:7.1f} tok/s decode ({100 * floor / per_token:4.1f}% of "
              f"floor), tokens {'identical to' if same else 'DIFFER from'} the reference")
    return 0 if ok else 1


def cpu_demo(path, ids, n: int, tok) -> int:
    from reference import load_model

    model = load_model(path)
    n = min(n, 8)
    out, dt = _timed(lambda: model.generate(ids, n, stop_at_eos=False).tolist())
    print(f"[reference, CPU fp32] {n} tokens in {dt:.1f} s: {tok.decode(out)!r}\n")
    print("No CUDA GPU here: comparing the layered decoder with the reference on a tiny config in Numba's CUDA "
          "simulator (the same kernels, run as Python threads; ~1 minute) ...", flush=True)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "megakernel.compare", "--tiny", "--tokens", "2", "--prompt-len", "5"]
    return subprocess.run(cmd, env=env).returncode


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m megakernel.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (default: the synthetic 0.8B checkpoint)")
    p.add_argument("--prompt", default="The quick brown fox")
    p.add_argument("--tokens", type=int, default=32)
    args = p.parse_args(argv)

    path = args.model or ensure_synthetic_checkpoint()
    if args.model is None:
        print("Synthetic checkpoint (random weights, real shapes): the text is meaningless, the numerics are not.")
    tok = load_tokenizer()
    ids = tok.encode(args.prompt)

    from .launch import gpu_available

    return gpu_demo(path, ids, args.tokens, tok) if gpu_available() else cpu_demo(path, ids, args.tokens, tok)


if __name__ == "__main__":
    sys.exit(main())
