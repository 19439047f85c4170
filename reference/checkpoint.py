"""Load a Hugging Face-layout safetensors checkpoint of a Qwen3.5 text model.

Accepted layouts:

* the published one: ``model.language_model.*`` (the text model), ``model.visual.*`` (vision tower, skipped),
  ``mtp.*`` (multi-token-prediction layer, skipped), with or without ``lm_head.weight`` (tied to
  ``embed_tokens`` when ``tie_word_embeddings`` is true);
* a plain text checkpoint: ``model.*`` plus ``lm_head.weight`` unless tied.

Files: a single ``model.safetensors``, a sharded set with ``model.safetensors.index.json``, or any
``*.safetensors`` files in the directory. The result is a dict keyed by the text model's own names
(``embed_tokens.weight``, ``layers.0.linear_attn.in_proj_qkv.weight``, ..., ``norm.weight``,
``lm_head.weight``). Every problem (missing key, unexpected key, shape mismatch, a config that does not match the
weights) raises :class:`CheckpointError` naming the tensor.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from safetensors import safe_open

from .config import LINEAR, Qwen35Config

SKIPPED_PREFIXES = ("model.visual.", "mtp.", "model.mtp.")
# Stored in fp32 in the published checkpoint; kept fp32 when loading in bf16 unless asked otherwise.
FP32_PARAMS = ("linear_attn.A_log", "linear_attn.norm.weight")


class CheckpointError(ValueError):
    """A checkpoint that does not match the Qwen3.5 layout or its config (the message names the tensor)."""


def expected_shapes(config: Qwen35Config) -> dict[str, tuple[int, ...]]:
    """Every tensor of the text model, by canonical name, with its shape."""
    c = config
    D, F = c.hidden_size, c.intermediate_size
    shapes: dict[str, tuple[int, ...]] = {"embed_tokens.weight": (c.vocab_size, D), "norm.weight": (D,)}
    if not c.tie_word_embeddings:
        shapes["lm_head.weight"] = (c.vocab_size, D)
    for i, kind in enumerate(c.layer_types):
        p = f"layers.{i}."
        shapes[p + "input_layernorm.weight"] = (D,)
        shapes[p + "post_attention_layernorm.weight"] = (D,)
        shapes[p + "mlp.gate_proj.weight"] = (F, D)
        shapes[p + "mlp.up_proj.weight"] = (F, D)
        shapes[p + "mlp.down_proj.weight"] = (D, F)
        if kind == LINEAR:
            a = p + "linear_attn."
            shapes[a + "in_proj_qkv.weight"] = (c.conv_dim, D)
            shapes[a + "in_proj_z.weight"] = (c.value_dim, D)
            shapes[a + "in_proj_b.weight"] = (c.linear_num_value_heads, D)
            shapes[a + "in_proj_a.weight"] = (c.linear_num_value_heads, D)
            shapes[a + "conv1d.weight"] = (c.conv_dim, 1, c.linear_conv_kernel_dim)
            shapes[a + "A_log"] = (c.linear_num_value_heads,)
            shapes[a + "dt_bias"] = (c.linear_num_value_heads,)
            shapes[a + "norm.weight"] = (c.linear_value_head_dim,)
            shapes[a + "out_proj.weight"] = (D, c.value_dim)
        else:
            a = p + "self_attn."
            Hq, Hkv, Dh = c.num_attention_heads, c.num_key_value_heads, c.head_dim
            shapes[a + "q_proj.weight"] = (Hq * Dh * 2, D)
            shapes[a + "k_proj.weight"] = (Hkv * Dh, D)
            shapes[a + "v_proj.weight"] = (Hkv * Dh, D)
            shapes[a + "o_proj.weight"] = (D, Hq * Dh)
            shapes[a + "q_norm.weight"] = (Dh,)
            shapes[a + "k_norm.weight"] = (Dh,)
            if c.attention_bias:
                shapes[a + "q_proj.bias"] = (Hq * Dh * 2,)
                shapes[a + "k_proj.bias"] = (Hkv * Dh,)
                shapes[a + "v_proj.bias"] = (Hkv * Dh,)
                shapes[a + "o_proj.bias"] = (D,)
    return shapes


def checkpoint_dir(path: str | Path, need_config: bool = True, need_weights: bool = True) -> Path:
    """``path`` as a checkpoint directory, or an error that says what it is instead and what to pass: missing
    (FileNotFoundError), a file such as its ``config.json`` (NotADirectoryError), a directory without
    ``config.json`` (when ``need_config``) or without ``*.safetensors`` files (when ``need_weights``;
    FileNotFoundError)."""
    path = Path(path).expanduser()
    what = "a directory holding config.json and the *.safetensors weights"
    if not path.exists():
        raise FileNotFoundError(f"checkpoint directory {path} does not exist (expected {what})")
    if not path.is_dir():
        raise NotADirectoryError(f"{path} is a file, not a checkpoint directory: pass the directory that holds it "
                                 f"({path.parent}), {what}")
    if need_config and not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {path}: not a checkpoint directory (expected {what})")
    if need_weights and not (path / "model.safetensors.index.json").is_file() and not any(path.glob("*.safetensors")):
        raise FileNotFoundError(f"no *.safetensors files in {path} (expected {what})")
    return path


def _open(f: Path):
    """safe_open, with a corrupt or truncated file named in a CheckpointError (safetensors does not name it)."""
    try:
        return safe_open(f, framework="pt", device="cpu")
    except Exception as e:  # noqa: BLE001 (safetensors raises its own SafetensorError, or OSError)
        raise CheckpointError(f"{f} is not a readable safetensors file ({e}): it is truncated or corrupt; copy or "
                              "download it again") from e


def safetensors_files(path: Path) -> dict[str, Path]:
    """Map every tensor name in the checkpoint directory to the file that holds it."""
    path = checkpoint_dir(path, need_config=False)
    index = path / "model.safetensors.index.json"
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text()).get("weight_map")
        except (json.JSONDecodeError, AttributeError) as e:
            raise CheckpointError(f"{index} is not a JSON object with a weight_map ({e}): truncated or corrupt?") from e
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{index} has no weight_map")
        missing_files = sorted({f for f in weight_map.values() if not (path / f).is_file()})
        if missing_files:
            raise CheckpointError(f"{index} names shard files that are missing: {missing_files}")
        return {name: path / f for name, f in weight_map.items()}
    files = [path / "model.safetensors"] if (path / "model.safetensors").is_file() else sorted(
        path.glob("*.safetensors"))
    names: dict[str, Path] = {}
    for f in files:
        with _open(f) as fh:
            for name in fh.keys():
                if name in names:
                    raise CheckpointError(f"tensor {name} appears in both {names[name].name} and {f.name}")
                names[name] = f
    return names


def _canonical_names(names: list[str]) -> tuple[dict[str, str], list[str]]:
    """Map stored names to canonical text-model names; return (mapping, skipped names)."""
    lm_prefix = "model.language_model."
    layout_vl = any(n.startswith(lm_prefix) for n in names)
    mapping, skipped, unexpected = {}, [], []
    for n in names:
        if n.startswith(SKIPPED_PREFIXES):
            skipped.append(n)
        elif n == "lm_head.weight":
            mapping[n] = "lm_head.weight"
        elif layout_vl and n.startswith(lm_prefix):
            mapping[n] = n[len(lm_prefix):]
        elif not layout_vl and n.startswith("model."):
            mapping[n] = n[len("model."):]
        else:
            unexpected.append(n)
    if unexpected:
        layout = "model.language_model.*" if layout_vl else "model.*"
        raise CheckpointError(
            f"unexpected tensor {unexpected[0]!r} ({len(unexpected)} unexpected in all) in a checkpoint whose "
            f"text model is stored as {layout}"
        )
    return mapping, skipped


def load_weights(
    path: str | Path,
    config: Qwen35Config | None = None,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    keep_fp32: bool = True,
) -> tuple[Qwen35Config, dict[str, torch.Tensor]]:
    """Read and check every text-model tensor.

    dtype: the compute dtype. Tensors are converted to it, except that fp32-stored tensors stay fp32 when
    ``keep_fp32`` (the published checkpoint stores ``A_log`` and the DeltaNet norm weight in fp32;
    transformers' default load rounds them to the model dtype: pass ``keep_fp32=False`` to do the same).
    Returns (config, weights) with ``weights["lm_head.weight"]`` present (the embedding itself when tied).
    """
    config, where, mapping, expected = _tensor_index(path, config)
    weights: dict[str, torch.Tensor] = {}
    handles = {}
    try:
        for stored, name in mapping.items():
            f = where[stored]
            if f not in handles:
                handles[f] = _open(f).__enter__()
            t = handles[f].get_tensor(stored)
            if name.endswith("conv1d.weight"):
                t = t[:, 0, :]  # [C, 1, K] -> [C, K]
            keep = keep_fp32 and t.dtype == torch.float32 and dtype != torch.float32
            weights[name] = t.to(device=device, dtype=torch.float32 if keep else dtype)
    finally:
        for h in handles.values():
            h.__exit__(None, None, None)

    if config.tie_word_embeddings:
        if "lm_head.weight" in weights:
            stored_head = weights.pop("lm_head.weight")
            if stored_head.shape != weights["embed_tokens.weight"].shape:
                raise CheckpointError(_shape_message("lm_head.weight", stored_head.shape,
                                                     weights["embed_tokens.weight"].shape))
            if not torch.equal(stored_head, weights["embed_tokens.weight"]):
                warnings.warn("the checkpoint has an lm_head.weight that differs from embed_tokens, but the config "
                              "ties them (tie_word_embeddings=true): the embedding is used, as in transformers")
        weights["lm_head.weight"] = weights["embed_tokens.weight"]
    return config, weights


def check_checkpoint(path: str | Path, config: Qwen35Config | None = None) -> Qwen35Config:
    """Check a checkpoint without reading its tensor data: the directory, ``config.json``, every file's header,
    and every tensor's name and shape against the config. Raises what :func:`load_weights` would (naming the
    file or tensor); returns the config. Cheap enough to run before a slow load."""
    return _tensor_index(path, config)[0]


def _tensor_index(path, config):
    """(config, file of each stored name, stored -> canonical name, expected shapes), names and shapes checked
    from the file headers."""
    path = checkpoint_dir(path, need_config=config is None)
    config = config or Qwen35Config.from_pretrained(path)
    where = safetensors_files(path)
    mapping, _ = _canonical_names(list(where))
    expected = expected_shapes(config)

    present = set(mapping.values())
    missing = [n for n in expected if n not in present]
    if missing:
        hint = ""
        n_layers_found = len({n.split(".")[1] for n in present if n.startswith("layers.")})
        if n_layers_found != config.num_hidden_layers:
            hint = (f" (the config has {config.num_hidden_layers} layers, the checkpoint has "
                    f"{n_layers_found}: the config does not match the weights)")
        raise CheckpointError(f"missing tensor {missing[0]!r} ({len(missing)} missing in all){hint}")
    extra = [s for s, n in mapping.items() if n not in expected and n != "lm_head.weight"]
    if extra:
        raise CheckpointError(
            f"unexpected tensor {extra[0]!r} ({len(extra)} unexpected in all): not part of a Qwen3.5 text model "
            f"with this config (layer_types={list(config.layer_types)})"
        )
    by_file: dict[Path, list[str]] = {}
    for stored in mapping:
        by_file.setdefault(where[stored], []).append(stored)
    for f, stored_names in by_file.items():
        with _open(f) as fh:
            for stored in stored_names:
                name = mapping[stored]
                try:
                    shape = tuple(fh.get_slice(stored).get_shape())
                except Exception as e:  # noqa: BLE001 (an index naming a tensor its shard lacks)
                    raise CheckpointError(f"tensor {stored!r} cannot be read from {f} ({e})") from e
                if name in expected and shape != expected[name]:
                    raise CheckpointError(_shape_message(stored, shape, expected[name]))
    return config, where, mapping, expected


def _shape_message(name, found, expected) -> str:
    return (f"shape mismatch for tensor {name!r}: checkpoint has {tuple(found)}, the config implies "
            f"{tuple(expected)} (does config.json match the weights?)")
