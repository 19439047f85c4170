"""Compare stages layer by layer: hidden states, conv states, DeltaNet states, KV cache, logits, tokens.

    python -m megakernel.compare --stages reference,layered --tokens 16            # GPU, synthetic 0.8B
    NUMBA_ENABLE_CUDASIM=1 python -m megakernel.compare --tiny --tokens 4          # CPU, simulator, tiny config
    python -m megakernel.compare --stages transformers,reference --model DIR       # the reference vs transformers

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
kernel stage in the list, with a bf16 KV cache like the kernels), ``layered`` (the Numba kernel decoder).
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

import torch

from reference.check import group_relative_error, next_token_kl, relative_error
from reference.config import LINEAR
from reference.hf_compare import state_tensors

KERNEL_STAGES = ("layered",)


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
    if name == "layered":
        from .layered import load

        return LayeredRunner(load(path, "layered", max_context=max_context))
    raise SystemExit(f"unknown stage {name!r}; choose from transformers, reference, layered")


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


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m megakernel.compare", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="checkpoint directory (default: the synthetic 0.8B checkpoint, or --tiny)")
    p.add_argument("--tiny", action="store_true", help="use a tiny synthetic config (for the CPU simulator)")
    p.add_argument("--stages", default="reference,layered")
    p.add_argument("--tokens", type=int, default=16, help="decode steps")
    p.add_argument("--prompt-len", type=int, default=12)
    p.add_argument("--tol", type=float, default=1e-4, help="fail above this relative error")
    p.add_argument("--max-context", type=int, default=None,
                   help="KV-cache capacity of kernel stages (default: 4096; 64 in the CUDA simulator, whose "
                        "attention grid is sized for the capacity and runs one Python thread per CUDA thread)")
    args = p.parse_args(argv)

    from reference import Qwen35Config, ensure_synthetic_checkpoint

    if args.model:
        path = args.model
    elif args.tiny:
        path = ensure_synthetic_checkpoint("tiny-synthetic", Qwen35Config.tiny())
    else:
        path = ensure_synthetic_checkpoint()
    from .launch import SIMULATOR

    if args.max_context is None:
        args.max_context = 64 if SIMULATOR else 4096
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    if len(stages) < 2:
        raise SystemExit("give at least two stages, e.g. --stages reference,layered")
    runners = [build_stage(s, path, stages, args.max_context) for s in stages]
    config = runners[0].config
    prompt = torch.randint(0, min(config.vocab_size, 248044), (args.prompt_len,),
                           generator=torch.Generator().manual_seed(0)).tolist()
    failed = False
    for a, b in zip(runners, runners[1:]):
        rep = compare_pair(a, b, prompt, args.tokens)
        print(format_report(rep, config))
        bad = rep.worst_rel() > args.tol or rep.tokens_agree != rep.steps
        print(f"{'FAIL' if bad else 'PASS'}: worst relative error {rep.worst_rel():.2e} (tol {args.tol:.0e})\n")
        failed |= bad
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
