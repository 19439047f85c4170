"""Generate text with any stage, streamed to the terminal, with its speed against the bandwidth floor.

    python -m megakernel.generate --stage layered --model /path/to/Qwen3.5-0.8B --prompt "The capital of France is"
    python -m megakernel.generate --stage persistent --model DIR --prompt "..." --temperature 0.7 --top-p 0.9 --seed 1
    NUMBA_ENABLE_CUDASIM=1 python -m megakernel.generate --stage layered --tiny --prompt "a." --max-new-tokens 4

Stages (``megakernel.load``): ``reference`` (pure PyTorch, fp32 compute over the bf16 weights), ``layered`` (one
Numba kernel per op), ``persistent`` (the megakernel). The text goes to stdout as it is generated, whole UTF-8
characters only (a token can end inside a character); at the end stderr gets the prefill time, the decode speed
in tok/s and its fraction of the bandwidth floor. The floor is an H100 figure (3.02 TB/s, reference/budget.py):
on another GPU the fraction says how far from an H100's floor it runs; on the CPU it is not given.

Every argument is checked before the model loads (see ``reference.cli`` for the exit statuses). Without --model
the synthetic checkpoint with the real 0.8B shapes is used, with --tiny a tiny one (random weights: the text is
meaningless; both are generated on first use).
"""

from __future__ import annotations

import sys
import time

from reference import cli

from .stages import DEFAULT_MAX_CONTEXT, KERNEL_STAGES, SIMULATOR_MAX_CONTEXT, STAGES

parser = cli.parser("megakernel.generate", __doc__)
parser.add_argument("--stage", required=True, choices=STAGES, help="which implementation decodes")
parser.add_argument("--model", metavar="DIR",
                    help="checkpoint directory, e.g. the published Qwen3.5-0.8B (default: the synthetic 0.8B "
                         "checkpoint, generated on first use; its text is meaningless)")
parser.add_argument("--tiny", action="store_true",
                    help="use the tiny synthetic config instead (what the CUDA simulator runs; its vocabulary knows "
                         "only short ASCII pieces such as 'a.')")
cli.add_generation_arguments(parser)
parser.add_argument("--max-context", type=cli.positive_int, default=None, metavar="N",
                    help=f"KV-cache capacity of the kernel stages, in tokens (default: {DEFAULT_MAX_CONTEXT} on a "
                         f"GPU, {SIMULATOR_MAX_CONTEXT} in the CUDA simulator, at most the model's "
                         "max_position_embeddings)")
parser.add_argument("--prefill-mode", choices=("bf16", "fp32", "reference"), default=None,
                    help="how a kernel stage prefills the prompt: bf16 matrix products (the default), the same code in "
                         "fp32, or the reference model (its text then matches the reference stage token for token)")


def check_args(args) -> None:
    """Everything that can be refused without loading the model (raises cli.UsageError or a typed error)."""
    from reference.tokenizer import load_tokenizer

    from .launch import SIMULATOR, kernel_device
    from .stages import check_simulator_budget, default_max_context

    from reference import Qwen35Config

    if args.model is not None and args.tiny:
        raise cli.UsageError("--model and --tiny both name a checkpoint: give one")
    if args.model is not None:
        args.config = cli.checkpoint_config("--model", args.model)  # the weights are checked below
    else:
        args.config = Qwen35Config.tiny() if args.tiny else Qwen35Config.qwen35_0_8b()
    config = args.config
    kernel = args.stage in KERNEL_STAGES
    if kernel:
        kernel_device()  # NoGPUError on a machine without a GPU, saying how to run in the simulator
        if SIMULATOR:
            check_simulator_budget(config)
        if args.max_context is not None and args.max_context > config.max_position_embeddings:
            raise cli.UsageError(f"--max-context {args.max_context} is more than this model's "
                                 f"max_position_embeddings ({config.max_position_embeddings})")
        capacity = args.max_context or default_max_context(config)
        where = "the simulator" if SIMULATOR else "this GPU run"
        note = (f"--max-context {args.max_context}" if args.max_context else
                f"the default KV cache in {where}; --max-context raises it")
    else:
        if args.max_context is not None:
            raise cli.UsageError("--max-context sizes the kernel stages' KV cache; the reference's cache grows as "
                                 "needed (drop the flag, or pick --stage layered / persistent)")
        capacity = config.max_position_embeddings
        note = "the model's max_position_embeddings"
    if args.model is not None:  # every tensor's name and shape, from the file headers
        cli.checkpoint_argument("--model", args.model, config)
    args.tokenizer = load_tokenizer()
    args.ids = args.tokenizer.chat_prompt(args.prompt) if args.chat else args.tokenizer.encode(args.prompt)
    cli.check_prompt("--prompt", args.ids, config, args.max_new_tokens, capacity, note)


@cli.command(parser, validate=check_args)
def main(args) -> int:
    from reference.budget import H100_COPY_BANDWIDTH, decode_budget
    from reference.tokenizer import TextStream

    from . import load
    from .launch import gpu_available, synchronize

    if args.model is None:
        from reference import Qwen35Config, ensure_synthetic_checkpoint

        shapes = "a tiny config" if args.tiny else "the real Qwen3.5-0.8B shapes"
        print(f"Using a SYNTHETIC checkpoint (random weights, {shapes}): the generated text is meaningless. Pass "
              "--model DIR for real weights.", file=sys.stderr)
        args.model = (ensure_synthetic_checkpoint("tiny-synthetic", Qwen35Config.tiny()) if args.tiny
                      else ensure_synthetic_checkpoint())
    kwargs = {"max_context": args.max_context} if args.max_context else {}
    if args.prefill_mode is not None and args.stage != "reference":
        kwargs["prefill_mode"] = args.prefill_mode
    print(f"loading {args.model} for stage {args.stage} ...", file=sys.stderr, flush=True)
    t0 = time.perf_counter()
    model = load(args.model, stage=args.stage, **kwargs)
    if hasattr(model, "kernel"):  # the persistent stage: compile and size the grid now, not inside the timed decode
        model.kernel()
    print(f"loaded in {time.perf_counter() - t0:.1f} s; prompt: {len(args.ids)} tokens", file=sys.stderr, flush=True)

    stream = TextStream(args.tokenizer)
    times: list[float] = []

    def emit(token: int) -> None:
        times.append(time.perf_counter())
        sys.stdout.write(stream(token))
        sys.stdout.flush()

    sys.stdout.write(args.prompt)
    sys.stdout.flush()
    start = time.perf_counter()
    try:
        new = model.generate(args.ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                             top_p=args.top_p, seed=args.seed, stop_at_eos=not args.no_stop_at_eos, callback=emit)
        synchronize()
    finally:
        sys.stdout.write(stream.close() + "\n")
        sys.stdout.flush()

    n = len(new)
    prefill_s = times[0] - start  # the prefill and the first token's sampling
    parts = [f"{n} tokens; prefill of {len(args.ids)} tokens + first token {1e3 * prefill_s:.0f} ms"]
    if n >= 2:
        per_token = (times[-1] - times[0]) / (n - 1)
        parts.append(f"decode {1 / per_token:,.1f} tok/s ({1e3 * per_token:.2f} ms/token over {n - 1} steps)")
        context = len(args.ids) + n // 2  # the mean context of the decode steps
        floor = decode_budget(model.config, context=context).floor_seconds(H100_COPY_BANDWIDTH)
        if gpu_available():
            import torch

            gpu = torch.cuda.get_device_name()
            parts.append(f"{100 * floor / per_token:.1f}% of the bandwidth floor ({1 / floor:,.0f} tok/s at context "
                         f"{context}; the floor is for an H100 at 3.02 TB/s, this GPU is {gpu})")
        else:
            parts.append(f"no fraction of the bandwidth floor: the floor ({1 / floor:,.0f} tok/s at context "
                         f"{context}) is for an H100, and this run is on the CPU")
    else:
        parts.append("decode speed needs >= 2 tokens")
    print("; ".join(parts), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
