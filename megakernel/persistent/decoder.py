"""Stage 3 on the host side: ``PersistentDecoder``, the persistent megakernel behind the reference model's API.

``decode_step`` is one launch that decodes one token (and returns its logits); ``greedy_tokens`` and ``generate``
run N decode steps per launch (the kernel loops, the chosen token feeds the next step's embedding on the device,
the host reads the tokens once per launch). ``prefill`` is the layered decoder's (``megakernel.prefill``: bf16
matrix products, fp32 states written into the kernel layout; ``prefill_mode="reference"`` runs the reference
model and copies its states in).

Sampling: greedy, or temperature sampling inside the kernel by Gumbel-max with a counter-based RNG keyed by
(seed, position) (``megakernel.kernels.lm_head``): a seed gives the same tokens on every run and every stage that
uses the same keys, but not the reference's tokens (its host sampler draws from torch's generator; the
distribution is the same, which the tests check). The first token after the prompt is drawn on the host with the
same keys (``gumbel_noise_host``). Top-k / top-p are not done in the kernel (they need a sort or a threshold search
over 248k logits): ``generate`` with ``top_k`` or ``top_p`` runs one launch per token and the shared host sampler
(``reference.sampling``), exactly as the reference does, and says so in ``last_run``.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

from reference.model import Qwen35Model, as_token_id, as_token_list, generate_tokens
from reference.config import LINEAR
from reference.sampling import check_sampling_args
from reference.state import ContextTooLongError

from ..kernels import lm_head as lmh
from ..launch import SIMULATOR, allow_dynamic_shared, as_kernel_array, current_stream, halves, require_gpu
from ..layout import DeviceState, DeviceWeights, check_supported
from ..prefill.modes import PrefillModes
from . import plan as P
from . import v1, v2, v3, v4, v5, v6, v7, v8, v9, v10, v11, v12, v13, v14

VERSIONS = {1: v1, 2: v2, 3: v3, 4: v4, 5: v5, 6: v6, 7: v7, 8: v8, 9: v9, 10: v10, 11: v11, 12: v12, 13: v13,
            14: v14}
DEFAULT_VERSION = 14
DEFAULT_THREADS = 256
SIMULATOR_THREADS = 64
SIMULATOR_BLOCKS = 3
PROFILE_STEPS = 4


class GridNotCoResidentError(RuntimeError):
    """The grid asked for cannot be resident all at once (a grid barrier would hang): refused before launch."""


class PersistentDecoder(PrefillModes):
    """Qwen3.5 decode with one persistent Numba kernel launch per token (or per N tokens). Same API as
    :class:`reference.Qwen35Model`."""

    stage = "persistent"

    def __init__(self, reference: Qwen35Model, max_context: int = 4096, version: int | None = None,
                 threads: int | None = None, blocks: int | None = None, barriers: bool = True,
                 profile: bool = False, options: dict | None = None, prefill_mode: str = "bf16"):
        require_gpu("the persistent megakernel")
        check_supported(reference.config)
        version = DEFAULT_VERSION if version is None else version
        if version not in VERSIONS:
            raise ValueError(f"unknown persistent kernel version {version!r}: choose one of {sorted(VERSIONS)}")
        self.version, self.module = version, VERSIONS[version]
        self._setup_stage(reference, max_context, prefill_mode)
        c = self.config
        threads = threads or (SIMULATOR_THREADS if SIMULATOR else DEFAULT_THREADS)
        self.plan = P.make_plan(c, self.max_context, threads, blocks or 1)
        configure = getattr(self.module, "configure", None)
        if configure is not None:
            self.plan = configure(self.plan, **dict(options or {}))
        self.requested_blocks = blocks
        self.barriers = barriers
        self.profile = profile  # a kernel that records every block's arrival at / departure from each barrier
        self.options = dict(options or {})  # build variants of a version (measured in NOTES.md)
        self.weights = DeviceWeights(c, reference.weights, self.device, down_transposed=self.fuses_down,
                                     out_transposed=self.fuses_out)
        dev = self.device
        self.scratch = torch.zeros(self.plan.scratch_len, dtype=torch.float32, device=dev)
        self.ctl = torch.zeros(P.CTL_LEN, dtype=torch.int32, device=dev)
        self.best = lmh.new_best(dev)
        self.best_sample = lmh.new_best(dev)
        self.tokens = torch.zeros(self.max_context, dtype=torch.int32, device=dev)
        self.counters = torch.zeros(P.counter_slots(c)[1], dtype=torch.int32, device=dev)
        self.trace = torch.zeros(c.num_hidden_layers, c.hidden_size, dtype=torch.float32, device=dev)
        # ``fused_down``: the residual stream's fixed-point accumulator (the kernel clears it before use)
        from .v2 import hacc_words  # the accumulator, the input projection's and the residual's words

        words = hacc_words(c, self.option_value("fd_reps", 1), self.option_value("fd_stride", 1), self.fuses_out,
                           self.hands_off_inproj, self.hands_off_residual)
        self.h_acc = torch.zeros(words if self.fuses_down else 1, dtype=torch.int64, device=dev)
        off, n = self.plan.scratch["logits"]
        self.logits = self.scratch[off : off + n]
        off, n = self.plan.scratch["h"]
        self.h = self.scratch[off : off + n]
        k = as_kernel_array
        view = lambda name, shape: self.scratch[self.plan.scratch[name][0]:][: int(np.prod(shape))].view(shape)  # noqa: E731
        Hq, Dh, S = c.num_attention_heads, c.head_dim, self.plan.max_splits
        lay = self.weights.layout
        n_lin, C, K = len(c.linear_layers), c.conv_dim, c.linear_conv_kernel_dim
        conv_w = torch.as_strided(self.weights.floats, (max(n_lin, 1), C, K), (lay.conv_stride, K, 1), lay.conv_w)
        self._weights_k = [self.weights.k["words"], self.weights.k["floats"], k(conv_w)]
        self._scratch_k = [k(self.scratch), k(view("q", (Hq, Dh))), k(view("partial_ml", (Hq, S, 2))),
                           k(view("partial_o", (Hq, S, Dh)))]
        self.prof = torch.zeros(1, 2, dtype=torch.int64, device=dev)
        self._k = [k(self.ctl), k(self.best), k(self.best_sample), k(self.tokens), k(self.counters), k(self.trace),
                   k(self.prof)]
        self._kernel = None
        self._relaunched = 0
        self.blocks = None
        self.last_run: dict = {}

    # ------------------------------------------------------------------ the kernel and its grid
    def kernel(self):
        """The compiled kernel and its grid (compiled at the first call, for the argument types a launch passes,
        so the launch uses exactly this overload): every block must be resident at once, so the grid is the
        occupancy limit of the compiled kernel (or what was asked for, if smaller)."""
        if self._kernel is None:
            plan = self.plan
            kern = self.module.build(self.module.kernel_key(plan), plan, self.barriers, self.profile, **self.options)
            if SIMULATOR:
                from ..testing.simulator import MAX_SIM_THREADS

                limit = MAX_SIM_THREADS // plan.launch_threads
                want = self.requested_blocks or min(SIMULATOR_BLOCKS, limit)
            else:
                self.blocks = 1  # only the argument types matter here
                probe = DeviceState(self.config, self.device, 1)
                types = tuple(kern.typeof_pyval(a) for a in self._args(probe))
                del probe
                compiled = kern.compile(types)
                allow_dynamic_shared(compiled, plan.shared_bytes)
                limit = compiled.max_cooperative_grid_blocks(plan.launch_threads, plan.shared_bytes)
                want = self.requested_blocks or limit
                self.registers = compiled.regs_per_thread
            if limit < 1 or want > limit:
                raise GridNotCoResidentError(
                    f"grid not co-resident: {want} blocks of {plan.launch_threads} threads ({plan.shared_bytes} B of "
                    f"shared memory each) requested, but only {limit} fit on this device at once; a grid barrier would "
                    "hang, so the kernel is not launched (ask for fewer blocks or threads)")
            self.blocks = want
            self._kernel = kern
            if self.profile:
                self.set_profile_steps(PROFILE_STEPS)
        return self._kernel

    def set_profile_steps(self, steps: int) -> None:
        """Room in the profile buffer for the barriers of ``steps`` sampled steps (profiling kernels only): per
        barrier an arrival and a departure time, then (``profile.read_timeline``) the time the block waited for
        weight pages in the phase before it."""
        events = steps * (self.barriers_per_step() + 1) + 2
        self.prof = torch.zeros(self.blocks, 3 * events, dtype=torch.int64, device=self.device)
        self._k[-1] = as_kernel_array(self.prof)

    def _args(self, state: DeviceState) -> list:
        """The kernel's arguments for a state (the state's part is made once per state and grid)."""
        key = (id(state), self.blocks)
        cached = getattr(state, "_persistent_args", None)
        if cached is None or cached[0] != key:
            s = state.k
            cached = (key, [*self._weights_k, as_kernel_array(state.conv), as_kernel_array(state.rec),
                            as_kernel_array(halves(state.k_cache)), as_kernel_array(halves(state.v_cache)),
                            s["position"], *self._scratch_k])
            state._persistent_args = cached
        return cached[1] + self._k + self._extra()

    def resize_grid(self, blocks: int | None) -> int:
        """Use ``blocks`` blocks from now on (None: the occupancy limit); refused if they cannot all be resident.
        Every grid size computes the same bits (each row, item and split is done the same way by whichever block
        takes it): the GPU stress test checks that."""
        self.kernel()
        self._kernel, self.requested_blocks = None, blocks
        self.kernel()
        return self.blocks

    def launch(self, state: DeviceState, token: int | None, steps: int, eos: int = -1, sample: bool = False,
               temperature: float = 1.0, seed: int = 0, trace: bool = False) -> None:
        """One launch: ``steps`` decode steps from ``state`` (position ``state.length``), the first fed ``token``
        (None: the previous launch's last token, read on the device). Asynchronous; ``finish`` reads how many
        steps ran."""
        if steps < 1:
            raise ValueError(f"steps must be >= 1, got {steps}")
        if state.length == 0:
            raise ValueError("decoding needs a state from prefill")
        state.check_room(steps)
        if state.capacity > self.max_context:
            raise ContextTooLongError(f"a state of capacity {state.capacity} exceeds this decoder's max_context "
                                      f"{self.max_context}")
        kern = self.kernel()
        seed = int(seed) & 0xFFFFFFFFFFFFFFFF
        as_i32 = lambda u: u - (1 << 32) if u >= 1 << 31 else u  # noqa: E731
        inv_t = np.float32(1.0 / temperature if sample else 1.0).view(np.int32)
        ctl = [0] * P.CTL_LEN
        ctl[P.CTL_TOKEN], ctl[P.CTL_STEPS], ctl[P.CTL_EOS] = -1 if token is None else token, steps, eos
        ctl[P.CTL_SAMPLE], ctl[P.CTL_TRACE], ctl[P.CTL_INV_T] = int(sample), int(trace), int(inv_t)
        ctl[P.CTL_SEED_LO], ctl[P.CTL_SEED_HI] = as_i32(seed & 0xFFFFFFFF), as_i32(seed >> 32)
        # the inputs only: CTL_LAST (the token a launch with token None continues from) stays as the device has it
        self.ctl[: P.CTL_DONE].copy_(torch.tensor(ctl[: P.CTL_DONE], dtype=torch.int32))
        # the barriers' words from a clean start (a launch that died mid-barrier, in the simulator say, would
        # otherwise leave the next launch's counts off); back-to-back launches (``relaunch``) carry them over
        self.ctl[P.CTL_BAR_COUNT:P.CTL_BAR_BASE + 1].zero_()
        _, stream = current_stream()
        kern[self.blocks, self.plan.launch_threads, stream, self.plan.shared_bytes](*self._args(state))
        self._pending = (state, state.length)

    def relaunch(self, n: int) -> None:
        """``n`` more launches of one step each, every one continuing from the last token on the device, with no
        host work but the launch itself (the "one launch per token" mode of the benchmark). Call after ``run``
        (which sets the control block up) and ``finish`` afterwards; the state advances by ``n``."""
        state, _ = self._pending
        state.check_room(n)
        self._pending = (state, state.length)
        self.ctl[P.CTL_TOKEN] = -1  # continue from the device's last token
        self.ctl[P.CTL_STEPS] = 1
        self.ctl[P.CTL_EOS] = -1
        self.ctl[P.CTL_SAMPLE] = 0
        self.ctl[P.CTL_TRACE] = 0
        _, stream = current_stream()
        launch = self._kernel[self.blocks, self.plan.launch_threads, stream, self.plan.shared_bytes]
        args = self._args(state)
        for _ in range(n):
            launch(*args)
        self._relaunched = n

    def _extra(self) -> list:
        extra = getattr(self.module, "extra_args", None)
        return extra(self) if extra is not None else []

    def finish(self) -> list[int]:
        """Wait for the last launch(es); advance the state by the steps they ran; return their tokens."""
        state, start = self._pending
        ctl = self.ctl.cpu()
        done = self._relaunched or int(ctl[P.CTL_DONE])
        self._relaunched = 0
        state.length = start + done
        self.last_run = {"steps": done, "barriers": int(ctl[P.CTL_BARRIERS]), "blocks": self.blocks,
                         "threads": self.plan.launch_threads}
        return self.tokens[start : start + done].tolist()

    def barriers_per_step(self) -> int:
        """Grid barriers one greedy step costs (from the schedule; the kernel counts its own: ``last_run``)."""
        from .schedule import barriers_per_token

        return barriers_per_token(self.config, version=self.version, fold_attention=self.folds_attention,
                                  fused_down=self.fuses_down, fused_out=self.fuses_out,
                                  ll_inproj=self.hands_off_inproj, ll_residual=self.hands_off_residual)

    def option_value(self, name: str, default=None):
        """A build option as this decoder's kernel has it (passed, else the version's default)."""
        defaults = getattr(self.module, "DEFAULTS", {})
        return self.options.get(name, defaults.get(name, default))

    def _option(self, name: str) -> bool:
        return bool(self.option_value(name, False))

    @property
    def folds_attention(self) -> bool:
        """Whether the build runs attention in one phase (the ``fold_attention`` option, or a version's default)."""
        return self._option("fold_attention")

    @property
    def fuses_out(self) -> bool:
        """Whether each DeltaNet layer's out_proj runs in its DeltaNet phase (``fused_out``)."""
        return self._option("fused_out") and LINEAR in self.config.layer_types

    @property
    def hands_off_inproj(self) -> bool:
        """Whether a DeltaNet layer's items read its in_proj as flag-in-data words, with no grid barrier between
        (``ll_inproj``)."""
        return self._option("ll_inproj") and LINEAR in self.config.layer_types

    @property
    def hands_off_residual(self) -> bool:
        """Whether the residual phases hand h to the MLP as flag-in-data words, with no grid barrier between
        (``ll_residual``)."""
        return self._option("ll_residual")

    @property
    def fuses_down(self) -> bool:
        """Whether each MLP is one phase with its down projection split over the blocks (``fused_down``)."""
        return self._option("fused_down")

    # ------------------------------------------------------------------ public API (as the reference model)
    @torch.no_grad()
    def decode_step(self, token_id, state: DeviceState, trace: dict | None = None) -> torch.Tensor:
        """Feed one token at position ``state.length`` (one launch); returns logits [V] fp32 (a copy) and advances
        the state. ``trace``: if a dict, ``trace["hidden"][layer]`` gets each layer's output hidden state."""
        token = as_token_id(token_id, self.config.vocab_size)
        if not isinstance(state, DeviceState):
            raise TypeError(f"state must be a DeviceState from prefill/new_state, got {type(state).__name__}")
        self.launch(state, token, 1, trace=trace is not None)
        self.finish()
        if trace is not None:
            hidden = self.trace.cpu()
            trace.setdefault("hidden", {}).update({i: hidden[i].clone() for i in range(hidden.shape[0])})
        return self.logits.clone()

    @torch.no_grad()
    def run(self, state: DeviceState, token: int, steps: int, eos: int = -1, sample: bool = False,
            temperature: float = 1.0, seed: int = 0) -> list[int]:
        """``steps`` decode steps in ONE launch, the first fed ``token``; stops early after ``eos``. Returns the
        tokens chosen (the last step's logits stay in ``self.logits``)."""
        self.launch(state, token, steps, eos, sample, temperature, seed)
        return self.finish()

    @torch.no_grad()
    def greedy_tokens(self, input_ids, n: int, state: DeviceState | None = None, steps_per_launch: int | None = None
                      ) -> list[int]:
        """n greedy tokens: the first from the prefill logits, the other n-1 from launches of ``steps_per_launch``
        steps each (default: all in one launch)."""
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        logits, state = self.prefill(input_ids, state=state, last_only=True)
        out = [int(logits[-1].argmax())]
        chunk = steps_per_launch or max(1, n - 1)
        while len(out) < n:
            out += self.run(state, out[-1], min(chunk, n - len(out)))
        return out

    @torch.no_grad()
    def generate(self, input_ids, max_new_tokens: int, temperature: float = 0.0, top_k: int = 0,
                 top_p: float = 1.0, seed: int | None = None, stop_at_eos: bool = True, eos_token_id=None,
                 callback=None, steps_per_launch: int | None = None) -> torch.Tensor:
        """As :meth:`reference.Qwen35Model.generate` (new token ids only). Greedy and temperature sampling run
        ``steps_per_launch`` tokens per launch (default: everything in one launch, or 16 per launch when a
        ``callback`` streams them); top-k / top-p run one launch per token with the host sampler (see the module
        docstring). ``last_run["mode"]`` says which."""
        check_sampling_args(temperature, top_k, top_p)
        if top_k or top_p < 1.0:
            self.last_run = {"mode": "one launch per token, host top-k/top-p sampler"}
            return generate_tokens(self, input_ids, max_new_tokens, temperature, top_k, top_p, seed, stop_at_eos,
                                   eos_token_id, callback)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens must be an integer >= 0, got {max_new_tokens!r}")
        ids = as_token_list(input_ids, self.config.vocab_size)
        if len(ids) + max_new_tokens > self.max_context + 1:
            raise ContextTooLongError(f"context too long: {len(ids)} prompt + {max_new_tokens} new tokens exceed "
                                      f"this decoder's KV-cache capacity {self.max_context} (load with a larger "
                                      "max_context)")
        if max_new_tokens == 0:
            return torch.tensor([], dtype=torch.long)
        eos = eos_token_id if eos_token_id is not None else self.config.eos_token_id
        eos_ids = [eos] if isinstance(eos, int) else list(eos or [])
        if len(eos_ids) > 1:
            raise ValueError("the persistent kernel stops at one EOS id; got several: " + str(eos_ids))
        eos_id = eos_ids[0] if (stop_at_eos and eos_ids) else -1
        sample = temperature > 0
        if sample and seed is None:
            seed = secrets.randbits(63)
        logits, state = self.prefill(ids, last_only=True)
        last = logits[-1]
        if sample:  # the same keys as the kernel's: (seed, position of the token the logits came from)
            noise = torch.from_numpy(lmh.gumbel_noise_host(seed, len(ids) - 1, last.numel()))
            first = int((last.cpu() / temperature + noise).argmax())
        else:
            first = int(last.argmax())
        out = [first]
        if callback is not None:
            callback(first)
        chunk = steps_per_launch or (16 if callback is not None else max_new_tokens)
        self.last_run = {"mode": f"{'sampled' if sample else 'greedy'}, up to {chunk} tokens per launch"}
        mode = self.last_run["mode"]
        while len(out) < max_new_tokens and out[-1] != eos_id:
            new = self.run(state, out[-1], min(chunk, max_new_tokens - len(out)), eos_id, sample,
                           temperature if sample else 1.0, seed or 0)
            for t in new:
                out.append(t)
                if callback is not None:
                    callback(t)
        self.last_run["mode"] = mode
        return torch.tensor(out, dtype=torch.long)

    def launches_per_token(self) -> float:
        return 1.0


__all__ = ["PersistentDecoder", "GridNotCoResidentError", "VERSIONS", "DEFAULT_VERSION"]
