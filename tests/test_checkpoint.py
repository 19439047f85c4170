"""Checkpoint layout and loading: the published layout, sharding, skipped tensors, and every error."""

import json
import re

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from reference import CheckpointError, Qwen35Config, load_model, load_weights, write_synthetic_checkpoint
from reference.synthetic import stored_names
from tests.conftest import ROOT, TEST_CONFIGS

PUBLISHED_KEYS = ROOT / "data" / "qwen3.5-0.8b" / "checkpoint_keys.txt"


def published_text_tensors() -> dict[str, tuple]:
    out = {}
    for line in PUBLISHED_KEYS.read_text().splitlines():
        name, shape = line.split("\t")
        if name.startswith("model.language_model."):
            out[name] = tuple(json.loads(shape))
    return out


def test_synthetic_layout_is_the_published_layout():
    """Every text-model tensor of the published checkpoint, same names, same shapes."""
    from reference.checkpoint import expected_shapes

    cfg = Qwen35Config.qwen35_0_8b()
    shapes = expected_shapes(cfg)
    ours = {stored: shapes[name] for name, stored in stored_names(cfg, "vl").items()}
    assert ours == published_text_tensors()


def test_synthetic_checkpoint_is_deterministic_and_non_trivial(tmp_path, tiny_checkpoint):
    again = write_synthetic_checkpoint(tmp_path / "again", TEST_CONFIGS["tiny"], seed=0)
    a, b = load_file(tiny_checkpoint / "model.safetensors"), load_file(again / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    other = load_file(write_synthetic_checkpoint(tmp_path / "s1", TEST_CONFIGS["tiny"], seed=1) / "model.safetensors")
    assert not torch.equal(a["model.language_model.embed_tokens.weight"], other["model.language_model.embed_tokens.weight"])
    # fp32 where the published checkpoint is fp32; bf16 elsewhere
    assert a["model.language_model.layers.0.linear_attn.A_log"].dtype == torch.float32
    assert a["model.language_model.layers.0.linear_attn.norm.weight"].dtype == torch.float32
    assert a["model.language_model.layers.0.linear_attn.dt_bias"].dtype == torch.bfloat16
    # nothing left at its trivial initial value
    assert a["model.language_model.norm.weight"].abs().mean() > 0.05  # (1 + w) norms: w != 0
    assert (a["model.language_model.layers.0.linear_attn.norm.weight"] - 1).abs().mean() > 0.02
    assert a["model.language_model.layers.0.linear_attn.A_log"].std() > 0.1
    assert a["model.language_model.layers.0.linear_attn.dt_bias"].float().std() > 0.1
    with safe_open(tiny_checkpoint / "model.safetensors", "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_loads_in_transformers(tiny_checkpoint):
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(tiny_checkpoint, dtype=torch.float32)
    assert type(hf).__name__ == "Qwen3_5ForCausalLM"


def test_dtype_and_keep_fp32(tiny_checkpoint):
    _, w = load_weights(tiny_checkpoint, dtype=torch.bfloat16)
    assert w["layers.0.linear_attn.A_log"].dtype == torch.float32
    assert w["layers.0.linear_attn.in_proj_qkv.weight"].dtype == torch.bfloat16
    _, w = load_weights(tiny_checkpoint, dtype=torch.bfloat16, keep_fp32=False)
    assert w["layers.0.linear_attn.A_log"].dtype == torch.bfloat16
    _, w = load_weights(tiny_checkpoint)
    assert all(t.dtype == torch.float32 for t in w.values())
    assert w["lm_head.weight"] is w["embed_tokens.weight"]  # tied


def _rewrite(src, dst, edit):
    """Copy a single-file checkpoint, editing its tensor dict."""
    dst.mkdir()
    (dst / "config.json").write_text((src / "config.json").read_text())
    tensors = load_file(src / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_published_extras_are_accepted_and_skipped(tiny_checkpoint, tmp_path):
    def add(t):
        t["model.visual.patch_embed.proj.bias"] = torch.zeros(8)
        t["mtp.fc.weight"] = torch.zeros(4, 4)
        t["lm_head.weight"] = t["model.language_model.embed_tokens.weight"].clone()

    path = _rewrite(tiny_checkpoint, tmp_path / "extras", add)
    ref = load_model(tiny_checkpoint).prefill([1, 2, 3])[0]
    assert torch.equal(load_model(path).prefill([1, 2, 3])[0], ref)


def test_tied_lm_head_that_differs_warns(tiny_checkpoint, tmp_path):
    def add(t):
        t["lm_head.weight"] = torch.zeros_like(t["model.language_model.embed_tokens.weight"])

    with pytest.warns(UserWarning, match="lm_head.weight that differs"):
        load_weights(_rewrite(tiny_checkpoint, tmp_path / "head", add))


@pytest.mark.parametrize("edit, message", [
    (lambda t: t.pop("model.language_model.layers.2.linear_attn.A_log"),
     "missing tensor 'layers.2.linear_attn.A_log'"),
    (lambda t: t.update({"model.language_model.layers.0.linear_attn.extra.weight": torch.zeros(2)}),
     "unexpected tensor 'model.language_model.layers.0.linear_attn.extra.weight'"),
    (lambda t: t.update({"something.else": torch.zeros(2)}), "unexpected tensor 'something.else'"),
    (lambda t: t.update({"model.language_model.layers.1.mlp.up_proj.weight": torch.zeros(3, 3)}),
     re.escape("shape mismatch for tensor 'model.language_model.layers.1.mlp.up_proj.weight': checkpoint has (3, 3)")),
])
def test_bad_checkpoints_are_refused_with_the_tensor_named(tiny_checkpoint, tmp_path, edit, message):
    with pytest.raises(CheckpointError, match=message):
        load_weights(_rewrite(tiny_checkpoint, tmp_path / "bad", edit))


def test_config_that_does_not_match_the_weights(tiny_checkpoint, tmp_path):
    wrong_layers = TEST_CONFIGS["tiny"].replace(num_hidden_layers=8)
    path = _rewrite(tiny_checkpoint, tmp_path / "layers", lambda t: None)
    wrong_layers.save(path)
    with pytest.raises(CheckpointError, match="config has 8 layers, the checkpoint has 4"):
        load_weights(path)
    wrong_width = TEST_CONFIGS["tiny"].replace(intermediate_size=96)
    wrong_width.save(path)
    with pytest.raises(CheckpointError, match="shape mismatch.*does config.json match the weights"):
        load_weights(path)


def test_missing_files(tmp_path, tiny_checkpoint):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.json").write_text((tiny_checkpoint / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match="no \\*.safetensors"):
        load_weights(empty)


def test_sharded_index_with_missing_shard(checkpoint_factory):
    path = checkpoint_factory("grouped_values_1_group", layout="text", max_shard_bytes=40_000)
    shards = sorted(path.glob("model-*.safetensors"))
    assert len(shards) > 1
    _, w = load_weights(path)
    assert "lm_head.weight" in w
    shards[-1].rename(shards[-1].with_suffix(".moved"))
    try:
        with pytest.raises(CheckpointError, match="shard files that are missing"):
            load_weights(path)
    finally:
        shards[-1].with_suffix(".moved").rename(shards[-1])
