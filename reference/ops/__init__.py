"""One module per op, one reference signature per op (the oracle every kernel is checked against).

Every op follows the dtype rules of transformers' Qwen3.5 implementation: the arithmetic that transformers does in
fp32 is done in fp32 here, and results are rounded to the storage dtype at the same points. With fp32 inputs and
weights everything is fp32 (the mode used for tight comparisons); with bf16 the rounding points match
transformers' so greedy tokens agree.
"""

from .activations import activation, silu
from .conv1d import causal_conv1d, causal_conv1d_step
from .gated_delta_rule import (
    chunked_gated_delta_rule,
    gated_delta_rule_step,
    l2_normalize,
    recurrent_gated_delta_rule,
)
from .deltanet import deltanet_core, deltanet_decay, deltanet_decode_step, gated_deltanet
from .attention import gated_attention, gqa_attention, split_query_gate
from .lm_head import lm_head
from .mlp import swiglu_mlp
from .rmsnorm import gated_rms_norm, rms_norm
from .rope import apply_partial_rope, rope_cos_sin, rope_inv_freq

__all__ = [
    "deltanet_core", "deltanet_decay", "deltanet_decode_step", "gated_deltanet",
    "activation", "silu", "causal_conv1d", "causal_conv1d_step", "chunked_gated_delta_rule",
    "gated_delta_rule_step", "l2_normalize", "recurrent_gated_delta_rule", "gated_attention",
    "gqa_attention", "split_query_gate", "lm_head", "swiglu_mlp", "gated_rms_norm",
    "rms_norm", "apply_partial_rope", "rope_cos_sin", "rope_inv_freq",
]
