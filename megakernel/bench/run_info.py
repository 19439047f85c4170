"""What a results file records about the run: package versions and a file-name form of the device name."""

from __future__ import annotations

import importlib.metadata
import platform
import re

DEFAULT_DISTS = ("transformers", "numba", "numba-cuda", "triton", "flash-linear-attention", "causal-conv1d",
                 "numpy")


def device_slug(name: str) -> str:
    """A device name as a file-name part: 'NVIDIA H100 80GB HBM3' -> 'nvidia-h100-80gb-hbm3'."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "device"


def dist_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def versions(dists=DEFAULT_DISTS) -> dict:
    """Python, torch, CUDA and the given distributions' versions."""
    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda or "none"}
    for dist in dists:
        v[dist] = dist_version(dist)
    return v
