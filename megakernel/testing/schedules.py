"""Orders in which the simulator starts and interleaves the threads of a launch.

On a GPU the order in which blocks start, and threads reach an instruction, is anything. The simulator runs one
Python thread per CUDA thread, started one by one; a thread that starts first usually runs ahead for a whole GIL
switch interval. So a race whose bad order needs a *later* thread to run first never shows in a fixed order. A
schedule changes that order:

* ``forward``: blocks in index order, threads in index order within a block (what the stock simulator does);
* ``reverse``: last block first, last thread first within each block;
* ``random:<seed>``: a seeded shuffle of the blocks and of the threads within each block, plus random yields of
  the GIL (after barriers and atomics, before shared-memory writes) so threads overtake each other mid-phase.
  ``random`` alone draws a fresh seed per launch.

The schedule of a launch comes from :func:`use` (a context manager; the test suite's conftest picks one per
test), else from the environment variable ``MEGAKERNEL_SIM_SCHEDULE``, else ``forward``. It is read at every
launch and named in the message of every failure the launch raises, so a failure can be replayed::

    MEGAKERNEL_SIM_SCHEDULE=random:1234 NUMBA_ENABLE_CUDASIM=1 pytest tests/... -k ...

A replay gives the same start order and the same yield decisions; the OS still decides exactly when a Python
thread gets the GIL, so a timing-dependent failure reproduces often, not always. Races the race detector
(``megakernel.testing.races``) reports do not depend on the schedule.
"""

from __future__ import annotations

import os
import random
import time
import zlib
from contextlib import contextmanager
from dataclasses import dataclass

ENV_VAR = "MEGAKERNEL_SIM_SCHEDULE"
KINDS = ("forward", "reverse", "random")
# random schedules: probability that a thread yields the GIL at a yield point (barrier exit, atomic, shared write).
YIELD_PROBABILITY = 0.1


@dataclass(frozen=True)
class Schedule:
    kind: str
    seed: int | None = None

    def __str__(self) -> str:
        return self.kind if self.seed is None else f"{self.kind}:{self.seed}"

    def start_order(self, nblocks: int, block_threads: int) -> list[int]:
        """Linear thread ids (``block * block_threads + thread``) in the order to start them."""
        blocks = list(range(nblocks))
        within = list(range(block_threads))
        if self.kind == "forward":
            return [b * block_threads + t for b in blocks for t in within]
        if self.kind == "reverse":
            return [b * block_threads + t for b in reversed(blocks) for t in reversed(within)]
        rng = random.Random(self.seed)
        rng.shuffle(blocks)
        order = []
        for b in blocks:
            rng.shuffle(within)
            order.extend(b * block_threads + t for t in within)
        return order

    def yielder(self, tid: int):
        """A function that, called at a yield point of thread ``tid``, sometimes gives the GIL away (random
        schedules only; None otherwise)."""
        if self.kind != "random":
            return None
        rng = random.Random(self.seed * 1_000_003 + tid)
        draw = rng.random
        sleep = time.sleep

        def maybe_yield():
            if draw() < YIELD_PROBABILITY:
                sleep(0)  # releases the GIL; a waiting thread takes it (measured: a switch almost every time)

        return maybe_yield


FORWARD = Schedule("forward")

# Schedules of the launches since the last clear() (the test suite names them when a test fails).
launched: list[Schedule] = []

_override: Schedule | None = None  # set by use(); module-wide (launches may come from helper threads)


def parse(text: str, source: str = ENV_VAR) -> Schedule:
    """``forward`` | ``reverse`` | ``random`` | ``random:<seed>`` (seed: a non-negative integer)."""
    kind, _, seed = text.strip().partition(":")
    kind = kind.lower()
    if kind not in KINDS or (seed and kind != "random"):
        raise ValueError(f"{source}={text!r}: expected forward, reverse, random or random:<seed>")
    if kind != "random":
        return Schedule(kind)
    if not seed:
        return Schedule("random", random.SystemRandom().randrange(1 << 31))
    if not seed.isdigit():
        raise ValueError(f"{source}={text!r}: the seed after 'random:' must be a non-negative integer")
    return Schedule("random", int(seed))


def current() -> Schedule:
    """The schedule of a launch starting now: :func:`use`'s, else the environment's, else forward."""
    if _override is not None:
        return _override
    text = os.environ.get(ENV_VAR, "").strip()
    return parse(text) if text else FORWARD


@contextmanager
def use(schedule: str | Schedule | None):
    """Launches in this block use ``schedule`` (``"reverse"``, ``"random:7"``; ``"random"`` draws one seed;
    None: the environment's, read at each launch)."""
    global _override
    if isinstance(schedule, str):
        schedule = parse(schedule, source="schedule")
    before, _override = _override, schedule
    try:
        yield schedule
    finally:
        _override = before


def for_test(test_id: str) -> Schedule:
    """The schedule the test suite gives a test: the environment's if ``MEGAKERNEL_SIM_SCHEDULE`` is set (a
    replay), else forward, reverse or random by a hash of the test id (so the suite as a whole runs under all
    three, each test always under the same one, and no test runs twice)."""
    text = os.environ.get(ENV_VAR, "").strip()
    if text:
        return parse(text)
    h = zlib.crc32(test_id.encode())
    kind = KINDS[h % len(KINDS)]
    return Schedule(kind, h >> 2) if kind == "random" else Schedule(kind)
