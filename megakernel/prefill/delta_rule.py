"""The gated delta rule over a whole prompt: the chunked form batched over chunks and heads (torch), and
flash-linear-attention's Triton kernel where it imports.

The reference (``reference/ops/gated_delta_rule.py``, chunk size 64) walks the chunks one after another and runs
every step of a chunk in turn: ~12 small ops per chunk, ~100 per layer for a 512-token prompt, each a kernel
launch on a GPU. Almost all of that work does not depend on the state entering the chunk, so here it is done for
every chunk and head in one batched op, and the only sequential part left is one batched matrix product per chunk.
Per chunk n (C tokens, all heads at once; ``G`` the cumulative log-decay inside the chunk, ``S_n`` the state
entering it; the reference's docstring derives U, W, delta):

    (I + A) [U | W] = [beta v | beta e^G k]              one batched triangular solve for every chunk
    Kd = e^(G_last - G) k                                the keys as seen from the chunk's end
    S_(n+1) = M_n S_n + B_n,  M_n = e^(G_last) I - Kd^T W,  B_n = Kd^T U       <- the only sequential step
    delta_n = U - W S_n;  o = (q e^G) S_n + ((q k^T) * decay) delta_n           batched again, every chunk

``S_(n+1) = e^(G_last) S_n + Kd^T delta_n`` is the reference's state update; substituting ``delta_n = U - W S_n``
gives the affine map above, so the sequential step is a single ``baddbmm`` over heads ([Dk, Dk] @ [Dk, Dv]: as
many FLOPs as the reference's two products). Everything is fp32 (the decode kernels' state precision); the
result equals the reference's chunked and recurrent forms up to fp32 rounding (checked in fp64 to 1e-12).

``backend="fla"``: ``fla.ops.gated_delta_rule.chunk_gated_delta_rule`` (flash-linear-attention, Triton, GPU
only): q, k, v in bf16 (its kernels refuse fp32), g, beta and the states in fp32, l2 norms inside the kernel.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from reference.ops.gated_delta_rule import L2_EPS, l2_normalize

CHUNK = 64  # tokens per chunk, as the reference and flash-linear-attention
BACKENDS = ("torch", "fla")


class BackendUnavailable(RuntimeError):
    """The requested delta-rule backend cannot run here (the message says why)."""


def fla_status() -> str | None:
    """None if flash-linear-attention's chunked gated delta rule imports, else why not (one line)."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule  # noqa: F401
    except Exception as e:  # noqa: BLE001 (any import failure is the answer)
        return f"{type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}".rstrip(": ")
    return None


def _check_shapes(q, k, v, g, beta):
    T, Hk, Dk = k.shape
    Hv = v.shape[1]
    if q.shape != k.shape or v.shape[0] != T or g.shape != (T, Hv) or beta.shape != (T, Hv):
        raise ValueError(f"gated delta rule shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, "
                         f"v {tuple(v.shape)}, g {tuple(g.shape)}, beta {tuple(beta.shape)}")
    if Hv % Hk:
        raise ValueError(f"value heads ({Hv}) must be a multiple of key heads ({Hk})")
    return T, Hk, Hv, Dk, v.shape[2]


def repeat_heads(x: torch.Tensor, times: int, dim: int) -> torch.Tensor:
    """Each head of ``dim`` repeated ``times`` in place (head h -> h*times ... h*times + times-1), as
    ``repeat_interleave`` but by expand + reshape: no host synchronisation, so it can be captured in a CUDA graph."""
    if times == 1:
        return x
    shape = list(x.shape)
    expanded = x.unsqueeze(dim + 1).expand(*shape[: dim + 1], times, *shape[dim + 1 :])
    return expanded.reshape(*shape[:dim], shape[dim] * times, *shape[dim + 1 :])


def _to_chunks(x: torch.Tensor, n_chunks: int, chunk: int) -> torch.Tensor:
    """[T, H] or [T, H, D] time-major -> [N, H, C(, D)]; [T, 2, H, D] (q and k) -> [2, N, H, C, D]. Contiguous,
    zero padded to N*C tokens."""
    pad = n_chunks * chunk - x.shape[0]
    if pad:
        x = F.pad(x, (0, 0) * (x.dim() - 1) + (0, pad))
    x = x.reshape(n_chunks, chunk, *x.shape[1:])
    order = {3: (0, 2, 1), 4: (0, 2, 1, 3), 5: (2, 0, 3, 1, 4)}[x.dim()]
    return x.permute(order).contiguous()


_CAUSAL: dict = {}


def _causal_mask(chunk: int, device) -> torch.Tensor:
    """[C, C] bool, True where j <= i (made once per device)."""
    key = (chunk, str(device))
    if key not in _CAUSAL:
        _CAUSAL[key] = torch.ones(chunk, chunk, dtype=torch.bool, device=device).tril()
    return _CAUSAL[key]


def chunked_delta_rule(q, k, v, g, beta, initial_state=None, final_state=None, chunk_size: int = CHUNK):
    """The chunked gated delta rule, batched (see the module docstring).

    q, k: [T, Hk, Dk] as they leave the conv (l2-normalised here; q also scaled by Dk**-0.5); v: [T, Hv, Dv];
    g (log decay, <= 0), beta: [T, Hv]; initial_state: [Hv, Dk, Dv] or None (zeros). Value head h reads key head
    h // (Hv/Hk). Computes in fp32, or in the inputs' dtype when that is fp64 (for exactness checks).
    final_state: if given, a [Hv, Dk, Dv] tensor that receives the state after the last token.
    Returns (o [T, Hv, Dv], final state [Hv, Dk, Dv]).
    """
    T, Hk, Hv, Dk, Dv = _check_shapes(q, k, v, g, beta)
    dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    C = chunk_size
    N = max(1, math.ceil(T / C))
    # q and k together: one normalisation, one layout copy ([T, 2, H, Dk] -> [2, N, H, C, Dk]). Padding tokens have
    # k = v = q = 0, beta = 0 and g = 0 (no decay): they change neither real outputs nor the state.
    qk = l2_normalize(torch.stack([q, k], dim=1).to(dtype), L2_EPS)
    qk = repeat_heads(qk, Hv // Hk, 2)  # value head h reads key head h // (Hv/Hk)
    qc, kc = _to_chunks(qk, N, C)  # each [N, H, C, Dk]
    qc = qc.mul_(Dk**-0.5)
    vc = _to_chunks(v.to(dtype), N, C)  # [N, H, C, Dv]
    gc, bc = (_to_chunks(t.to(dtype), N, C) for t in (g, beta))  # [N, H, C]
    G = gc.cumsum(-1)
    G_last = G[..., -1:]  # [N, H, 1]
    eG = G.exp()[..., None]  # [N, H, C, 1]
    decay = (G[..., :, None] - G[..., None, :]).masked_fill_(~_causal_mask(C, v.device), float("-inf")).exp_()
    k_beta = kc * bc[..., None]
    # A's strict lower triangle is the reference's; the solve reads nothing else (unitriangular, lower).
    A = torch.matmul(k_beta, kc.transpose(-1, -2)).mul_(decay)
    rhs = torch.cat([vc * bc[..., None], k_beta.mul_(eG)], dim=-1)  # [N, H, C, Dv + Dk]
    UW = torch.linalg.solve_triangular(A, rhs, upper=False, unitriangular=True)
    U, W = UW[..., :Dv], UW[..., Dv:]
    k_decayed = kc * (G_last - G).exp_()[..., None]
    KUW = torch.matmul(k_decayed.transpose(-1, -2), UW)  # [N, H, Dk, Dv + Dk] = [B | e^G_last I - M]
    B = KUW[..., :Dv]
    M = KUW[..., Dv:].neg()
    M.diagonal(dim1=-2, dim2=-1).add_(G_last.exp())
    states = torch.empty(N + 1, Hv, Dk, Dv, dtype=dtype, device=v.device)  # states[n]: entering chunk n
    if initial_state is None:
        states[0].zero_()
    else:
        if initial_state.shape != (Hv, Dk, Dv):
            raise ValueError(f"state shape {tuple(initial_state.shape)} != expected {(Hv, Dk, Dv)}")
        states[0].copy_(initial_state)
    for n in range(N):
        torch.baddbmm(B[n], M[n], states[n], out=states[n + 1])
    S = states[:N].flatten(0, 1)  # [N*H, Dk, Dv]
    delta = torch.baddbmm(U.flatten(0, 1), W.flatten(0, 1), S, alpha=-1)  # U - W S
    scores = torch.matmul(qc, kc.transpose(-1, -2)).mul_(decay).flatten(0, 1)  # [N*H, C, C]
    o = torch.baddbmm(torch.bmm(scores, delta), qc.mul_(eG).flatten(0, 1), S)
    o = o.view(N, Hv, C, Dv).transpose(1, 2).reshape(N * C, Hv, Dv)[:T]
    if final_state is not None:
        final_state.copy_(states[N])
    return o, states[N]


def fla_delta_rule(q, k, v, g, beta, initial_state=None, final_state=None):
    """The same through flash-linear-attention's ``chunk_gated_delta_rule`` (GPU). Shapes as
    :func:`chunked_delta_rule`; q, k, v are rounded to bf16 for its kernels. Returns (o [T, Hv, Dv] bf16, state)."""
    T, Hk, Hv, Dk, Dv = _check_shapes(q, k, v, g, beta)
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except Exception as e:  # noqa: BLE001
        raise BackendUnavailable(f"flash-linear-attention is not importable: {fla_status()}") from e
    if v.device.type != "cuda":
        raise BackendUnavailable("flash-linear-attention's Triton kernels need a CUDA GPU")
    q, k = repeat_heads(q, Hv // Hk, 1), repeat_heads(k, Hv // Hk, 1)
    bf16 = lambda t: t.to(torch.bfloat16)[None]  # noqa: E731  [1, T, H, D]
    h0 = None if initial_state is None else initial_state.float()[None].contiguous()
    o, state = chunk_gated_delta_rule(bf16(q), bf16(k), bf16(v), g=g.float()[None].contiguous(),
                                      beta=beta.float()[None].contiguous(), scale=Dk**-0.5, initial_state=h0,
                                      output_final_state=True, use_qk_l2norm_in_kernel=True)
    state = state[0].float()
    if final_state is not None:
        final_state.copy_(state)
    return o[0], state


def delta_rule(backend: str, q, k, v, g, beta, initial_state=None, final_state=None):
    """Dispatch to :func:`chunked_delta_rule` (``"torch"``) or :func:`fla_delta_rule` (``"fla"``)."""
    if backend == "torch":
        return chunked_delta_rule(q, k, v, g, beta, initial_state, final_state)
    if backend == "fla":
        return fla_delta_rule(q, k, v, g, beta, initial_state, final_state)
    raise ValueError(f"unknown delta-rule backend {backend!r}; choose one of {', '.join(BACKENDS)}")


__all__ = ["BACKENDS", "CHUNK", "BackendUnavailable", "chunked_delta_rule", "delta_rule", "fla_delta_rule",
           "fla_status", "repeat_heads"]
