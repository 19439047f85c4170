"""The gated delta rule: the recurrence at the heart of a Gated DeltaNet layer, in two forms that must agree.

Per value head h (which reads key head ``h // (Hv/Hk)``), with an fp32 state ``S`` of shape [Dk, Dv]:

    q_t, k_t = l2norm(q_t) / sqrt(Dk), l2norm(k_t)
    S     = exp(g_t) * S                      # decay first (g_t <= 0) -- the step a published kernel forgot
    delta = beta_t * (v_t - S^T k_t)          # what the decayed memory mispredicts for key k_t
    S     = S + k_t delta^T                   # write the correction
    o_t   = S^T q_t

* ``recurrent_gated_delta_rule`` runs that loop token by token (decode uses one step of it).
* ``chunked_gated_delta_rule`` is the prefill form: within a chunk of C tokens the corrections ``delta`` solve a
  unit-lower-triangular system (the "UT transform"), so a chunk costs a few matmuls instead of C sequential
  steps; only the state is carried from chunk to chunk. It is the same function (tests prove it).

Derivation of the chunked form (one head, one chunk, state S0 on entry, ``G_i = g_0 + ... + g_i``):
``S_i = e^{G_i} S0 + sum_{j<=i} e^{G_i - G_j} k_j delta_j^T``. Substituting into the definition of delta gives
``(I + A) delta = beta*v - (beta e^G k) S0`` with ``A_ij = beta_i e^{G_i - G_j} k_i.k_j`` for j < i, hence
``delta = U - W S0``, ``U = (I+A)^-1 (beta v)``, ``W = (I+A)^-1 (beta e^G k)``. Then
``o_i = e^{G_i} q_i S0 + sum_{j<=i} e^{G_i - G_j} (q_i.k_j) delta_j`` and the state leaving the chunk is
``e^{G_last} S0 + sum_j e^{G_last - G_j} k_j delta_j^T``.

Shapes (batch 1, time-major): q, k [T, Hk, Dk]; v [T, Hv, Dv]; g, beta [T, Hv]; state [Hv, Dk, Dv].
Everything is computed in fp32; outputs are fp32.
"""

import torch

L2_EPS = 1e-6


def l2_normalize(x: torch.Tensor, eps: float = L2_EPS) -> torch.Tensor:
    """``x * rsqrt(sum(x^2) + eps)`` over the last dim (the form flash-linear-attention and transformers use)."""
    return x * torch.rsqrt((x * x).sum(dim=-1, keepdim=True) + eps)


def _prepare(q, k, v, g, beta, use_qk_l2norm):
    T, Hk, Dk = k.shape
    Hv = v.shape[1]
    if q.shape != k.shape or v.shape[0] != T or g.shape != (T, Hv) or beta.shape != (T, Hv):
        raise ValueError(
            f"gated delta rule shapes disagree: q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)}, "
            f"g {tuple(g.shape)}, beta {tuple(beta.shape)}"
        )
    if Hv % Hk:
        raise ValueError(f"value heads ({Hv}) must be a multiple of key heads ({Hk})")
    if Hv != Hk:  # value head h reads key head h // (Hv/Hk)
        q, k = q.repeat_interleave(Hv // Hk, dim=1), k.repeat_interleave(Hv // Hk, dim=1)
    # head-major, contiguous fp32 [H, T, D] (the layout also fixes the reduction order, so fp32 results match
    # transformers bit for bit)
    q, k, v, g, beta = (t.transpose(0, 1).to(torch.float32, memory_format=torch.contiguous_format)
                        for t in (q, k, v, g, beta))
    if use_qk_l2norm:
        q, k = l2_normalize(q), l2_normalize(k)
    return q, k, v, g, beta


def _initial_state(initial_state, Hv, Dk, Dv, device):
    if initial_state is None:
        return torch.zeros(Hv, Dk, Dv, dtype=torch.float32, device=device)
    if initial_state.shape != (Hv, Dk, Dv):
        raise ValueError(f"state shape {tuple(initial_state.shape)} != expected {(Hv, Dk, Dv)}")
    return initial_state.float().clone()


def gated_delta_rule_step(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, g: torch.Tensor, beta: torch.Tensor, state: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """One token, already normalised, scaled and expanded to value heads.

    q, k: [Hv, Dk] fp32; v: [Hv, Dv]; g, beta: [Hv]; state: [Hv, Dk, Dv] fp32.
    Returns (o [Hv, Dv], new state [Hv, Dk, Dv]).
    """
    state = state * g.exp()[:, None, None]
    predicted = (state * k[:, :, None]).sum(dim=1)  # S^T k: [Hv, Dv]
    delta = (v - predicted) * beta[:, None]
    state = state + k[:, :, None] * delta[:, None, :]
    o = (state * q[:, :, None]).sum(dim=1)  # S^T q
    return o, state


def recurrent_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Token-by-token form. Returns (o [T, Hv, Dv] fp32, final state [Hv, Dk, Dv] fp32)."""
    q, k, v, g, beta = _prepare(q, k, v, g, beta, use_qk_l2norm)  # [H, T, D]
    Hv, T, Dk = k.shape
    Dv = v.shape[-1]
    q = q / (Dk**0.5)  # decode divides (prefill multiplies by Dk**-0.5; transformers does the same)
    state = _initial_state(initial_state, Hv, Dk, Dv, v.device)
    out = torch.empty(Hv, T, Dv, dtype=torch.float32, device=v.device)
    for t in range(T):
        out[:, t], state = gated_delta_rule_step(q[:, t], k[:, t], v[:, t], g[:, t], beta[:, t], state)
    return out.transpose(0, 1).contiguous(), state


def chunked_gated_delta_rule(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    g: torch.Tensor,
    beta: torch.Tensor,
    initial_state: torch.Tensor | None = None,
    use_qk_l2norm: bool = True,
    chunk_size: int = 64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chunked (prefill) form; see the module docstring. Same signature and results as the recurrent form."""
    q, k, v, g, beta = _prepare(q, k, v, g, beta, use_qk_l2norm)  # [H, T, D]
    Hv, T, Dk = k.shape
    Dv = v.shape[-1]
    q = q * Dk**-0.5
    state = _initial_state(initial_state, Hv, Dk, Dv, v.device)

    # Pad to whole chunks. Padding has k = v = 0, beta = 0 and g = 0 (no decay), so it changes neither the
    # outputs of real tokens nor the state.
    C = chunk_size
    pad = (-T) % C
    q, k, v = (torch.nn.functional.pad(t, (0, 0, 0, pad)) for t in (q, k, v))
    g, beta = (torch.nn.functional.pad(t, (0, pad)) for t in (g, beta))
    out = torch.empty(Hv, T + pad, Dv, dtype=torch.float32, device=v.device)

    causal = torch.ones(C, C, dtype=torch.bool, device=v.device).tril()  # j <= i
    eye = torch.eye(C, dtype=torch.float32, device=v.device)
    for start in range(0, T + pad, C):
        sl = slice(start, start + C)
        qc, kc, vc, gc, bc = q[:, sl], k[:, sl], v[:, sl], g[:, sl], beta[:, sl]
        G = gc.cumsum(dim=-1)  # [H, C] log of the decay from the chunk start to each position
        # decay[h, i, j] = exp(G_i - G_j) for j <= i, else 0 (masked before exp so it cannot overflow)
        decay = (G[:, :, None] - G[:, None, :]).masked_fill(~causal, float("-inf")).exp()
        k_beta = kc * bc[..., None]
        A = ((k_beta @ kc.transpose(1, 2)) * decay).tril(-1)
        system = eye + A  # unit lower triangular
        U = torch.linalg.solve_triangular(system, vc * bc[..., None], upper=False, unitriangular=True)
        W = torch.linalg.solve_triangular(system, k_beta * G.exp()[..., None], upper=False, unitriangular=True)
        delta = U - W @ state  # [H, C, Dv]
        out[:, sl] = (qc * G.exp()[..., None]) @ state + ((qc @ kc.transpose(1, 2)) * decay) @ delta
        G_last = G[:, -1:]
        state = state * G_last.exp()[..., None] + (kc * (G_last - G).exp()[..., None]).transpose(1, 2) @ delta
    return out[:, :T].transpose(0, 1).contiguous(), state
