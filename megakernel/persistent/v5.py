"""Persistent megakernel, version 5: version 4 with a grid barrier of one release-add and acquire-polls on a
counter that only grows.

What changes from version 4, and why. Version 4 passes 134 grid barriers per token, and each cost ~1.5 us from the
last block's arrival to the first block's departure, plus the spread of the arrivals. Its barrier is the
cooperative ``grid.sync()``; the hand-written counter barrier (``counter``) was no faster: thread 0 of each block
reads the generation (one L2 round trip), fences (``membar.gl``: waits until the block's writes are visible),
adds its arrival (a round trip); the last block resets the count, fences again and bumps the generation (two
more), and the others see the new generation one poll later: about five dependent round trips through an L2
that is busy with the weight stream.

Version 5's barrier (``monotonic``, ``phases.make_barrier``) keeps one arrival counter that is never reset
(``CTL_ARRIVALS``, mod 2^32). After the block's ``syncthreads``, thread 0 adds 1 with ``red.release.gpu`` (the
release is in the instruction: no separate fence, no value returned) and polls with ``ld.acquire.gpu`` until the
counter reaches base + blocks x (barriers passed + 1): the last block's add and the others' next poll, about two
round trips. The base is the counter's value when the launch started: block 0 stores it for the next launch
after the last barrier (``make_barrier_close``), and the kernel boundary orders that store before the next
launch reads it, so back-to-back launches (one per token) need no host write between them.

On the H100 at context 512 (profile builds, ``tools/profile_persistent.py``; NOTES.md): 1,416 -> 1,275 us per
step, 10 % faster; the mean block's wait per barrier fell from ~2.5 to ~1.9 us.

Measured and not kept (build switches, ``v2.OPTIONS``): ``warp_release``, the ring's slots released warp by warp
with the last warp out refilling them instead of one block barrier per page (``v2.release_slot``): no faster
(1,301 us with the monotonic barrier, 1,392 with version 4's); the consumers' own arithmetic is the page's cost,
not the barrier between pages. L2 prefetches of the pages beyond the ring, issued while thread 0 waits at the
barrier, with or without the evict-first policy: 1.4-1.5x slower.

Memory ordering: the release-add is cumulative over the block's writes ordered before it by the
``syncthreads``; the acquire-poll that sees the count orders the block's later reads after every block's
release; the closing ``syncthreads`` extends that to the whole block. In the CUDA simulator the release is a
fence plus an atomic and each poll an atomic read, as the race detector models them: a block that leaves one
arrival early reads a buffer another block has not finished writing, and is reported.
"""

from __future__ import annotations

from . import v2, v3, v4

VERSION = 5
DESCRIPTION = "version 4 with the monotonic arrival-counter grid barrier (release-add, acquire-poll)"
DEFAULTS = {**v4.DEFAULTS, "monotonic": True}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}

configure = v3.configure
kernel_key = v2.kernel_key
extra_args = v2.extra_args
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)


__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
