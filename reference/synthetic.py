"""Synthetic Qwen3.5 checkpoints: real shapes, real key layout, random (seeded) weights.

The real Qwen3.5-0.8B weights cannot be downloaded on every machine this project runs on, so the default model is
a synthetic checkpoint with the published shapes and layout (``model.language_model.*``, the vision-language
wrapper ``config.json``, fp32 ``A_log`` and DeltaNet norm weights, tied LM head), generated on first use.
transformers loads it with ``AutoModelForCausalLM.from_pretrained`` like the real thing. Its text output is
meaningless; its numerics exercise every op:

* projections are scaled so activations keep unit scale (residual-writing projections by 1/sqrt(2 * layers));
* the embedding is scaled so logits have a realistic spread (std ~2);
* norm weights, ``A_log`` (decay rates 1..16), ``dt_bias`` (time steps 1e-3..1e-1) and the conv taps are drawn
  away from their trivial initial values, so a kernel that ignores one of them fails its check.

Each tensor has its own generator seeded from (seed, tensor name): the same seed gives the same bytes, and a
layer's weights do not depend on how many layers the config has.
"""

from __future__ import annotations

import json
import math
import os
import zlib
from pathlib import Path

import torch
from safetensors.torch import save_file

from .checkpoint import FP32_PARAMS, expected_shapes
from .config import Qwen35Config

PROJECT_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CHECKPOINT_NAME = "qwen35-0.8b-synthetic"


def checkpoints_dir() -> Path:
    """Where generated checkpoints live: ``data/checkpoints`` (git-ignored), or $QWEN35_CHECKPOINTS."""
    return Path(os.environ.get("QWEN35_CHECKPOINTS", PROJECT_ROOT / "data" / "checkpoints"))


def _generator(seed: int, name: str) -> torch.Generator:
    return torch.Generator().manual_seed((seed * 1_000_003 + zlib.crc32(name.encode())) % (2**63))


def synthetic_tensor(name: str, shape: tuple[int, ...], config: Qwen35Config, seed: int) -> torch.Tensor:
    """The fp32 value of one synthetic tensor (before rounding to its storage dtype)."""
    gen = _generator(seed, name)
    randn = lambda std: torch.randn(shape, generator=gen) * std  # noqa: E731
    uniform = lambda lo, hi: lo + (hi - lo) * torch.rand(shape, generator=gen)  # noqa: E731
    residual_scale = 1.0 / math.sqrt(2 * config.num_hidden_layers)
    leaf = name.rsplit(".", 2)[-2] if name.endswith((".weight", ".bias")) else name.rsplit(".", 1)[-1]
    if name == "embed_tokens.weight" or name == "lm_head.weight":
        return randn(2.0 / math.sqrt(config.hidden_size))
    if name.endswith("linear_attn.norm.weight"):  # plain weight, initialised to 1
        return 1.0 + randn(0.1)
    if name.endswith("norm.weight") or name.endswith("layernorm.weight"):  # zero-centred, applied as (1 + w)
        return randn(0.2)
    if leaf == "A_log":
        return uniform(1.0, 16.0).log()
    if leaf == "dt_bias":  # inverse softplus of time steps log-uniform in [1e-3, 1e-1]
        dt = uniform(math.log(1e-3), math.log(1e-1)).exp()
        return dt + torch.log(-torch.expm1(-dt))
    if leaf == "conv1d":
        return randn(1.0 / math.sqrt(shape[-1]))
    if name.endswith(".bias"):
        return randn(0.02)
    fan_in = shape[-1]
    std = 1.0 / math.sqrt(fan_in)
    if leaf in ("out_proj", "o_proj", "down_proj"):
        std *= residual_scale
    if leaf == "in_proj_a":
        std *= 0.5
    return randn(std)


def stored_names(config: Qwen35Config, layout: str) -> dict[str, str]:
    """canonical name -> name stored in the file, for the 'vl' (published) or 'text' layout."""
    prefix = {"vl": "model.language_model.", "text": "model."}[layout]
    return {n: (n if n == "lm_head.weight" else prefix + n) for n in expected_shapes(config)}


def write_synthetic_checkpoint(
    path: str | Path,
    config: Qwen35Config,
    seed: int = 0,
    layout: str = "vl",
    max_shard_bytes: int | None = None,
    tokenizer: bool | None = None,
    progress: bool = False,
) -> Path:
    """Write ``config.json`` and safetensors weights for ``config`` into directory ``path``.

    layout: "vl" (published: wrapper config, ``model.language_model.*``) or "text" (``model.*``).
    max_shard_bytes: split into ``model-0000i-of-0000n.safetensors`` files plus an index when the weights exceed
    it (None: one ``model.safetensors``). tokenizer: also write the real Qwen3.5 tokenizer files (default: when
    the vocabulary is the real one). Returns the directory.
    """
    if layout not in ("vl", "text"):
        raise ValueError(f"layout must be 'vl' or 'text', got {layout!r}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    names = stored_names(config, layout)
    shapes = expected_shapes(config)
    items = names.items()
    if progress:
        from tqdm.auto import tqdm

        items = tqdm(items, desc=f"synthetic weights ({path.name})", unit="tensor")
    tensors: dict[str, torch.Tensor] = {}
    for name, stored in items:
        value = synthetic_tensor(name, shapes[name], config, seed)
        keep_fp32 = name.endswith(FP32_PARAMS)
        tensors[stored] = value.to(torch.float32 if keep_fp32 else torch.bfloat16).contiguous()

    for old in list(path.glob("*.safetensors")) + [path / "model.safetensors.index.json"]:
        old.unlink(missing_ok=True)
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    metadata = {"format": "pt"}
    if max_shard_bytes is None or total <= max_shard_bytes:
        save_file(tensors, path / "model.safetensors", metadata=metadata)
    else:
        shards, current, size = [], {}, 0
        for k, t in tensors.items():
            nbytes = t.numel() * t.element_size()
            if current and size + nbytes > max_shard_bytes:
                shards.append(current)
                current, size = {}, 0
            current[k] = t
            size += nbytes
        shards.append(current)
        weight_map = {}
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
            save_file(shard, path / fname, metadata=metadata)
            weight_map.update({k: fname for k in shard})
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        (path / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")

    config.save(path, layout=layout)
    (path / "generation_config.json").write_text(json.dumps(
        {"eos_token_id": config.eos_token_id, "do_sample": False}, indent=2) + "\n")
    if tokenizer is None:
        from .tokenizer import QWEN35_VOCAB_USED

        tokenizer = config.vocab_size >= QWEN35_VOCAB_USED
    if tokenizer:
        from .tokenizer import write_hf_tokenizer_files

        write_hf_tokenizer_files(path)
    return path


def ensure_synthetic_checkpoint(
    name: str = DEFAULT_CHECKPOINT_NAME, config: Qwen35Config | None = None, seed: int = 0
) -> Path:
    """The checkpoint ``data/checkpoints/<name>``, generated on first use (default: the real 0.8B shapes)."""
    config = config or Qwen35Config.qwen35_0_8b()
    path = checkpoints_dir() / name
    marker = path / ".complete"
    if marker.is_file() and json.loads(marker.read_text()) == {"seed": seed, "config": config.to_dict()}:
        return path
    print(f"Generating the synthetic checkpoint {path} (seed {seed}; first use only) ...", flush=True)
    write_synthetic_checkpoint(path, config, seed=seed, progress=True)
    marker.write_text(json.dumps({"seed": seed, "config": config.to_dict()}))
    return path
