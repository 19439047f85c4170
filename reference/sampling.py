"""Choosing the next token from logits: greedy, or sampled with temperature, top-k and top-p (nucleus).

One function, used by every stage (reference, layered decoder, megakernel) so that "sampled" means the same
thing everywhere and a seed reproduces a run.
"""

from __future__ import annotations

import math
import numbers

import torch


def check_sampling_args(temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0) -> None:
    """ValueError naming the first argument that is not a finite number in its range (NaN compares false with
    everything, so it is tested explicitly)."""
    if not _real(temperature) or not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature!r}")
    if isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    if not _real(top_p) or not 0.0 < top_p <= 1.0:  # also refuses NaN
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")


def _real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def sample_next_token(
    logits: torch.Tensor,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> int:
    """logits: [V]. temperature 0 is greedy (argmax, smallest index on ties); otherwise sample from
    softmax(logits / temperature) restricted to the top_k most likely tokens (0 = all) and then to the smallest
    set whose probability reaches top_p."""
    check_sampling_args(temperature, top_k, top_p)
    logits = logits.float()
    if temperature == 0.0:
        return int(torch.argmax(logits))
    logits = logits / temperature
    if 0 < top_k < logits.numel():
        kth = torch.topk(logits, top_k).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # keep a token if the mass before it is < top_p (so the most likely token is always kept)
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.scatter(0, order[drop], float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))
