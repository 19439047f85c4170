"""Compare stages layer by layer: hidden states, conv states, DeltaNet states, KV cache, logits, tokens.

    python -m megakernel.compare --stages reference,layered --tokens 16            # GPU, synthetic 0.8B
    NUMBA_ENABLE_CUDASIM=1 python -m megakernel.compare --tiny --tokens 4          # CPU, simulator, tiny config
    python -m megakernel.compare --stages transformers,reference --model DIR       # the reference vs transformers
    python -m megakernel.compare --stages layered,persistent --tokens 16           # the megakernel vs stage 2

Each consecutive pair of stages is compared. Both stages prefill the same prompt, then decode with teacher
forcing: the first stage's greedy token is fed to both, so an error cannot hide behind a different token
sequence. For every decode step the per-layer hidden states and the logits are compared; after the last step
every state. Errors are max |a - b| and a relative error: max |a - b| / max |a| for hidden states and logits;
for the states, every element against the largest value of its own head (``reference.check.check_elements``,
heads as ``reference.hf_compare.state_tensors`` cuts them), so a wrong small head cannot hide behind a large
one. Fidelity beside token identity: the KL divergence KL(p_a || p_b) of the two next-token distributions at the
prefill's last position and every decode step, mean and max. The exit status is 1 if any relative error exceeds
--tol or a token differs.

Stages: ``transformers`` (Qwen3_5ForCausalLM, fp32), ``reference`` (fp32 compute on the bf16 weights; with a
kernel stage in the list, with a bf16 KV cache like the kernels), ``layered`` (the Numba kernel decoder),
``persistent`` (the megakernel: one launch per step; its per-layer hidden states come from the kernel's trace
buffer, written after each layer's last barrier).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field

import torch

from reference import cli
from reference.check import group_relative_error, next_token_kl, relative_error
from reference.config import LINEAR
from reference.hf_compare import state_tensors

KERNEL_STAGES = ("layered", "persistent")
COMPARE_STAGES = ("transformers", "reference") + KERNEL_STAGES


# ---------------------------------------------------------------------------- stage adapters
class Runner:
    """prefill(ids) -> last logits [V]; step(token) -> (logits [V], {layer: hidden [D]}); state() -> DecodeState"""

    name: str
    config = None


class ReferenceRunner(Runner):
    def __init__(self, model, name="reference"):
        self.model, self.name, self.config = model, name, model.config

    def prefill(self, ids):
        logits, self._state = self.model.prefill(ids, last_only=True)
        return logits[-1].float().cpu()

    def step(self, token):
        trace = {}
        logits = self.model.decode_step(token, self._state, trace=trace)
        return logits.float().cpu(), {i: h[-1].float().cpu() for i, h in trace["hidden"].items()}

    def state(self):
        return self._state.to("cpu")


class LayeredRunner(ReferenceRunner):
    def __init__(self, decoder, name="layered"):
        super().__init__(decoder, name)

    def step(self, token):
        trace = {}
        logits = self.model.decode_step(token, self._state, trace=trace)
        return logits.float().cpu(), {i: h.reshape(-1).float() for i, h in trace["hidden"].items()}

    def state(self):
        return self._state.to_reference()


class TransformersStage(Runner):
    def __init__(self, path, config, device):
        from reference.hf_compare import TransformersRunner, load_transformers_model

        self.name, self.config = "transformers", config
        self.hf = load_transformers_model(path, dtype=torch.float32, device=device)
        self.runner = TransformersRunner(self.hf, config)
        self._hidden = {}
        for i, layer in enumerate(self.hf.model.layers):
            layer.register_forward_hook(self._hook(i))

    def _hook(self, i):
        def save(module, args, output):
            out = output[0] if isinstance(output, tuple) else output
            self._hidden[i] = out[0, -1].detach().float().cpu()
        return save

    def prefill(self, ids):
        return self.runner.prefill(ids)[-1].cpu()

    def step(self, token):
        self._hidden = {}
        logits = self.runner.decode_step(token).cpu()
        return logits, dict(self._hidden)

    def state(self):
        s = self.runner.state()
        return s.to("cpu")


def build_stage(name: str, path, stages: list[str], max_context: int):
    from .launch import kernel_device

    kernel_in_list = any(s in KERNEL_STAGES for s in stages)
    if name == "transformers":
        from reference import Qwen35Config

        config = Qwen35Config.from_pretrained(path)
        return TransformersStage(path, config, "cuda" if torch.cuda.is_available() else "cpu")
    if name == "reference":
        from reference import load_model

        device = kernel_device() if kernel_in_list else ("cuda" if torch.cuda.is_available() else "cpu")
        model = load_model(path, device=device, dtype=torch.float32, weights_dtype=torch.bfloat16,
                           cache_dtype=torch.bfloat16 if kernel_in_list else None)
        return ReferenceRunner(model)
    if name in KERNEL_STAGES:
        from .stages import load

        # decode from the oracle's own prefill state, so per-step errors are the decode kernels' alone
        return LayeredRunner(load(path, name, max_context=max_context, prefill_mode="reference"), name=name)
    from .stages import UnknownStageError

    raise UnknownStageError(f"unknown stage {name!r}: choose from {', '.join(COMPARE_STAGES)}")


# ---------------------------------------------------------------------------- comparison
@dataclass
class PairReport:
    a: str
    b: str
    hidden: dict = field(default_factory=dict)  # layer -> (max_abs, rel) worst over steps
    states: dict = field(default_factory=dict)  # (layer, column) -> (max_abs, per-head rel), worst of its parts
    logits: tuple = (0.0, 0.0)
    kl: list = field(default_factory=list)  # KL(p_a || p_b) in nats: the prefill's last position, then each step
    tokens_agree: int = 0
    steps: int = 0

    def worst_rel(self) -> float:
        rels = [r for _, r in self.hidden.values()] + [r for _, r in self.states.values()] + [self.logits[1]]
        return max(rels) if rels else 0.0

    def kl_mean(self) -> float:
        return sum(self.kl) / len(self.kl) if self.kl else 0.0

    def kl_max(self) -> float:
        return max(self.kl) if self.kl else 0.0


def _worse(old, new):
    return new if old is None or new[1] > old[1] else old


STATE_COLUMNS = {"conv q|k": "conv", "conv v": "conv", "DeltaNet": "deltanet", "K": "K", "V": "V"}


def compare_pair(a: Runner, b: Runner, prompt: list[int], steps: int) -> PairReport:
    rep = PairReport(a.name, b.name, steps=steps)
    la, lb = a.prefill(prompt), b.prefill(prompt)
    rep.logits = relative_error(la, lb)
    rep.kl.append(float(next_token_kl(la, lb)))
    token = int(la.argmax())
    for _ in range(steps):
        (la, ha), (lb, hb) = a.step(token), b.step(token)
        rep.logits = _worse(rep.logits, relative_error(la, lb))
        rep.kl.append(float(next_token_kl(la, lb)))
        for i in ha:
            rep.hidden[i] = _worse(rep.hidden.get(i), relative_error(ha[i], hb[i]))
        rep.tokens_agree += int(la.argmax()) == int(lb.argmax())
        token = int(la.argmax())
    for i, what, sa, sb, dims, _ in state_tensors(a.state(), b.state()):
        column = STATE_COLUMNS[what]
        rep.states[(i, column)] = _worse(rep.states.get((i, column)), group_relative_error(sa, sb, dims))
    return rep


def format_report(rep: PairReport, config) -> str:
    fmt = lambda e: "-" if e is None else f"{e[0]:.2e} / {e[1]:.2e}"  # noqa: E731
    lines = [f"{rep.a} vs {rep.b}: max|err| / relative error, worst over {rep.steps} decode steps (+ prefill); "
             "states: each element relative to its head's largest value",
             f"{'layer':>5} {'kind':<9} {'hidden':>21} {'conv state':>21} {'DeltaNet state':>21} "
             f"{'K cache':>21} {'V cache':>21}"]
    for i, kind in enumerate(config.layer_types):
        st = lambda what: rep.states.get((i, what))  # noqa: E731
        lines.append(f"{i:>5} {('DeltaNet' if kind == LINEAR else 'attention'):<9} {fmt(rep.hidden.get(i)):>21} "
                     f"{fmt(st('conv')):>21} {fmt(st('deltanet')):>21} {fmt(st('K')):>21} {fmt(st('V')):>21}")
    lines.append(f"logits: {fmt(rep.logits)}    greedy tokens agree: {rep.tokens_agree}/{rep.steps}")
    lines.append(f"next-token KL({rep.a} || {rep.b}) over {len(rep.kl)} teacher-forced positions: "
                 f"mean {rep.kl_mean():.2e}, max {rep.kl_max():.2e} nats")
    return "\n".join(lines)


parser = cli.parser("megakernel.compare", __doc__)
parser.add_argument("--model", metavar="DIR",
                    help="checkpoint directory (default: the synthetic 0.8B checkpoint, or the tiny one with --tiny)")
parser.add_argument("--tiny", action="store_true",
                    help="use the tiny synthetic config (what the CUDA simulator can run; written on first use)")
parser.add_argument("--stages", type=cli.name_list(COMPARE_STAGES, "stage"), default=["reference", "layered"],
                    help=f"comma-separated stages, each compared with the next: {', '.join(COMPARE_STAGES)} "
                         "(default: reference,layered)")
parser.add_argument("--tokens", type=cli.positive_int, default=16, help="decode steps, >= 1 (default: %(default)s)")
parser.add_argument("--prompt-len", type=cli.positive_int, default=12,
                    help="length of the random prompt, >= 1 (default: %(default)s)")
parser.add_argument("--tol", type=cli.positive_float, default=1e-4,
                    help="fail above this relative error (default: %(default)s)")
parser.add_argument("--max-context", type=cli.positive_int, default=None,
                    help="KV-cache capacity of kernel stages (default: 4096; 64 in the CUDA simulator, whose "
                         "attention grid is sized for the capacity and runs one Python thread per CUDA thread)")


def check_args(args) -> None:
    """Everything that can be refused before a model loads."""
    from reference import Qwen35Config

    from .launch import SIMULATOR, kernel_device

    if len(args.stages) < 2:
        raise cli.UsageError(f"--stages needs at least two stages to compare, e.g. reference,layered (from "
                             f"{', '.join(COMPARE_STAGES)})")
    if args.model and args.tiny:
        raise cli.UsageError("--model and --tiny both name a checkpoint: give one")
    if args.model:
        config = cli.checkpoint_config("--model", args.model)  # the weights are checked below
    else:
        config = Qwen35Config.tiny() if args.tiny else Qwen35Config.qwen35_0_8b()
    if args.max_context is None:
        args.max_context = 64 if SIMULATOR else 4096
    kernel = [s for s in args.stages if s in KERNEL_STAGES]
    if kernel:
        kernel_device()  # NoGPUError without a GPU, saying how to run in the simulator
        if SIMULATOR:
            from .stages import check_simulator_budget

            check_simulator_budget(config)
        need = args.prompt_len + args.tokens
        if need > min(args.max_context, config.max_position_embeddings):
            raise cli.UsageError(f"--prompt-len {args.prompt_len} + --tokens {args.tokens} need {need} positions, "
                                 f"more than the kernel stages' KV cache of {args.max_context} (--max-context)")
    if args.prompt_len + args.tokens > config.max_position_embeddings:
        raise cli.UsageError(f"--prompt-len + --tokens exceed the model's max_position_embeddings "
                             f"({config.max_position_embeddings})")
    if args.model:  # names and shapes of every tensor against config.json (transformers' own error is long)
        cli.checkpoint_argument("--model", args.model, config)


@cli.command(parser, validate=check_args)
def main(args) -> int:
    from reference import Qwen35Config, ensure_synthetic_checkpoint

    if args.model:
        path = args.model
    elif args.tiny:
        path = ensure_synthetic_checkpoint("tiny-synthetic", Qwen35Config.tiny())
    else:
        path = ensure_synthetic_checkpoint()
    stages = args.stages
    runners = []
    for s in stages:
        print(f"loading {s} ...", file=sys.stderr, flush=True)
        runners.append(build_stage(s, path, stages, args.max_context))
    config = runners[0].config
    prompt = torch.randint(0, min(config.vocab_size, 248044), (args.prompt_len,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    failed = False
    for a, b in zip(runners, runners[1:]):
        print(f"comparing {a.name} with {b.name}: prefill of {args.prompt_len} tokens, then {args.tokens} decode "
              "steps ...", file=sys.stderr, flush=True)
        rep = compare_pair(a, b, prompt, args.tokens)
        print(format_report(rep, config))
        bad = rep.worst_rel() > args.tol or rep.tokens_agree != rep.steps
        print(f"{'FAIL' if bad else 'PASS'}: worst relative error {rep.worst_rel():.2e} (tol {args.tol:.0e})\n")
        failed |= bad
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
