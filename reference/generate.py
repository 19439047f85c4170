"""Generate text with the reference model.

    python -m reference.generate --prompt "The capital of France is" --max-new-tokens 32
    python -m reference.generate --model /path/to/Qwen3.5-0.8B --prompt "..." --temperature 0.7 --top-p 0.9 --seed 1

Without --model it uses the synthetic checkpoint with the real 0.8B shapes (generated on first use into
data/checkpoints/): its weights are random, so the text is meaningless; the point is the shapes, the speed and
the numerics. Point --model at a local copy of the real Qwen3.5-0.8B for real text.
"""

from __future__ import annotations

import argparse
import sys
import time

import torch

from .model import load_model
from .synthetic import ensure_synthetic_checkpoint
from .tokenizer import QWEN35_VOCAB_USED, load_tokenizer

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m reference.generate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (default: the synthetic 0.8B checkpoint)")
    p.add_argument("--prompt", default="The quick brown fox")
    p.add_argument("--chat", action="store_true", help="wrap the prompt in the chat template")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--dtype", choices=sorted(DTYPES), default="float32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--no-stop-at-eos", action="store_true")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    synthetic = args.model is None
    path = ensure_synthetic_checkpoint() if synthetic else args.model
    if synthetic:
        print("Using the SYNTHETIC checkpoint (random weights with the real Qwen3.5-0.8B shapes): the generated "
              "text is meaningless. Pass --model DIR for real weights.", file=sys.stderr)
    model = load_model(path, device=args.device, dtype=DTYPES[args.dtype])
    tok = load_tokenizer()
    if model.config.vocab_size < QWEN35_VOCAB_USED:
        print(f"note: this model's vocabulary ({model.config.vocab_size}) is smaller than Qwen3.5's; "
              "prompt tokens outside it are refused", file=sys.stderr)
    ids = tok.chat_prompt(args.prompt) if args.chat else tok.encode(args.prompt)
    print(f"prompt: {len(ids)} tokens on {args.device} in {args.dtype}", file=sys.stderr)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    pieces: list[int] = []
    t0 = time.perf_counter()

    def stream(token: int) -> None:
        pieces.append(token)
        sys.stdout.write(tok.decode([token]))
        sys.stdout.flush()

    new = model.generate(ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                         top_p=args.top_p, seed=args.seed, stop_at_eos=not args.no_stop_at_eos, callback=stream)
    dt = time.perf_counter() - t0
    print(f"\n\n{len(new)} tokens in {dt:.2f} s ({len(new) / dt:.1f} tok/s incl. prefill)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
