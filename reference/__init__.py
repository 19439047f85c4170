"""Stage 1: a readable, pure-PyTorch Qwen3.5 text model, proven equal to transformers.

Public API (used by the notebooks, the later stages and outside checks):

    Qwen35Config.from_pretrained(path)            # parse config.json (VL wrapper or plain text config)
    write_synthetic_checkpoint(path, config, seed=0)
    model = load_model(path, device="cpu", dtype=torch.float32)
    logits, state = model.prefill(input_ids)      # logits [T, vocab]
    logits = model.decode_step(token_id, state)   # logits [vocab]; state advanced
    new_ids = model.generate(input_ids, max_new_tokens, temperature=0, top_k=0, top_p=1, seed=None)
"""

from .checkpoint import CheckpointError, expected_shapes, load_weights
from .config import FULL, LINEAR, ConfigError, Qwen35Config
from .model import Qwen35Model, generate_tokens, load_model
from .sampling import sample_next_token
from .state import ContextTooLongError, DecodeState
from .synthetic import ensure_synthetic_checkpoint, write_synthetic_checkpoint
from .tokenizer import Tokenizer, load_tokenizer

__all__ = [
    "CheckpointError", "ConfigError", "ContextTooLongError", "DecodeState", "FULL", "LINEAR", "Qwen35Config",
    "Qwen35Model", "Tokenizer", "ensure_synthetic_checkpoint", "expected_shapes", "generate_tokens",
    "load_model", "load_tokenizer", "load_weights", "sample_next_token", "write_synthetic_checkpoint",
]
