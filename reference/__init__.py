"""Stage 1: a readable, pure-PyTorch Qwen3.5 text model, proven equal to transformers.

Public API (used by the notebooks, the later stages and outside checks):

    Qwen35Config.from_pretrained(path)            # parse config.json (VL wrapper or plain text config)
    write_synthetic_checkpoint(path, config, seed=0)
    model = load_model(path, device="cpu", dtype=torch.float32)
    logits, state = model.prefill(input_ids)      # logits [T, vocab]
    logits = model.decode_step(token_id, state)   # logits [vocab]; state advanced
    new_ids = model.generate(input_ids, max_new_tokens, temperature=0, top_k=0, top_p=1, seed=None)
"""

import importlib

# Exports load their module on first use, so that a light module (``reference.cli``, ``reference.config``) can be
# imported without torch: ``from reference import load_model`` works as usual.
_EXPORTS = {
    "CheckpointError": "checkpoint", "expected_shapes": "checkpoint", "load_weights": "checkpoint",
    "FULL": "config", "LINEAR": "config", "ConfigError": "config", "Qwen35Config": "config",
    "Qwen35Model": "model", "generate_tokens": "model", "load_model": "model",
    "sample_next_token": "sampling",
    "ContextTooLongError": "state", "DecodeState": "state",
    "ensure_synthetic_checkpoint": "synthetic", "write_synthetic_checkpoint": "synthetic",
    "Tokenizer": "tokenizer", "load_tokenizer": "tokenizer",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'reference' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS))
