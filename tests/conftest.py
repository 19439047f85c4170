"""Shared fixtures: tiny synthetic checkpoints (written once per session) and the test configs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from reference import Qwen35Config, write_synthetic_checkpoint  # noqa: E402
from reference.config import FULL, LINEAR  # noqa: E402

torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))

L, A = LINEAR, FULL

# Configs with awkward sizes: odd multiples in the hidden/MLP sizes, grouped value heads (Hv = 2 x Hk as in the
# larger Qwen3.5 models), 1 and 3 layer groups, a layer pattern that does not start with DeltaNet, GQA 1:1 and 3:1.
TEST_CONFIGS = {
    "tiny": Qwen35Config.tiny(),
    "odd_sizes_3_groups": Qwen35Config.tiny(
        hidden_size=72, intermediate_size=200, num_hidden_layers=12, vocab_size=1021,
        num_attention_heads=3, num_key_value_heads=1, head_dim=24, linear_num_key_heads=3,
        linear_num_value_heads=3, linear_key_head_dim=8, linear_value_head_dim=24, linear_conv_kernel_dim=3,
        rope_theta=10000.0, partial_rotary_factor=0.5, tie_word_embeddings=False,
    ),
    "grouped_values_1_group": Qwen35Config.tiny(
        hidden_size=40, intermediate_size=88, num_hidden_layers=4, vocab_size=333,
        num_attention_heads=4, num_key_value_heads=4, head_dim=16, linear_num_key_heads=2,
        linear_num_value_heads=4, linear_key_head_dim=12, linear_value_head_dim=20,
    ),
    "attention_first_bias": Qwen35Config.tiny(
        num_hidden_layers=5, layer_types=(A, L, L, A, L), attention_bias=True, hidden_size=56,
        intermediate_size=136, linear_num_value_heads=6, linear_num_key_heads=3,
    ),
}


@pytest.fixture(autouse=True)
def simulator_schedule(request):
    """Every test's kernel launches run under one simulator schedule (forward, reverse or random, picked from the
    test id; MEGAKERNEL_SIM_SCHEDULE overrides it to replay a failure), named in the report if the test fails."""
    from numba import config

    if not config.ENABLE_CUDASIM:
        yield None
        return
    from megakernel.testing import schedules

    schedule = schedules.for_test(request.node.nodeid)
    schedules.launched.clear()
    request.node.simulator_schedules = schedules.launched
    with schedules.use(schedule):
        yield schedule


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    report = (yield).get_result()
    launched = getattr(item, "simulator_schedules", None)
    if report.failed and launched:
        from megakernel.testing.schedules import ENV_VAR

        names = ", ".join(map(str, launched))
        report.sections.append(("simulator schedules", f"this test's launches ran under {names} (replay one: "
                                                       f"{ENV_VAR}={launched[-1]} pytest '{item.nodeid}')"))


@pytest.fixture(scope="session")
def checkpoint_factory(tmp_path_factory):
    """checkpoint_factory(name, **write_kwargs) -> path; each distinct request is written once per session."""
    cache: dict = {}

    def make(name: str, config: Qwen35Config | None = None, seed: int = 0, **kwargs) -> Path:
        config = config or TEST_CONFIGS[name]
        key = (name, seed, tuple(sorted(kwargs.items())))
        if key not in cache:
            path = tmp_path_factory.mktemp(f"ckpt_{name}")
            cache[key] = write_synthetic_checkpoint(path, config, seed=seed, **kwargs)
        return cache[key]

    return make


@pytest.fixture(scope="session")
def tiny_checkpoint(checkpoint_factory) -> Path:
    return checkpoint_factory("tiny")
