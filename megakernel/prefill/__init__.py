"""Fast prefill for the kernel stages: the prompt in bf16 matrix products (tensor cores), fp32 states, the
chunked gated delta rule batched over chunks and heads, written straight into the decode state's layout.

* ``runner.py``: ``prefill_into(weights, state, ids)`` / :class:`Prefill` (pieces, CUDA graphs, fp32 twin);
* ``layers.py``: one forward pass over a piece of the prompt (embedding, DeltaNet, attention, MLP, LM head);
* ``delta_rule.py``: the chunked gated delta rule batched over chunks (torch) and flash-linear-attention's;
* ``budget.py``: the FLOPs and bytes of a prefill (why it is compute-bound).
"""

from .delta_rule import chunked_delta_rule, fla_status
from .runner import GRAPH_MAX_TOKENS, PIECE_TOKENS, Prefill, prefill_into

__all__ = ["GRAPH_MAX_TOKENS", "PIECE_TOKENS", "Prefill", "chunked_delta_rule", "fla_status", "prefill_into"]
