"""The main job: decode with every stage this machine can run, each checked against the one before.

    make demo            # or: python -m megakernel.demo [--model DIR] [--tokens N]

On a GPU: the reference (fp32 compute over the bf16 weights, bf16 KV cache: the kernels' oracle) generates N greedy
tokens; the layered decoder (one Numba kernel per op) generates them eagerly and from a captured CUDA graph; the
tokens must be identical, the logits of the first steps are compared, and each stage's speed is printed with its
fraction of the bandwidth floor.

On a CPU-only machine: the reference generates on the CPU (slowly: ~0.5 tok/s at the real shapes, so the default
is 8 tokens there), and its decode steps are checked against one prefill of the same tokens (the recurrent DeltaNet
and the KV cache against the chunked and full-attention forms); then the layered decoder is compared with the
reference layer by layer on a tiny config in Numba's CUDA simulator (the same kernels, run as Python threads).

Default model: the synthetic checkpoint with the real Qwen3.5-0.8B shapes (generated on first use into
data/checkpoints/; its text is meaningless, its numerics are not). --model DIR uses real weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import torch

from reference import cli
from reference.budget import decode_budget
from reference.check import check

GPU_TOKENS, CPU_TOKENS = 32, 8

parser = cli.parser("megakernel.demo", __doc__)
parser.add_argument("--model", metavar="DIR",
                    help="checkpoint directory (default: the synthetic 0.8B checkpoint, generated on first use)")
parser.add_argument("--prompt", default="The quick brown fox", help="the prompt text (default: %(default)r)")
parser.add_argument("--tokens", type=cli.positive_int, default=None,
                    help=f"greedy tokens to generate, >= 1 (default: {GPU_TOKENS} on a GPU, {CPU_TOKENS} on a CPU, "
                         "where the 0.8B reference runs at ~0.5 tok/s)")


def _timed(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    out = fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return out, time.perf_counter() - t0


def check_args(args) -> None:
    from reference import Qwen35Config, load_tokenizer

    from .launch import gpu_available

    args.gpu = gpu_available()
    args.tokens = args.tokens or (GPU_TOKENS if args.gpu else CPU_TOKENS)
    args.config = (cli.checkpoint_argument("--model", args.model) if args.model is not None
                   else Qwen35Config.qwen35_0_8b())
    args.tokenizer = load_tokenizer()
    args.ids = args.tokenizer.encode(args.prompt)
    cli.check_prompt("--prompt", args.ids, args.config, args.tokens, args.config.max_position_embeddings,
                     "the model's max_position_embeddings")


def gpu_demo(path, ids, n: int, tok) -> int:
    from . import load

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
    from reference.tokenizer import TextStream

    print(f"No CUDA GPU here: the reference decodes {n} greedy tokens on the CPU (fp32; ~0.5 tok/s at the 0.8B "
          "shapes on two cores), then its decode steps are checked against one prefill of the same tokens.",
          flush=True)
    print(f"loading {path} ...", flush=True)
    model, dt = _timed(lambda: load_model(path))
    print(f"loaded in {dt:.1f} s; prompt: {len(ids)} tokens. Generating:", flush=True)
    stream, step_logits, tokens = TextStream(tok), [], []
    start = time.perf_counter()
    with torch.no_grad():
        logits, state = model.prefill(ids, last_only=True)
        logits = logits[-1]
        first = time.perf_counter()
        print(f"  (prefill {first - start:.1f} s) {tok.decode(ids)!r} ->", end=" ", flush=True)
        while True:
            step_logits.append(logits)
            tokens.append(int(logits.argmax()))
            print(stream(tokens[-1]), end="", flush=True)
            if len(tokens) == n:
                break
            logits = model.decode_step(tokens[-1], state)
    decode_s = time.perf_counter() - first
    print(stream.close())
    rate = f", {(n - 1) / decode_s:.2f} tok/s decode" if n > 1 else ""
    print(f"[reference, CPU fp32] {n} tokens in {time.perf_counter() - start:.1f} s (prefill {first - start:.1f} s"
          f"{rate})", flush=True)
    print(f"checking: one prefill of the prompt + the first {n - 1} generated tokens ...", flush=True)
    with torch.no_grad():
        full, _ = model.prefill(ids + tokens[:-1])
    result = check("decode-step logits vs prefill logits", full[len(ids) - 1:], torch.stack(step_logits), 1e-4,
                   verbose=False)
    print(f"checked: every decode step's logits match the prefill's (worst relative error {result.rel:.1e}, tol "
          "1e-4): the recurrent DeltaNet and the KV cache agree with the chunked and full-attention forms. (The "
          "reference itself is checked against transformers by `make test`.)\n", flush=True)
    print("Comparing the layered decoder with the reference on a tiny config in Numba's CUDA simulator (the same "
          "kernels, run as Python threads; about a minute) ...", flush=True)
    env = dict(os.environ, NUMBA_ENABLE_CUDASIM="1")
    cmd = [sys.executable, "-m", "megakernel.compare", "--tiny", "--tokens", "2", "--prompt-len", "5"]
    return subprocess.run(cmd, env=env).returncode


@cli.command(parser, validate=check_args)
def main(args) -> int:
    from reference import ensure_synthetic_checkpoint

    path = args.model or ensure_synthetic_checkpoint()
    if args.model is None:
        print("Synthetic checkpoint (random weights, real shapes): the text is meaningless, the numerics are not.")
    demo = gpu_demo if args.gpu else cpu_demo
    return demo(path, args.ids, args.tokens, args.tokenizer)


if __name__ == "__main__":
    sys.exit(main())
