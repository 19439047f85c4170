"""Stages 2 and 3 of the tutorial: per-op Numba CUDA kernels, the layered decoder, the persistent megakernel.

``megakernel.load(path, stage="reference" | "layered" | "persistent")`` is the one entry point (see
``megakernel.stages``). Under ``NUMBA_ENABLE_CUDASIM=1`` importing this package makes Numba's CUDA simulator honest
(concurrent blocks, real grid barriers, warp primitives): see ``megakernel/testing/simulator.py``.
"""

import os as _os

import numba as _numba

# Small grids are deliberate here (a 1024-row matvec, one block per head): Numba's "low occupancy" warning would
# only alarm users. NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS=1 brings it back.
if "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS" not in _os.environ:
    _numba.config.CUDA_LOW_OCCUPANCY_WARNINGS = 0

if _numba.config.ENABLE_CUDASIM:
    from megakernel.testing import simulator as _simulator

    _simulator.install()

STAGES = ("reference", "layered", "persistent")


def load(path, stage: str = "layered", **kwargs):
    """Load a checkpoint for one stage; see :func:`megakernel.stages.load`."""
    from megakernel.stages import load as _load

    return _load(path, stage, **kwargs)


__all__ = ["STAGES", "load"]
