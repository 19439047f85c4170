"""The systems ``python -m megakernel.bench`` compares, behind one small interface, and how each is checked.

Every system answers four questions for the benchmark (see :class:`System`):

* ``greedy(prompt, n)``: its own fastest greedy path (the tokens it would generate);
* ``teacher_forced(prompt, tokens)``: its logits when fed the oracle's tokens (None if it has no logits API);
* ``decode(ids, gen)``: prefill ``ids`` (untimed), then time ``gen`` greedy decode steps; returns (seconds, steps);
* ``prefill(ids)``: the time of a prefill of ``ids`` (None when the system has no prefill of its own).

A system is **checked** against an oracle in matching precision before it is timed (:func:`check_system`): the
oracle's greedy tokens over ``n`` steps and its logits at each step are compared with the system's. It passes when
its teacher-forced logits are within the stated tolerance of the oracle's at every step (relative error
max|err| / max|ref|, :func:`reference.check.check`) and its greedy tokens are identical, or first differ at a near
tie that the measured logit error explains (the gap between the two tokens' oracle logits is at most twice the
largest logit error of that step). Systems without a logits API must produce identical tokens. A system whose
check fails is never timed.

Oracles and precision: two faithful bf16 implementations of this model differ by a few percent in their logits
after a few steps (bf16 keeps 8 bits; a different op order or fusion rounds differently, and 24 layers amplify it:
measured 2.2e-2 for the static-shape reference vs the eager one, 5.2e-2 for torch.compile), so a bf16-vs-bf16
comparison cannot tell a small bug from rounding. The torch and transformers rows are therefore checked through
an fp32 twin — the same code in fp32 (``check_target``) — against the reference in fp32 with a tight tolerance
(transformers agrees with it bit for bit), and timed in bf16. Where transformers runs flash-linear-attention's
Triton kernels (fla importable, on a GPU) its fp32 twin computes its products in TF32, so it is held to
``TOL_FP32_TF32`` (1e-2) instead, with the same rule for the greedy tokens. The Numba kernel stages compute in
fp32 already and are checked against the reference computing in fp32 from the bf16 weights with a bf16 KV cache
(``megakernel.layered.load(path, "reference")``).

Prefill rows (``ppN``): every system with a prefill of its own times the shortest length; the kernel stages
time every length (``megakernel.prefill``: bf16 products, fp32 states, pieces of 8192 tokens), each checked
first by :func:`check_prefill`: the same code in fp32 against the reference (logits and every state, TOL_FP32),
the timed bf16 run against it at TOL_PREFILL_BF16, and for the shortest length greedy decoding from the bf16
state (the reference and transformers materialize T x T attention scores: 32k-token prompts are out of their
reach, and the reference oracle runs in pieces of 4096 tokens, each continuing the last one's state).

``llama.cpp`` is not run here: :func:`llama_cpp_rows` converts the JSON that ``llama-bench -o json`` writes
(``tools/llama_cpp_peer.sh`` produces it). llama-bench prints no tokens, so its rows are marked not checked.
"""

from __future__ import annotations

import gc
import importlib
import importlib.util
import inspect
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from .results import llama_cpp_rows, quantiles, read_llama_bench_json  # noqa: F401 (re-exported)

# Tolerances for the teacher-forced logits check (relative error max|err| / max|ref|).
TOL_BF16 = 5e-2  # bf16 vs bf16 (kept for callers; the bench checks in fp32, see the module docstring)
TOL_FP32 = 1e-3  # fp32 compute on bf16 weights vs the same in the reference (as tests/gpu uses)
# transformers' fp32 twin when its DeltaNet layers run flash-linear-attention's Triton kernels on the GPU: their
# fp32 products are TF32 (10-bit mantissas; measured 3.1e-3 against the reference on 2026-11-27), so the twin is held
# to this instead, with the same rule for the greedy tokens
TOL_FP32_TF32 = 1e-2
# bf16 prefill (bf16 products, fp32 states) vs the reference computing in fp32: bf16 rounding of every product's
# input and output through 24 layers; measured 3-6e-2 at the real shapes (tests/test_prefill.py explains)
TOL_PREFILL_BF16 = 1e-1
# States after a bf16 prefill, per element against its head's largest value: bf16 activations (2^-8 relative)
# through 24 layers accumulate into the DeltaNet state over every prompt token; on the H200 (2026-11-26) the worst
# element was 0.114 of its head's max (1 of 262,144, layer 22, 4,096 tokens) while the logits stayed within 0.04
# and the greedy tokens identical. A real bug (a missed decay, a wrong head) is O(1).
TOL_PREFILL_BF16_STATE = 0.15
ORACLE_PIECE = 4096  # the reference prefills longer prompts in pieces of this many tokens (T x T scores)

from megakernel.persistent.decoder import VERSIONS as PERSISTENT_VERSIONS  # noqa: E402

PERSISTENT_NAMES = tuple(n for v in sorted(PERSISTENT_VERSIONS) for n in (f"persistent-v{v}", f"persistent-v{v}-step"))
SYSTEM_NAMES = (
    "llama.cpp", *PERSISTENT_NAMES, "layered", "layered-graph", "reference-graph", "reference-compile",
    "reference-eager", "hf-loop-sdpa", "hf-loop-eager", "hf-generate-sdpa", "hf-generate-eager",
)
DESCRIPTIONS = {
    "hf-generate-eager": "transformers Qwen3_5ForCausalLM bf16, generate(), eager attention",
    "hf-generate-sdpa": "transformers Qwen3_5ForCausalLM bf16, generate(), SDPA attention",
    "hf-loop-eager": "transformers bf16, a plain cached forward loop (argmax on the device), eager attention",
    "hf-loop-sdpa": "transformers bf16, a plain cached forward loop (argmax on the device), SDPA attention",
    "reference-eager": "reference/ (pure PyTorch) bf16, decode_step loop",
    "reference-graph": "reference/static_decode.py bf16: static-shape step captured in one CUDA graph",
    "reference-compile": "reference/static_decode.py bf16 under torch.compile(mode='reduce-overhead')",
    "llama.cpp": "llama.cpp llama-bench, bf16 GGUF (tools/llama_cpp_peer.sh)",
    "layered": "megakernel/layered.py: one Numba CUDA kernel per op",
    "layered-graph": "the layered decoder in its CUDA-graph mode",
}
for _v in PERSISTENT_VERSIONS:
    DESCRIPTIONS[f"persistent-v{_v}"] = (f"megakernel/persistent/ version {_v}: one persistent kernel launch "
                                         "decodes all the tokens")
    DESCRIPTIONS[f"persistent-v{_v}-step"] = f"megakernel/persistent/ version {_v}: one launch per token"
GRAPH_API = ("capture_graph", "graph_prefill", "graph_replay", "graph_greedy_tokens")  # a kernel stage's graph mode


class Unavailable(Exception):
    """The system cannot run on this machine / in this checkout (the message says why)."""


def sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize()


def free_memory() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def module_status(name: str) -> str:
    """'<version>' if ``import name`` works, else 'not available (<error>)'."""
    try:
        mod = importlib.import_module(name)
    except Exception as e:  # noqa: BLE001 (any import failure is the answer)
        return f"not available ({type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''})"
    return str(getattr(mod, "__version__", "installed"))


def short_error(e: BaseException, limit: int = 400) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ------------------------------------------------------------------------------------------------ checking
@dataclass
class Oracle:
    name: str
    tokens: list[int]
    logits: list[torch.Tensor]  # fp32 on the CPU: logits[i] produced tokens[i]
    tol: float


@dataclass
class CheckOutcome:
    passed: bool
    detail: str
    tokens_agree: int = 0
    worst_rel: float | None = None


def make_oracle(name: str, model, prompt: list[int], n: int, tol: float) -> Oracle:
    """Greedy decoding with a reference-like model (prefill / decode_step), keeping every step's logits."""
    with torch.no_grad():
        logits, state = model.prefill(prompt, last_only=True)
        out = [logits[-1].float().cpu()]
        tokens = [int(torch.argmax(out[0]))]
        for _ in range(n - 1):
            step = model.decode_step(tokens[-1], state).float().cpu()
            out.append(step)
            tokens.append(int(torch.argmax(step)))
    return Oracle(name, tokens, out, tol)


def check_system(system: "System", oracle: Oracle, prompt: list[int]) -> CheckOutcome:
    """See the module docstring. Never raises for a numerical disagreement (returns passed=False)."""
    from reference.check import CheckFailed, check

    n = len(oracle.tokens)
    tokens = [int(t) for t in system.greedy(prompt, n)]
    agree = next((i for i, (a, b) in enumerate(zip(tokens, oracle.tokens)) if a != b), min(len(tokens), n))
    forced = system.teacher_forced(prompt, oracle.tokens)
    if forced is None:
        if tokens == oracle.tokens:
            return CheckOutcome(True, f"greedy tokens {n}/{n} identical to {oracle.name}", n)
        return CheckOutcome(False, f"greedy tokens differ from {oracle.name} at step {agree} (system "
                                   f"{tokens[agree] if agree < len(tokens) else 'none'} vs {oracle.tokens[agree]}); "
                                   "no logits API to tell a near tie from a bug", agree)
    worst, errs = 0.0, []
    for i, (ref, out) in enumerate(zip(oracle.logits, forced)):
        try:
            r = check(f"step {i} logits", ref, out.float().cpu(), oracle.tol, verbose=False)
        except CheckFailed as e:
            return CheckOutcome(False, f"teacher-forced logits vs {oracle.name}: {e}", agree)
        worst = max(worst, r.rel)
        errs.append(r.max_abs)
    logits_note = f"teacher-forced logits rel err {worst:.1e} <= {oracle.tol:.0e} over {n} steps"
    if tokens == oracle.tokens:
        return CheckOutcome(True, f"greedy tokens {n}/{n} identical to {oracle.name}; {logits_note}", n, worst)
    if agree >= len(tokens):
        if tokens and tokens[-1] in getattr(system, "stop_tokens", ()):  # generate() stopped at EOS, as it should
            return CheckOutcome(True, f"greedy tokens identical to {oracle.name} until it stopped at EOS after "
                                      f"{len(tokens)} tokens; {logits_note}", agree, worst)
        return CheckOutcome(False, f"greedy path returned {len(tokens)} tokens, expected {n}", agree, worst)
    k, mine, theirs = agree, tokens[agree], oracle.tokens[agree]
    ref_k = oracle.logits[k]
    gap = float(ref_k[theirs] - ref_k[mine])
    consistent = int(torch.argmax(forced[k].float())) == mine
    if consistent and gap <= 2 * errs[k]:
        return CheckOutcome(True, f"greedy tokens {k}/{n} identical to {oracle.name}, then a near tie (oracle logit "
                                  f"gap {gap:.2e} <= 2 x logit error {errs[k]:.2e}); {logits_note}", k, worst)
    why = ("its greedy path disagrees with its own logits" if not consistent else
           f"oracle logit gap {gap:.2e} > 2 x logit error {errs[k]:.2e}")
    return CheckOutcome(False, f"greedy tokens differ from {oracle.name} at step {k} ({mine} vs {theirs}) and it is "
                               f"not a near tie: {why}", k, worst)


# ------------------------------------------------------------------------------------------------ launches
def count_gpu_ops(fn) -> tuple[int, int] | None:
    """(kernels, memcpy/memset ops) the CUDA profiler sees while ``fn()`` runs; None if it cannot tell."""
    if not torch.cuda.is_available():
        return None
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    kernels = mem = 0
    for e in prof.events():
        if getattr(e, "device_type", None) != DeviceType.CUDA:
            continue
        name = e.name.lower()
        if name.startswith(("memcpy", "memset")):
            mem += 1
        else:
            kernels += 1
    return None if kernels == 0 else (kernels, mem)


# ------------------------------------------------------------------------------------------------ systems
@dataclass
class BenchContext:
    """What every system needs: the checkpoint, the device, the largest context it will see."""

    path: Path
    device: torch.device
    max_context: int  # largest prefill + decode steps any workload uses
    check_prompt: list = field(default_factory=lambda: list(range(1000, 1016)))
    check_steps: int = 16
    llama_json: Path | None = None
    oracles: dict = field(default_factory=dict)  # name -> Oracle (computed once, on the CPU)
    prefill_checks: dict = field(default_factory=dict)  # (stage, tokens) -> PrefillCheck (shared by its systems)


class System:
    name: str = ""
    oracle_name: str | None = None  # None: no check possible ("checked" is then False with a reason)
    has_prefill = True
    notes: list

    def __init__(self, name: str, ctx: BenchContext):
        self.name, self.ctx, self.device = name, ctx, ctx.device
        self.notes = []
        self.launches: int | None = None
        self.kernels: int | None = None
        self.launches_note = "unknown"

    def load(self) -> None:
        """Load / build; raise Unavailable with the reason if it cannot run here."""

    def oracle(self) -> Oracle | None:
        return None

    def check_target(self) -> "System":
        """What the check runs: the system itself, or a loaded fp32 twin (closed by the caller after the check)."""
        return self

    def greedy(self, prompt, n) -> list[int]:
        raise NotImplementedError

    def teacher_forced(self, prompt, tokens) -> list[torch.Tensor] | None:
        return None

    def decode(self, ids, gen) -> tuple[float, int]:
        raise NotImplementedError

    def prefill(self, ids) -> float | None:
        return None

    def prefill_lengths(self, lengths: list[int]) -> list[int]:
        """Which of the benchmark's prefill lengths this system times (default: the shortest)."""
        return sorted(lengths)[:1]

    def check_prefill(self, ids) -> "PrefillCheck | None":
        """A check of the prefill of ``ids`` itself, before it is timed (None: the decode check covers it)."""
        return None

    def prefill_note(self) -> str:
        """How the last timed prefill ran (for the row's note), or ''."""
        return ""

    def count_launches(self) -> None:
        """Fill launches / kernels / launches_note (best effort)."""

    def close(self) -> None:
        pass


class DecoderSystem(System):
    """Anything with the reference API: prefill(ids, last_only=True) -> (logits, state), decode_step(t, state)."""

    model = None

    def greedy(self, prompt, n):
        if hasattr(self.model, "greedy_tokens"):
            return list(self.model.greedy_tokens(prompt, n))
        logits, state = self.model.prefill(prompt, last_only=True)
        out = [int(torch.argmax(logits[-1]))]
        while len(out) < n:
            out.append(int(torch.argmax(self.model.decode_step(out[-1], state))))
        return out

    def teacher_forced(self, prompt, tokens):
        logits, state = self.model.prefill(prompt, last_only=True)
        out = [logits[-1].float().cpu()]
        for t in tokens[:-1]:
            out.append(self.model.decode_step(t, state).float().cpu())
        return out

    def decode(self, ids, gen):
        model = self.model
        with torch.no_grad():
            logits, state = model.prefill(ids, last_only=True)
            token = int(torch.argmax(logits[-1]))
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(gen):
                token = int(torch.argmax(model.decode_step(token, state)))
            sync(self.device)
            return time.perf_counter() - t0, gen

    def prefill(self, ids):
        with torch.no_grad():
            sync(self.device)
            t0 = time.perf_counter()
            self.model.prefill(ids, last_only=True)
            sync(self.device)
            return time.perf_counter() - t0

    def _profile_step(self):
        logits, state = self.model.prefill([1, 2, 3, 4], last_only=True)
        token = int(torch.argmax(logits[-1]))
        self.model.decode_step(token, state)  # warm
        return count_gpu_ops(lambda: self.model.decode_step(token, state))

    def close(self):
        self.model = None
        free_memory()


def _reference_oracle(ctx: BenchContext, name: str, loader, tol: float) -> Oracle:
    if name not in ctx.oracles:
        model = loader()
        ctx.oracles[name] = make_oracle(name, model, ctx.check_prompt, ctx.check_steps, tol)
        del model
        free_memory()
    return ctx.oracles[name]


def _load_reference_bf16(ctx: BenchContext, keep_fp32: bool = True, dtype: torch.dtype = torch.bfloat16):
    from reference import load_model

    return load_model(ctx.path, device=ctx.device, dtype=dtype, keep_fp32=keep_fp32)


def _fp32_oracle(ctx: BenchContext) -> Oracle:
    """The reference in fp32 (what transformers computes bit for bit in fp32), for checking fp32 twins."""
    return _reference_oracle(ctx, "reference fp32", lambda: _load_reference_bf16(ctx, dtype=torch.float32), TOL_FP32)


class ReferenceEager(DecoderSystem):
    oracle_name = None  # it is the oracle

    def load(self):
        self.model = _load_reference_bf16(self.ctx)
        self.notes.append("the oracle for reference-graph / reference-compile (itself checked against "
                          "transformers by tests/test_vs_transformers.py)")

    def count_launches(self):
        ops = self._profile_step()
        if ops:
            self.launches, self.kernels = ops[0] + ops[1], ops[0]
            self.launches_note = f"{ops[0]} kernels + {ops[1]} copies (torch.profiler, one decode_step)"


class ReferenceStatic(System):
    """reference/static_decode.py: one StaticDecoder per capacity, captured in a CUDA graph or compiled."""

    oracle_name = "reference fp32"
    has_prefill = False

    def __init__(self, name, ctx, mode: str, dtype: torch.dtype = torch.bfloat16):
        super().__init__(name, ctx)
        self.mode = mode  # "graph" or "compile"
        self.dtype = dtype
        self.model = None
        self.decoders: dict[int, object] = {}

    def check_target(self):
        twin = ReferenceStatic(self.name, self.ctx, self.mode, dtype=torch.float32)
        twin.load()
        return twin

    def load(self):
        if self.device.type != "cuda":
            raise Unavailable("needs a CUDA GPU (CUDA graphs)")
        self.model = _load_reference_bf16(self.ctx, dtype=self.dtype)
        self.notes.append("prefill: the reference's (not timed here; see reference-eager)")
        if self.mode == "compile":
            self.notes.append(f"one decoder of capacity {self.ctx.max_context} for every context (one compile): "
                              "attention reads the whole capacity")
            self._decoder(self.ctx.max_context)

    def oracle(self):
        return _fp32_oracle(self.ctx)

    def _decoder(self, capacity: int):
        from reference.static_decode import StaticDecoder

        if self.mode == "compile":
            capacity = self.ctx.max_context
        if capacity not in self.decoders:
            dec = StaticDecoder(self.model, capacity)
            if self.mode == "graph":
                dec.capture_cuda_graph()
            else:
                dec = self._compile(dec, capacity)
            self.decoders[capacity] = dec
        return self.decoders[capacity]

    def _compile(self, dec, capacity: int):
        """torch.compile(mode='reduce-overhead') with fullgraph=True; if that fails, record why and retry with
        graph breaks allowed (fullgraph=False). Errors of the second attempt propagate."""
        from reference.static_decode import StaticDecoder

        t0 = time.perf_counter()
        how = "fullgraph=True"
        try:
            dec.compile(mode="reduce-overhead", fullgraph=True)
        except Exception as e:  # noqa: BLE001 (recorded, then the fallback)
            self.notes.append(f"torch.compile(mode='reduce-overhead', fullgraph=True) failed: {short_error(e, 300)}")
            torch._dynamo.reset()
            dec, how = StaticDecoder(self.model, capacity), "fullgraph=False"
            dec.compile(mode="reduce-overhead", fullgraph=False)
        self.notes.append(f"torch.compile(mode='reduce-overhead', {how}) compiled and warmed up in "
                          f"{time.perf_counter() - t0:.0f} s")
        try:
            from torch._dynamo.utils import counters

            skips = sum(counters["inductor"].get(k, 0) for k in ("cudagraph_skips",))
            if skips:
                self.notes.append(f"Inductor skipped CUDA graphs {skips} time(s) (see TORCH_LOGS=perf_hints): those "
                                  "steps run its kernels without a graph")
        except Exception:  # noqa: BLE001 (informational)
            pass
        return dec

    def greedy(self, prompt, n):
        return self._decoder(len(prompt) + n).greedy_tokens(prompt, n)

    def teacher_forced(self, prompt, tokens):
        dec = self._decoder(len(prompt) + len(tokens))
        logits, state = dec.prefill(prompt)
        out = [logits[-1].float().cpu()]
        for t in tokens[:-1]:
            out.append(dec.decode_step(t, state).float().cpu())
        return out

    def decode(self, ids, gen):
        dec = self._decoder(len(ids) + gen)
        dec.prefill(ids)
        sync(self.device)
        t0 = time.perf_counter()
        dec.advance(gen)
        sync(self.device)
        return time.perf_counter() - t0, gen

    def count_launches(self):
        from reference.static_decode import StaticDecoder

        dec = StaticDecoder(self.model, 64)
        dec.prefill([1, 2, 3, 4])
        dec._step()  # eager: the kernels one replay runs
        ops = count_gpu_ops(dec._step)
        if self.mode == "graph":
            self.launches = 1
            self.kernels = ops[0] + ops[1] if ops else None
            self.launches_note = (f"1 CUDA graph launch ({ops[0]} kernels + {ops[1]} copies inside)" if ops
                                  else "1 CUDA graph launch")
        elif ops:
            self.launches_note = (f"CUDA graph(s) of Inductor kernels (the eager step has {ops[0]} kernels + "
                                  f"{ops[1]} copies)")

    def close(self):
        self.decoders.clear()
        self.model = None
        if self.mode == "compile":
            try:
                torch._dynamo.reset()
            except Exception:  # noqa: BLE001
                pass
        free_memory()


class _HFDecoderAPI:
    """A transformers model behind prefill / decode_step (for the checks)."""

    def __init__(self, hf, device):
        self.hf, self.device = hf, device
        params = inspect.signature(hf.forward).parameters
        self.logits_to_keep = "logits_to_keep" in params

    def forward(self, ids: torch.Tensor, cache=None):
        kw = {"use_cache": True}
        if cache is not None:
            kw["past_key_values"] = cache
        if self.logits_to_keep:
            kw["logits_to_keep"] = 1
        out = self.hf(input_ids=ids, **kw)
        return out.logits[:, -1], out.past_key_values

    def prefill(self, prompt, last_only=True):
        ids = torch.as_tensor(prompt, device=self.device).view(1, -1)
        logits, cache = self.forward(ids)
        return logits.float(), {"cache": cache}

    def decode_step(self, token, state):
        logits, state["cache"] = self.forward(torch.tensor([[int(token)]], device=self.device), state["cache"])
        return logits[0].float()


class HFSystem(System):
    oracle_name = "reference fp32"

    def __init__(self, name, ctx, attn: str, generate: bool, dtype: torch.dtype = torch.bfloat16):
        super().__init__(name, ctx)
        self.attn, self.use_generate = attn, generate
        self.dtype = dtype
        self.hf = None
        self.has_prefill = not generate

    def check_target(self):
        twin = HFSystem(self.name, self.ctx, self.attn, self.use_generate, dtype=torch.float32)
        twin.load()
        return twin

    def load(self):
        try:
            importlib.import_module("transformers")
        except Exception as e:  # noqa: BLE001
            raise Unavailable(f"transformers cannot be imported: {short_error(e)}") from e
        from reference.hf_compare import load_transformers_model

        self.notes.append(f"flash-linear-attention (fla): {module_status('fla')}; causal_conv1d: "
                          f"{module_status('causal_conv1d')} (when not available, transformers runs its torch "
                          "fallback for the DeltaNet layers)")
        try:
            self.hf = load_transformers_model(self.ctx.path, dtype=self.dtype, attn_implementation=self.attn,
                                              device=self.device)
        except (ImportError, ValueError) as e:
            raise Unavailable(f"transformers cannot load the model with attn_implementation={self.attn!r}: "
                              f"{short_error(e)}") from e
        self.api = _HFDecoderAPI(self.hf, self.device)
        if self.use_generate:
            self.notes.append("tg: generate(max_new_tokens=N, min_new_tokens=N, do_sample=False), timed from the "
                              "end of its prefill forward to its return: N-1 decode forwards")

    @property
    def fla_kernels(self) -> bool:
        """Whether transformers runs flash-linear-attention's Triton kernels here (fla importable, on a GPU)."""
        return self.device.type == "cuda" and importlib.util.find_spec("fla") is not None

    def oracle(self):
        oracle = _fp32_oracle(self.ctx)
        if self.fla_kernels:
            return replace(oracle, tol=TOL_FP32_TF32, name=f"{oracle.name} (flash-linear-attention's "
                                       f"Triton kernels compute in TF32: tolerance {TOL_FP32_TF32:.0e})")
        return oracle

    def _ids(self, ids):
        return torch.as_tensor(ids, device=self.device).view(1, -1)

    @property
    def stop_tokens(self) -> tuple:
        eos = self.hf.generation_config.eos_token_id if self.hf is not None else None
        return tuple(eos) if isinstance(eos, (list, tuple)) else (eos,) if eos is not None else ()

    def _generate(self, ids, n, logits_processor=None, force_length=True):
        """generate() greedy; force_length (min_new_tokens=n, as the benchmark times it) suppresses EOS, so the
        check calls it without, like the oracle's plain argmax."""
        from transformers import LogitsProcessorList

        x = self._ids(ids)
        pad = self.stop_tokens[0] if self.stop_tokens else None
        kw = dict(attention_mask=torch.ones_like(x), max_new_tokens=n, do_sample=False)
        if force_length:
            kw["min_new_tokens"] = n
        if pad is not None:
            kw["pad_token_id"] = pad
        if logits_processor is not None:
            kw["logits_processor"] = LogitsProcessorList([logits_processor])
        with torch.no_grad():
            out = self.hf.generate(x, **kw)
        return out[0, x.shape[1]:].tolist()

    def greedy(self, prompt, n):
        if self.use_generate:
            return self._generate(prompt, n, force_length=False)
        with torch.no_grad():
            logits, cache = self.api.forward(self._ids(prompt))
            tok = torch.argmax(logits, dim=-1, keepdim=True)
            out = [tok]
            for _ in range(n - 1):
                logits, cache = self.api.forward(tok, cache)
                tok = torch.argmax(logits, dim=-1, keepdim=True)
                out.append(tok)
        return [int(t) for t in torch.cat(out, dim=1)[0].tolist()]

    def teacher_forced(self, prompt, tokens):
        with torch.no_grad():
            logits, state = self.api.prefill(prompt)
            out = [logits[-1].float().cpu()]
            for t in tokens[:-1]:
                out.append(self.api.decode_step(t, state).float().cpu())
        return out

    def decode(self, ids, gen):
        if self.use_generate:
            timer = _PrefillTimer(self.device)
            self._generate(ids, gen, timer)
            sync(self.device)
            if timer.t0 is None:
                raise RuntimeError("generate() never called the logits processor (cannot time its decode)")
            return time.perf_counter() - timer.t0, gen - 1
        with torch.no_grad():
            logits, cache = self.api.forward(self._ids(ids))
            tok = torch.argmax(logits, dim=-1, keepdim=True)
            sync(self.device)
            t0 = time.perf_counter()
            for _ in range(gen):
                logits, cache = self.api.forward(tok, cache)
                tok = torch.argmax(logits, dim=-1, keepdim=True)
            sync(self.device)
            return time.perf_counter() - t0, gen

    def prefill(self, ids):
        if self.use_generate:
            return None
        with torch.no_grad():
            x = self._ids(ids)
            sync(self.device)
            t0 = time.perf_counter()
            self.api.forward(x)
            sync(self.device)
            return time.perf_counter() - t0

    def count_launches(self):
        with torch.no_grad():
            logits, cache = self.api.forward(self._ids([1, 2, 3, 4]))
            tok = torch.argmax(logits, dim=-1, keepdim=True)
            logits, cache = self.api.forward(tok, cache)
            ops = count_gpu_ops(lambda: self.api.forward(tok, cache))
        if ops:
            self.launches, self.kernels = ops[0] + ops[1], ops[0]
            self.launches_note = (f"{ops[0]} kernels + {ops[1]} copies (torch.profiler, one decode forward"
                                  + ("; generate() adds its logits processing" if self.use_generate else "") + ")")

    def close(self):
        self.hf = self.api = None
        free_memory()


class _PrefillTimer:
    """A logits processor that notes the time of its first call (right after generate()'s prefill forward)."""

    def __init__(self, device):
        self.device, self.t0 = device, None

    def __call__(self, input_ids, scores):
        if self.t0 is None:
            sync(self.device)
            self.t0 = time.perf_counter()
        return scores


class KernelStage(DecoderSystem):
    """The Numba kernel decoders: layered, layered-graph, megakernel (their own greedy path and decode_step)."""

    oracle_name = "reference fp32 compute, bf16 weights/KV"

    def __init__(self, name, ctx, stage: str, graph: bool = False, version: int | None = None,
                 step_mode: bool = False, options: dict | None = None):
        super().__init__(name, ctx)
        self.stage, self.graph, self.version, self.step_mode = stage, graph, version, step_mode
        self.options = options or {}
        self._oracle_model = None

    def load(self):
        if self.device.type != "cuda":
            raise Unavailable("needs a CUDA GPU")
        try:
            import megakernel
        except Exception as e:  # noqa: BLE001 (numba missing, ...)
            raise Unavailable(f"megakernel cannot be imported: {short_error(e)}") from e
        kwargs = {"version": self.version, "options": self.options} if self.stage == "persistent" else {}
        try:
            self.model = megakernel.load(self.ctx.path, self.stage, max_context=self.ctx.max_context, **kwargs)
        except Exception as e:  # noqa: BLE001
            from ..launch import NoGPUError

            if isinstance(e, NoGPUError):
                raise Unavailable(short_error(e)) from e
            raise
        if self.stage == "persistent":
            self.model.kernel()  # compile and size the grid up front
            build = self.name.removeprefix("persistent-").removesuffix("-step")  # v12, or v12+prod+preg=40
            self.notes.append(f"persistent kernel {build}: {self.model.blocks} blocks x "
                              f"{self.model.plan.threads} threads, {self.model.barriers_per_step()} grid barriers "
                              "per token")
            if self.step_mode:
                self.notes.append("tg: one launch per token, each continuing from the token the last one left on "
                                  "the device (no host work between launches but the launch)")
            else:
                self.notes.append("tg: all N tokens in one launch (the kernel loops; tokens read once at the end)")
        if self.graph:
            missing = [m for m in GRAPH_API if not hasattr(self.model, m)]
            if missing:
                raise Unavailable(f"the {self.stage} decoder has no CUDA-graph mode (no {', '.join(missing)})")
            self.model.capture_graph()  # once, up front: the check and the timing replay the same graph
            self.notes.append("greedy decoding replays one captured CUDA graph per step (graph_greedy_tokens); the "
                              "logits check feeds tokens through the same kernels eagerly (decode_step)")
        elif self.stage != "persistent":
            self.notes.append("tg: decode_step loop (logits copied, argmax read by the host each step)")
        self.prefill_modes = hasattr(self.model, "prefiller") and hasattr(self.model, "prefill_mode")
        if self.prefill_modes:
            prefiller = self.model.prefiller("bf16")
            self.notes.append(f"prefill: megakernel.prefill (bf16 products on tensor cores, fp32 states, written into "
                              f"the kernel layout; {prefiller.backend_note}; pieces of {prefiller.piece_tokens} "
                              f"tokens; repeated prompts of <= {min(prefiller.piece_tokens, _graph_max_tokens())} "
                              "tokens replay a CUDA graph); the decode check starts from the reference's prefill")
        else:
            self.notes.append(f"prefill: the {self.stage} stage's own (no prefill modes: the shortest pp only)")
        self._oracle_model = getattr(self.model, "reference", None)
        self._prefill_states: dict = {}
        self._warm: set = set()

    def oracle(self):
        def loader():
            if self._oracle_model is not None:
                return self._oracle_model
            import megakernel

            return megakernel.load(self.ctx.path, "reference")

        return _reference_oracle(self.ctx, self.oracle_name, loader, TOL_FP32)

    @contextmanager
    def _reference_prefill(self):
        """The decode check starts from the oracle's own prefill state, so it measures the decode kernels alone
        (the prefill has its own check, check_prefill)."""
        if not self.prefill_modes:
            yield
            return
        mode = self.model.prefill_mode
        self.model.prefill_mode = "reference"
        try:
            yield
        finally:
            self.model.prefill_mode = mode

    def greedy(self, prompt, n):
        with self._reference_prefill():
            if self.graph:
                return [int(t) for t in self.model.graph_greedy_tokens(prompt, n)]
            if self.stage == "persistent" and self.step_mode:
                logits, state = self.model.prefill(prompt, last_only=True)
                out = [int(logits[-1].argmax())]
                if n > 1:
                    out += self.model.run(state, out[0], 1)
                if n > 2:
                    self.model.relaunch(n - 2)
                    out += self.model.finish()
                return out
            return super().greedy(prompt, n)

    def teacher_forced(self, prompt, tokens):
        with self._reference_prefill():
            return super().teacher_forced(prompt, tokens)

    # ---- prefill rows
    def prefill_lengths(self, lengths):
        return sorted(lengths) if self.prefill_modes else super().prefill_lengths(lengths)

    def _state(self, tokens: int):
        from ..layout import DeviceState

        if tokens not in self._prefill_states:
            self._prefill_states.clear()  # one length at a time (a 32k-token KV cache is 0.4 GB)
            self._prefill_states[tokens] = DeviceState(self.model.config, self.device, tokens)
        return self._prefill_states[tokens]

    def prefill(self, ids):
        """The time of ``prefill(ids, last_only=True)`` into a state of that capacity (allocated once per length,
        as a server keeps its cache). A length seen for the first time is prefilled once untimed first (the
        first run compiles and autotunes; the next captures a CUDA graph where one applies)."""
        state = self._state(len(ids))
        with torch.no_grad():
            if len(ids) not in self._warm:
                self.model.prefill(ids, state=state, last_only=True)
                self._warm.add(len(ids))
            sync(self.device)
            t0 = time.perf_counter()
            self.model.prefill(ids, state=state, last_only=True)
            sync(self.device)
            return time.perf_counter() - t0

    def prefill_note(self):
        if not self.prefill_modes:
            return ""
        p = self.model.prefiller("bf16")
        return f"timed prefill: {p.last_run}; {p.backend_note}" + (f"; {p.graph_note}" if p.graph_note else "")

    def check_prefill(self, ids):
        if not self.prefill_modes:
            return None
        key = (self.stage, len(ids))
        if key not in self.ctx.prefill_checks:
            self.ctx.prefill_checks[key] = check_prefill(self.model, self.oracle_model(), ids,
                                                         greedy_steps=self.ctx.check_steps
                                                         if len(ids) <= 512 else 0)
        return self.ctx.prefill_checks[key]

    def oracle_model(self):
        if self._oracle_model is None:
            from ..layered import load

            self._oracle_model = load(self.ctx.path, "reference")
        return self._oracle_model

    def decode(self, ids, gen):
        if self.stage == "persistent":
            with torch.no_grad():
                logits, state = self.model.prefill(ids, last_only=True)
                token = int(torch.argmax(logits[-1]))
                if self.step_mode:  # the first launch sets the control block up (untimed)
                    self.model.run(state, token, 1)
                    gen -= 1
                    sync(self.device)
                    t0 = time.perf_counter()
                    self.model.relaunch(gen)
                    self.model.finish()
                else:
                    sync(self.device)
                    t0 = time.perf_counter()
                    self.model.run(state, token, gen)  # one launch; finish() reads the tokens (a sync)
                sync(self.device)
                return time.perf_counter() - t0, gen
        if not self.graph:
            return super().decode(ids, gen)
        with torch.no_grad():
            self.model.graph_prefill(ids)
            sync(self.device)
            t0 = time.perf_counter()
            self.model.graph_replay(gen)  # the clock is around the replays only
            sync(self.device)
            return time.perf_counter() - t0, gen

    def count_launches(self):
        fn = getattr(self.model, "launches_per_token", None)
        if self.stage == "persistent":
            self.launches, self.kernels = (1, 1) if self.step_mode else (None, 1)
            self.launches_note = ("persistent: 1 kernel" if self.step_mode else
                                  "persistent: 1 kernel per 128 tokens")
            return
        if callable(fn) and self.graph:
            self.launches, self.kernels = 1, int(fn())
            self.launches_note = f"1 CUDA graph launch ({self.kernels} kernels inside, the decoder's own count)"
            return
        if callable(fn):
            self.launches = int(fn())
            self.launches_note = f"{self.launches} (the decoder's own count)"
        try:
            ops = self._profile_step()
        except Exception:  # noqa: BLE001 (the profiler is a cross-check only)
            ops = None
        if ops:
            self.kernels = ops[0]
            self.launches_note += f"; torch.profiler saw {ops[0]} kernels + {ops[1]} copies per decode_step"

    def close(self):
        self._oracle_model = None
        self._prefill_states = {}
        super().close()


def _graph_max_tokens() -> int:
    from ..prefill import GRAPH_MAX_TOKENS

    return GRAPH_MAX_TOKENS


# ------------------------------------------------------------------------------------------------ prefill checks
@dataclass
class PrefillCheck:
    passed: bool
    detail: str
    short: str


def reference_prefill(model, ids: list[int], all_logits: bool):
    """The reference's prefill of ``ids``, in pieces of ORACLE_PIECE tokens (each continuing the state).
    Returns (logits [T, V] or [1, V], DecodeState)."""
    logits, state = model.prefill(ids[:ORACLE_PIECE], last_only=not all_logits)
    outs = [logits]
    for p0 in range(ORACLE_PIECE, len(ids), ORACLE_PIECE):
        logits, state = model.prefill(ids[p0 : p0 + ORACLE_PIECE], state=state, last_only=not all_logits)
        outs.append(logits)
    return (torch.cat(outs) if all_logits else outs[-1]), state


class DecodeAfterPrefill:
    """greedy / teacher_forced (for check_system) of a kernel stage prefilling in ``mode`` then decoding."""

    def __init__(self, model, mode: str):
        self.model, self.mode = model, mode

    def _start(self, prompt, n):
        from ..layout import DeviceState

        state = DeviceState(self.model.config, self.model.device, len(prompt) + n)
        logits, state = self.model.prefill(prompt, state=state, last_only=True, mode=self.mode)
        return logits[-1], state

    def greedy(self, prompt, n):
        with torch.no_grad():
            logits, state = self._start(prompt, n)
            out = [int(torch.argmax(logits))]
            while len(out) < n:
                out.append(int(torch.argmax(self.model.decode_step(out[-1], state))))
        return out

    def teacher_forced(self, prompt, tokens):
        with torch.no_grad():
            logits, state = self._start(prompt, len(tokens))
            out = [logits.float().cpu()]
            for t in tokens[:-1]:
                out.append(self.model.decode_step(t, state).float().cpu())
        return out


def check_prefill(model, oracle_model, ids: list[int], greedy_steps: int = 0) -> PrefillCheck:
    """Check a kernel stage's prefill of ``ids`` against the reference (fp32 compute, bf16 weights and KV):

    * its fp32 twin (``mode="fp32"``, the same code) at TOL_FP32: logits (every position up to 512 tokens, the
      last beyond) and every state (conv, DeltaNet, KV cache at bf16_storage_tol);
    * the timed bf16 run (``mode="bf16"``) the same way at TOL_PREFILL_BF16;
    * with ``greedy_steps``: greedy decoding from the bf16 state against greedy decoding from the reference's
      (identical tokens, or a first difference at a near tie; teacher-forced logits within TOL_PREFILL_BF16).
    Never raises for a numerical disagreement."""
    from reference.check import CheckFailed, bf16_storage_tol, check
    from reference.hf_compare import compare_states

    from ..layout import DeviceState

    T = len(ids)
    all_logits = T <= 512
    where = "every position" if all_logits else "the last position"
    with torch.no_grad():
        ref_logits, ref_state = reference_prefill(oracle_model, ids, all_logits)
        parts, shorts = [], []
        for mode, tol, state_tol in (("fp32", TOL_FP32, TOL_FP32),
                                     ("bf16", TOL_PREFILL_BF16, TOL_PREFILL_BF16_STATE)):
            state = DeviceState(model.config, model.device, T)
            logits, state = model.prefill(ids, state=state, last_only=not all_logits, mode=mode)
            try:
                lg = check(f"{mode} prefill logits", ref_logits, logits, tol, verbose=False).rel
                results = compare_states(ref_state, state.to_reference(), state_tol, prefix=f"{mode} ")
            except CheckFailed as e:
                return PrefillCheck(False, f"prefill of {T} tokens vs the reference: {e}", f"prefill {mode} FAILED")
            del state, logits
            st = max([r.rel for r in results if "cache" not in r.name] or [0.0])  # conv and DeltaNet (fp32)
            kv = max([r.rel for r in results if "cache" in r.name] or [0.0])
            parts.append(f"{'fp32 twin' if mode == 'fp32' else 'bf16'}: logits ({where}) {lg:.1e} (tol {tol:.0e}), "
                         f"conv/DeltaNet states {st:.1e} (tol {state_tol:.2g}), KV cache {kv:.1e} (tol "
                         f"{bf16_storage_tol(state_tol):.1e})")
            shorts.append(f"{mode} {max(lg, st):.0e}")
        del ref_state
        free_memory()
        detail = f"prefill of {T} tokens vs the reference (fp32 compute, bf16 weights/KV): " + "; ".join(parts)
        if greedy_steps:
            oracle = make_oracle("reference", oracle_model, ids, greedy_steps, TOL_PREFILL_BF16)
            outcome = check_system(DecodeAfterPrefill(model, "bf16"), oracle, ids)
            if not outcome.passed:
                return PrefillCheck(False, f"{detail}; decoding after the bf16 prefill: {outcome.detail}",
                                    "prefill greedy FAILED")
            detail += f"; decoding after the bf16 prefill: {outcome.detail}"
            shorts.append(f"tokens {outcome.tokens_agree}/{greedy_steps}")
    return PrefillCheck(True, detail, "prefill " + ", ".join(shorts))


class LlamaCpp(System):
    """Rows from a llama-bench JSON (no process is run here)."""

    def load(self):
        if self.ctx.llama_json is None:
            raise Unavailable("no --llama-json given (tools/llama_cpp_peer.sh writes OUT/llama_bench.json)")
        if not Path(self.ctx.llama_json).is_file():
            raise Unavailable(f"--llama-json {self.ctx.llama_json} does not exist")


def is_build_variant(name: str) -> bool:
    """``persistent-v12+prod+preg=40`` (or with ``-step``): a persistent version with build options on top, spelled
    as the profiling tools spell them (``megakernel.persistent.profile.parse_variant``)."""
    return name.startswith("persistent-v") and "+" in name


def parse_system_names(text: str) -> list[str]:
    """``--systems``: names from ``SYSTEM_NAMES`` (or ``all``) and persistent build variants, each checked."""
    import argparse

    from reference import cli

    from ..persistent.profile import parse_variant

    variants = [x.strip() for x in text.split(",") if is_build_variant(x.strip())]
    rest = ",".join(x for x in text.split(",") if x.strip() and not is_build_variant(x.strip()))
    names = cli.name_list(SYSTEM_NAMES, "system", allow_all=True)(rest) if rest else []
    for v in variants:
        try:
            parse_variant(v[len("persistent-v"):].removesuffix("-step"))
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"system {v!r}: {e}") from None
    order = [x.strip() for x in text.split(",") if x.strip()]
    return names if text.strip() == "all" else [x for x in order if x in names or x in variants]


def make_system(name: str, ctx: BenchContext) -> System:
    if name == "reference-eager":
        return ReferenceEager(name, ctx)
    if name == "reference-graph":
        return ReferenceStatic(name, ctx, "graph")
    if name == "reference-compile":
        return ReferenceStatic(name, ctx, "compile")
    if name.startswith("hf-"):
        _, how, attn = name.split("-")
        return HFSystem(name, ctx, attn, generate=how == "generate")
    if name == "layered":
        return KernelStage(name, ctx, "layered")
    if name == "layered-graph":
        return KernelStage(name, ctx, "layered", graph=True)
    if name.startswith("persistent-v"):
        rest = name[len("persistent-v"):]
        step = rest.endswith("-step")
        version = rest[: -len("-step")] if step else rest
        if version.isdigit():
            return KernelStage(name, ctx, "persistent", version=int(version), step_mode=step)
        if "+" in version:  # a build variant, spelled as the profiling tools spell it: persistent-v12+prod+preg=40
            from ..persistent.profile import parse_variant

            v, options = parse_variant(version)
            if "_nobar" in options:
                raise ValueError(f"{name!r}: a benchmark runs with its grid barriers (no +nobar)")
            return KernelStage(name, ctx, "persistent", version=v, step_mode=step, options=options)
    if name == "llama.cpp":
        return LlamaCpp(name, ctx)
    raise ValueError(f"unknown system {name!r}; choose from {', '.join(SYSTEM_NAMES)}")
