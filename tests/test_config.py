"""Config parsing: the published wrapper config, plain text configs, transformers' defaults, bad configs."""

import json

import pytest

from reference import ConfigError, Qwen35Config
from reference.config import FULL, LINEAR
from tests.conftest import ROOT, TEST_CONFIGS

PUBLISHED = ROOT / "data" / "qwen3.5-0.8b" / "config.json"


def test_published_config_parses_to_the_0_8b_preset():
    cfg = Qwen35Config.from_pretrained(PUBLISHED)
    assert cfg == Qwen35Config.qwen35_0_8b()
    assert cfg.layer_types == (LINEAR, LINEAR, LINEAR, FULL) * 6
    assert (cfg.rotary_dim, cfg.conv_dim, cfg.key_dim, cfg.value_dim) == (64, 6144, 2048, 2048)
    assert cfg.linear_layers == [i for i in range(24) if i % 4 != 3]


@pytest.mark.parametrize("name", list(TEST_CONFIGS))
@pytest.mark.parametrize("layout", ["vl", "text"])
def test_round_trip_and_agreement_with_transformers(name, layout, tmp_path):
    from transformers import AutoConfig

    cfg = TEST_CONFIGS[name]
    cfg.save(tmp_path, layout=layout)
    assert Qwen35Config.from_pretrained(tmp_path) == cfg
    hf = AutoConfig.from_pretrained(tmp_path)
    hf = getattr(hf, "text_config", hf)
    assert list(hf.layer_types) == list(cfg.layer_types)
    for f in ("hidden_size", "intermediate_size", "num_attention_heads", "num_key_value_heads", "head_dim",
              "linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim", "linear_value_head_dim",
              "linear_conv_kernel_dim", "vocab_size", "rms_norm_eps", "tie_word_embeddings", "attention_bias"):
        assert getattr(hf, f) == getattr(cfg, f), f


def test_missing_keys_take_transformers_defaults(tmp_path):
    """A minimal text config: everything else as transformers.Qwen3_5TextConfig would default it."""
    from transformers import Qwen3_5TextConfig

    minimal = {"model_type": "qwen3_5_text", "num_hidden_layers": 6, "hidden_size": 64,
               "intermediate_size": 96, "head_dim": 16, "linear_key_head_dim": 8, "linear_value_head_dim": 8}
    (tmp_path / "config.json").write_text(json.dumps(minimal))
    ours = Qwen35Config.from_pretrained(tmp_path)
    hf = Qwen3_5TextConfig(**{k: v for k, v in minimal.items() if k != "model_type"})
    assert list(hf.layer_types) == list(ours.layer_types)  # derived from full_attention_interval = 4
    assert ours.linear_num_value_heads == hf.linear_num_value_heads == 32
    assert ours.num_key_value_heads == hf.num_key_value_heads
    assert ours.rope_theta == hf.rope_parameters["rope_theta"]
    assert ours.partial_rotary_factor == hf.rope_parameters["partial_rotary_factor"]
    assert ours.tie_word_embeddings == hf.tie_word_embeddings


def test_legacy_keys_rope_theta_at_top_level():
    cfg = Qwen35Config.from_dict({"model_type": "qwen3_5_text", "rope_theta": 5e5, "partial_rotary_factor": 0.5,
                                  "num_hidden_layers": 4, "layer_types": ["mamba", "mamba", "mamba", "attention"]})
    assert cfg.rope_theta == 5e5 and cfg.partial_rotary_factor == 0.5
    assert cfg.layer_types == (LINEAR, LINEAR, LINEAR, FULL)


@pytest.mark.parametrize("change, message", [
    ({"model_type": "llama"}, "not a Qwen3.5"),
    ({"num_hidden_layers": 5}, "layer_types has 4 entries"),
    ({"layer_types": ["linear_attention", "sliding", "linear_attention", "full_attention"]}, "unknown entries"),
    ({"num_attention_heads": 3, "num_key_value_heads": 2}, "multiple of num_key_value_heads"),
    ({"linear_num_value_heads": 3, "linear_num_key_heads": 2}, "multiple of linear_num_key_heads"),
    ({"hidden_size": 0}, "hidden_size must be a positive integer"),
    ({"hidden_act": "swish2"}, "hidden_act"),
    ({"rope_parameters": {"rope_type": "yarn", "rope_theta": 1e6}}, "rope_type"),
    ({"head_dim": 4, "rope_parameters": {"rope_type": "default", "partial_rotary_factor": 0.25}}, "rotary dims"),
])
def test_bad_configs_are_refused_with_a_clear_message(change, message):
    text = Qwen35Config.tiny().text_config_dict()
    text.update(change)
    with pytest.raises(ConfigError, match=message):
        Qwen35Config.from_dict(text)


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no config.json"):
        Qwen35Config.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        Qwen35Config.from_pretrained(tmp_path)
