"""Generate text with the reference model.

    python -m reference.generate --prompt "The capital of France is" --max-new-tokens 32
    python -m reference.generate --model /path/to/Qwen3.5-0.8B --prompt "..." --temperature 0.7 --top-p 0.9 --seed 1

Without --model it uses the synthetic checkpoint with the real 0.8B shapes (generated on first use into
data/checkpoints/): its weights are random, so the text is meaningless; the point is the shapes, the speed and
the numerics. Point --model at a local copy of the real Qwen3.5-0.8B for real text.
"""

from __future__ import annotations

import sys
import time

import torch

from . import cli

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}

parser = cli.parser("reference.generate", __doc__)
parser.add_argument("--model", metavar="DIR",
                    help="checkpoint directory (default: the synthetic 0.8B checkpoint, generated on first use)")
cli.add_generation_arguments(parser)
parser.add_argument("--dtype", choices=sorted(DTYPES), default="float32",
                    help="compute dtype of the weights and activations (default: %(default)s)")
parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu",
                    help="where the model runs (default here: %(default)s)")


def check_args(args) -> None:
    """Everything that can be refused without loading the model."""
    from .config import Qwen35Config
    from .tokenizer import load_tokenizer

    if args.device == "cuda" and not torch.cuda.is_available():
        raise cli.UsageError("--device cuda: no CUDA GPU is available here (torch.cuda.is_available() is False); "
                             "use --device cpu")
    args.config = (cli.checkpoint_argument("--model", args.model) if args.model is not None
                   else Qwen35Config.qwen35_0_8b())
    args.tokenizer = load_tokenizer()
    args.ids = args.tokenizer.chat_prompt(args.prompt) if args.chat else args.tokenizer.encode(args.prompt)
    cli.check_prompt("--prompt", args.ids, args.config, args.max_new_tokens, args.config.max_position_embeddings,
                     "the model's max_position_embeddings")


@cli.command(parser, validate=check_args)
def main(args) -> int:
    from .model import load_model
    from .synthetic import ensure_synthetic_checkpoint
    from .tokenizer import TextStream

    if args.model is None:
        print("Using the SYNTHETIC checkpoint (random weights with the real Qwen3.5-0.8B shapes): the generated "
              "text is meaningless. Pass --model DIR for real weights.", file=sys.stderr)
        args.model = ensure_synthetic_checkpoint()
    model = load_model(args.model, device=args.device, dtype=DTYPES[args.dtype])
    print(f"prompt: {len(args.ids)} tokens on {args.device} in {args.dtype}", file=sys.stderr)
    stream = TextStream(args.tokenizer)
    sys.stdout.write(args.prompt)
    sys.stdout.flush()

    def emit(token: int) -> None:
        sys.stdout.write(stream(token))
        sys.stdout.flush()

    t0 = time.perf_counter()
    try:
        new = model.generate(args.ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, seed=args.seed, stop_at_eos=not args.no_stop_at_eos, callback=emit)
    finally:
        sys.stdout.write(stream.close() + "\n")
        sys.stdout.flush()
    dt = time.perf_counter() - t0
    print(f"\n{len(new)} tokens in {dt:.2f} s ({len(new) / dt:.1f} tok/s incl. prefill)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
