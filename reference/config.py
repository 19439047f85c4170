"""Qwen3.5 text-model configuration: parse a Hugging Face ``config.json`` into a dataclass.

A published Qwen3.5 checkpoint is a vision-language wrapper: its ``config.json`` has ``model_type: "qwen3_5"`` and
the text model's settings under ``text_config``. A plain text checkpoint has ``model_type: "qwen3_5_text"`` at
the top level. Both parse to the same :class:`Qwen35Config`. Keys a config leaves out take the defaults that
``transformers.Qwen3_5TextConfig`` uses, so this parser and transformers agree on every valid config.

Shapes used throughout the project (names as in the docstrings of every op):

====================  =====================================  =========  ============
symbol                meaning                                0.8B       field
====================  =====================================  =========  ============
``D``                 hidden size                            1024       hidden_size
``F``                 MLP intermediate size                  3584       intermediate_size
``V``                 vocabulary (rows of the LM head)       248320     vocab_size
``Hq``, ``Hkv``       attention query / KV heads             8, 2       num_attention_heads, num_key_value_heads
``Dh``                attention head dim                     256        head_dim
``R``                 rotary dims (first R of each head)     64         rotary_dim
``Hk``, ``Hv``        DeltaNet key / value heads             16, 16     linear_num_key_heads, linear_num_value_heads
``Dk``, ``Dv``        DeltaNet key / value head dims         128, 128   linear_key_head_dim, linear_value_head_dim
``C``                 conv channels = 2*Hk*Dk + Hv*Dv        6144       conv_dim
``K``                 conv kernel width (state keeps K-1)    4          linear_conv_kernel_dim
====================  =====================================  =========  ============
"""

from __future__ import annotations

import copy
import dataclasses
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path

LINEAR = "linear_attention"
FULL = "full_attention"
_LEGACY_LAYER_TYPES = {"mamba": LINEAR, "conv": LINEAR, "attention": FULL}
SUPPORTED_ACTIVATIONS = ("silu", "gelu", "gelu_pytorch_tanh", "relu")

# transformers.Qwen3_5TextConfig defaults, used for keys a config.json leaves out.
_HF_TEXT_DEFAULTS = dict(
    vocab_size=248320,
    hidden_size=4096,
    intermediate_size=12288,
    num_hidden_layers=32,
    num_attention_heads=16,
    num_key_value_heads=4,
    hidden_act="silu",
    max_position_embeddings=32768,
    rms_norm_eps=1e-6,
    tie_word_embeddings=False,
    attention_bias=False,
    head_dim=256,
    linear_conv_kernel_dim=4,
    linear_key_head_dim=128,
    linear_value_head_dim=128,
    linear_num_key_heads=16,
    linear_num_value_heads=32,
    eos_token_id=None,
    full_attention_interval=4,
    rope_theta=10000.0,
    partial_rotary_factor=0.25,
)

# The published Qwen3.5-0.8B vision tower settings, written into synthetic wrapper configs so that they look
# like the real thing to transformers (the text model never uses them).
_PUBLISHED_VISION_CONFIG = {
    "deepstack_visual_indexes": [],
    "depth": 12,
    "hidden_act": "gelu_pytorch_tanh",
    "hidden_size": 768,
    "in_channels": 3,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "model_type": "qwen3_5",
    "num_heads": 12,
    "num_position_embeddings": 2304,
    "out_hidden_size": 1024,
    "patch_size": 16,
    "spatial_merge_size": 2,
    "temporal_patch_size": 2,
}


class ConfigError(ValueError):
    """A config.json that is not a valid Qwen3.5 text config (the message names the field)."""


@dataclass(frozen=True)
class Qwen35Config:
    """The Qwen3.5 text model's shape and numerics. See the module docstring for the symbols."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    layer_types: tuple[str, ...]
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    linear_num_key_heads: int
    linear_num_value_heads: int
    linear_key_head_dim: int
    linear_value_head_dim: int
    linear_conv_kernel_dim: int = 4
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    partial_rotary_factor: float = 0.25
    max_position_embeddings: int = 32768
    tie_word_embeddings: bool = False
    attention_bias: bool = False
    hidden_act: str = "silu"
    eos_token_id: int | None = None
    mtp_num_hidden_layers: int = 0
    # The rest of the source config.json (vision tower, token ids, rope extras), kept so a config round-trips.
    extra: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        object.__setattr__(self, "layer_types", tuple(self.layer_types))
        self.validate()

    # ---------------------------------------------------------------- derived sizes
    @property
    def rotary_dim(self) -> int:
        """R: RoPE rotates the first R dims of each attention head (partial RoPE)."""
        return int(self.head_dim * self.partial_rotary_factor)

    @property
    def key_dim(self) -> int:
        """Hk * Dk: width of the DeltaNet q and k projections."""
        return self.linear_num_key_heads * self.linear_key_head_dim

    @property
    def value_dim(self) -> int:
        """Hv * Dv: width of the DeltaNet v and z projections."""
        return self.linear_num_value_heads * self.linear_value_head_dim

    @property
    def conv_dim(self) -> int:
        """C: channels of the depthwise causal conv (q | k | v)."""
        return 2 * self.key_dim + self.value_dim

    @property
    def linear_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == LINEAR]

    @property
    def full_layers(self) -> list[int]:
        return [i for i, t in enumerate(self.layer_types) if t == FULL]

    # ---------------------------------------------------------------- checks
    def validate(self) -> None:
        def need(cond: bool, msg: str) -> None:
            if not cond:
                raise ConfigError(f"invalid Qwen3.5 config: {msg}")

        for name in (
            "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "head_dim", "linear_num_key_heads", "linear_num_value_heads",
            "linear_key_head_dim", "linear_value_head_dim", "linear_conv_kernel_dim", "max_position_embeddings",
        ):
            value = getattr(self, name)
            need(isinstance(value, int) and not isinstance(value, bool) and value > 0,
                 f"{name} must be a positive integer, got {value!r}")
        need(len(self.layer_types) == self.num_hidden_layers,
             f"layer_types has {len(self.layer_types)} entries but num_hidden_layers is {self.num_hidden_layers}")
        bad = sorted({t for t in self.layer_types if t not in (LINEAR, FULL)})
        need(not bad, f"layer_types has unknown entries {bad}; expected '{LINEAR}' or '{FULL}'")
        need(self.num_attention_heads % self.num_key_value_heads == 0,
             f"num_attention_heads ({self.num_attention_heads}) must be a multiple of num_key_value_heads "
             f"({self.num_key_value_heads})")
        need(self.linear_num_value_heads % self.linear_num_key_heads == 0,
             f"linear_num_value_heads ({self.linear_num_value_heads}) must be a multiple of linear_num_key_heads "
             f"({self.linear_num_key_heads})")
        need(0.0 < self.partial_rotary_factor <= 1.0,
             f"partial_rotary_factor must be in (0, 1], got {self.partial_rotary_factor}")
        need(self.rotary_dim >= 2 and self.rotary_dim % 2 == 0,
             f"rotary dims head_dim*partial_rotary_factor = {self.rotary_dim} must be even and >= 2")
        need(self.rms_norm_eps > 0, f"rms_norm_eps must be positive, got {self.rms_norm_eps}")
        need(self.rope_theta > 0, f"rope_theta must be positive, got {self.rope_theta}")
        need(self.hidden_act in SUPPORTED_ACTIVATIONS,
             f"hidden_act {self.hidden_act!r} is not supported (supported: {', '.join(SUPPORTED_ACTIVATIONS)})")

    # ---------------------------------------------------------------- parsing
    @classmethod
    def from_pretrained(cls, path: str | Path) -> "Qwen35Config":
        """Read ``config.json`` from a checkpoint directory (or a path to the json file itself)."""
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"{path} does not exist (expected a checkpoint directory or a config.json)")
        file = path / "config.json" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no config.json at {file}")
        try:
            data = json.loads(file.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{file} is not valid JSON: {e}") from e
        return cls.from_dict(data)

    @classmethod
    def from_dict(cls, data: dict) -> "Qwen35Config":
        """Parse a config dict: the VL wrapper (uses ``text_config``) or a plain text config."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config must be a JSON object, got {type(data).__name__}")
        data = copy.deepcopy(data)
        model_type = data.get("model_type")
        if "text_config" in data:
            if model_type not in (None, "qwen3_5"):
                raise ConfigError(f"model_type {model_type!r} is not a Qwen3.5 model (expected 'qwen3_5')")
            text = data["text_config"]
            wrapper = {k: v for k, v in data.items() if k != "text_config"}
        else:
            if model_type not in (None, "qwen3_5_text", "qwen3_5"):
                raise ConfigError(
                    f"model_type {model_type!r} is not a Qwen3.5 text model (expected 'qwen3_5_text' or a "
                    "'qwen3_5' wrapper with a text_config)"
                )
            text, wrapper = data, {}
        if text.get("model_type") not in (None, "qwen3_5_text"):
            raise ConfigError(f"text_config.model_type {text.get('model_type')!r} is not 'qwen3_5_text'")

        get = lambda key: text.get(key, _HF_TEXT_DEFAULTS[key])  # noqa: E731
        n_layers = get("num_hidden_layers")
        layer_types = text.get("layer_types")
        if layer_types is None:
            interval = get("full_attention_interval")
            layer_types = [LINEAR if (i + 1) % interval else FULL for i in range(n_layers)]
        layer_types = [_LEGACY_LAYER_TYPES.get(t, t) for t in layer_types]

        rope = dict(text.get("rope_parameters") or text.get("rope_scaling") or {})
        rope_type = rope.get("rope_type", rope.get("type", "default"))
        if rope_type != "default":
            raise ConfigError(f"rope_type {rope_type!r} is not supported (only 'default' RoPE)")
        rope_theta = rope.get("rope_theta", text.get("rope_theta", _HF_TEXT_DEFAULTS["rope_theta"]))
        prf = rope.get("partial_rotary_factor", text.get("partial_rotary_factor",
                                                         _HF_TEXT_DEFAULTS["partial_rotary_factor"]))
        if text.get("attn_output_gate", True) is not True:
            warnings.warn("attn_output_gate is false in the config, but Qwen3.5 attention (and transformers) "
                          "always applies the sigmoid output gate; the flag is ignored")
        eos = text.get("eos_token_id", wrapper.get("eos_token_id"))
        if isinstance(eos, list):
            eos = eos[0] if eos else None
        tie = text.get("tie_word_embeddings", wrapper.get("tie_word_embeddings", _HF_TEXT_DEFAULTS[
            "tie_word_embeddings"]))
        known = set(_HF_TEXT_DEFAULTS) | {"layer_types", "rope_parameters", "rope_scaling", "mtp_num_hidden_layers"}
        extra = {"wrapper": wrapper, "text": {k: v for k, v in text.items() if k not in known}}
        try:
            return cls(
                vocab_size=get("vocab_size"),
                hidden_size=get("hidden_size"),
                intermediate_size=get("intermediate_size"),
                num_hidden_layers=n_layers,
                layer_types=tuple(layer_types),
                num_attention_heads=get("num_attention_heads"),
                num_key_value_heads=get("num_key_value_heads"),
                head_dim=get("head_dim") or get("hidden_size") // get("num_attention_heads"),
                linear_num_key_heads=get("linear_num_key_heads"),
                linear_num_value_heads=get("linear_num_value_heads"),
                linear_key_head_dim=get("linear_key_head_dim"),
                linear_value_head_dim=get("linear_value_head_dim"),
                linear_conv_kernel_dim=get("linear_conv_kernel_dim"),
                rms_norm_eps=float(get("rms_norm_eps")),
                rope_theta=float(rope_theta),
                partial_rotary_factor=float(prf),
                max_position_embeddings=get("max_position_embeddings"),
                tie_word_embeddings=bool(tie),
                attention_bias=bool(get("attention_bias")),
                hidden_act=get("hidden_act"),
                eos_token_id=eos,
                mtp_num_hidden_layers=int(text.get("mtp_num_hidden_layers", 0) or 0),
                extra=extra,
            )
        except TypeError as e:  # e.g. a list where an int belongs
            raise ConfigError(f"invalid Qwen3.5 config: {e}") from e

    # ---------------------------------------------------------------- writing
    def text_config_dict(self) -> dict:
        """The ``text_config`` as transformers writes it (model_type ``qwen3_5_text``)."""
        d = dict(self.extra.get("text", {}))
        d.update(
            model_type="qwen3_5_text",
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            intermediate_size=self.intermediate_size,
            num_hidden_layers=self.num_hidden_layers,
            layer_types=list(self.layer_types),
            num_attention_heads=self.num_attention_heads,
            num_key_value_heads=self.num_key_value_heads,
            head_dim=self.head_dim,
            linear_num_key_heads=self.linear_num_key_heads,
            linear_num_value_heads=self.linear_num_value_heads,
            linear_key_head_dim=self.linear_key_head_dim,
            linear_value_head_dim=self.linear_value_head_dim,
            linear_conv_kernel_dim=self.linear_conv_kernel_dim,
            rms_norm_eps=self.rms_norm_eps,
            max_position_embeddings=self.max_position_embeddings,
            tie_word_embeddings=self.tie_word_embeddings,
            attention_bias=self.attention_bias,
            attn_output_gate=True,
            hidden_act=self.hidden_act,
            eos_token_id=self.eos_token_id,
            mtp_num_hidden_layers=self.mtp_num_hidden_layers,
            rope_parameters={
                "rope_type": "default",
                "rope_theta": self.rope_theta,
                "partial_rotary_factor": self.partial_rotary_factor,
                "mrope_interleaved": True,
                "mrope_section": [11, 11, 10],
            },
        )
        d.setdefault("dtype", "bfloat16")
        d.setdefault("mamba_ssm_dtype", "float32")
        return d

    def to_dict(self, layout: str = "vl") -> dict:
        """A config.json: ``layout="vl"`` is the published wrapper, ``"text"`` a plain text config."""
        text = self.text_config_dict()
        if layout == "text":
            text["architectures"] = ["Qwen3_5ForCausalLM"]
            return text
        if layout != "vl":
            raise ValueError(f"layout must be 'vl' or 'text', got {layout!r}")
        wrapper = dict(self.extra.get("wrapper", {}))
        wrapper.setdefault("architectures", ["Qwen3_5ForConditionalGeneration"])
        wrapper["model_type"] = "qwen3_5"
        wrapper["tie_word_embeddings"] = self.tie_word_embeddings
        wrapper.setdefault("vision_config", dict(_PUBLISHED_VISION_CONFIG, out_hidden_size=self.hidden_size))
        for key, value in (("image_token_id", 248056), ("video_token_id", 248057),
                           ("vision_start_token_id", 248053), ("vision_end_token_id", 248054)):
            wrapper.setdefault(key, value)
        wrapper["text_config"] = text
        return wrapper

    def save(self, path: str | Path, layout: str = "vl") -> Path:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        out = path / "config.json"
        out.write_text(json.dumps(self.to_dict(layout), indent=2) + "\n")
        return out

    def replace(self, **changes) -> "Qwen35Config":
        """A copy with some fields changed (``layer_types`` follows ``num_hidden_layers`` if not given)."""
        if "num_hidden_layers" in changes and "layer_types" not in changes:
            n = changes["num_hidden_layers"]
            changes["layer_types"] = tuple(LINEAR if (i + 1) % 4 else FULL for i in range(n))
        return dataclasses.replace(self, **changes)

    # ---------------------------------------------------------------- presets
    @classmethod
    def qwen35_0_8b(cls) -> "Qwen35Config":
        """The published Qwen3.5-0.8B text model (24 layers: [3 x DeltaNet, 1 x attention] x 6)."""
        return cls(
            vocab_size=248320,
            hidden_size=1024,
            intermediate_size=3584,
            num_hidden_layers=24,
            layer_types=tuple([LINEAR, LINEAR, LINEAR, FULL] * 6),
            num_attention_heads=8,
            num_key_value_heads=2,
            head_dim=256,
            linear_num_key_heads=16,
            linear_num_value_heads=16,
            linear_key_head_dim=128,
            linear_value_head_dim=128,
            linear_conv_kernel_dim=4,
            rms_norm_eps=1e-6,
            rope_theta=10_000_000.0,
            partial_rotary_factor=0.25,
            max_position_embeddings=262144,
            tie_word_embeddings=True,
            attention_bias=False,
            hidden_act="silu",
            eos_token_id=248044,
            mtp_num_hidden_layers=1,
        )

    @classmethod
    def tiny(cls, **overrides) -> "Qwen35Config":
        """A few-layer config with deliberately awkward sizes, for CPU tests and the CI notebooks.

        Defaults: 4 layers ([3 x DeltaNet, 1 x attention]), hidden 48, MLP 112, vocab 515, attention 2 query heads
        over 1 KV head of dim 32 (8 rotary dims), DeltaNet 2 key heads and 4 value heads (grouped values, as in
        the larger Qwen3.5 sizes) of dim 16.
        """
        base = dict(
            vocab_size=515,
            hidden_size=48,
            intermediate_size=112,
            num_hidden_layers=4,
            layer_types=(LINEAR, LINEAR, LINEAR, FULL),
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            linear_num_key_heads=2,
            linear_num_value_heads=4,
            linear_key_head_dim=16,
            linear_value_head_dim=16,
            linear_conv_kernel_dim=4,
            rms_norm_eps=1e-6,
            rope_theta=10_000_000.0,
            partial_rotary_factor=0.25,
            max_position_embeddings=4096,
            tie_word_embeddings=True,
            eos_token_id=0,
        )
        if "num_hidden_layers" in overrides and "layer_types" not in overrides:
            n = overrides["num_hidden_layers"]
            overrides["layer_types"] = tuple(LINEAR if (i + 1) % 4 else FULL for i in range(n))
        base.update(overrides)
        return cls(**base)
