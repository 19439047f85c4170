"""Stage 3: the persistent megakernel (one launch decodes a token, or N tokens).

* ``plan``     -- every size, offset and launch choice for one config (refuses what the kernel cannot run);
* ``schedule`` -- the kernel's phases and barriers as Python data: drawn by notebook 07, checked by the tests
                  (dependencies, barrier count), executable in torch;
* ``v1``       -- version 1: the layered kernels' bodies as phases, a grid barrier after each;
* ``v2``       -- version 2: the weights streamed through a shared-memory ring by the copy engine (``tma``,
                  ``pages``), ahead of the barriers; its build switches are the measured variants (NOTES.md);
* ``v3``       -- version 3: version 2 with 4x the attention-decode work items;
* ``v4``       -- version 4: version 3 with the weight stream evict-first in L2 and two rows per warp pass in
                  the matvec consumer;
* ``v5``       -- version 5: version 4 with the monotonic grid barrier (one release-add per block, acquire-polls
                  on a counter that is never reset);
* ``v6``       -- version 6: version 5 with two rows per warp butterfly, x in registers and the mixer bodies
                  out of line (a page consumer that issues fewer instructions);
* ``v7``       -- version 7: version 6 with each MLP in one phase, its down projection split over the blocks and
                  summed in fixed point by the copy engine's bulk reductions (``split_down``);
* ``v8``       -- version 8: version 7 with the LM head's pages fetched 64 KB at a time (one copy for two
                  adjacent slots of the ring; ``pages.page_table(pairs=)``);
* ``v9``       -- version 9: version 8 with the page loops' bookkeeping made cheap (the ring slot and parity
                  carried from page to page, 32-bit remainders and quotients, no per-piece guard) and each block's
                  copy descriptors in shared memory;
* ``v10``      -- version 10: version 9 with the attention decode body compiled into the kernel instead of called
                  out of line;
* ``v11``      -- version 11: version 10 with the pages of hidden-size rows multiplied on the tensor cores;
* ``v12``      -- version 12: version 10 with the DeltaNet q/k conv-state shift done by the next
                  phase (no reader count on the items' critical path) and the state slabs loaded first;
* ``v13``      -- version 13: version 12 with each DeltaNet layer's in_proj handed to its items as
                  flag-in-data words (``handoff``: value and tag in one 64-bit store), with no grid barrier between;
* ``v14``      -- version 14 (the default): version 13 with the residual stream handed to the MLP's norm as
                  flag-in-data words too (no grid barrier between), and the copy descriptors packed beside the mbarriers;
* ``handoff``  -- the flag-in-data words (NCCL's "LL" protocol): a reader spins on the words it reads, no fence;
* ``mma``      -- version 11's ``ldmatrix`` / ``mma.sync`` intrinsics, their simulator models, its page consumer;
* ``warp_roles`` -- the ``producer`` build option's machinery: a kernel's block barriers and block size narrowed to
                  its consumer warps in its LLVM IR, so one more warp can stream the pages beside them;
* ``noinline`` -- the out-of-line calls of the mixer bodies (and ``lean_calls``: arrays as address and shape);
* ``split_down`` -- version 7's split-K: fixed-point sums, the down rows' page consumer, the accumulator;
* ``phases``   -- what the versions share: offsets, the barriers, the mixer phases, the L2 prefetchers;
* ``profile``  -- the profiling build's timeline: per-phase critical paths and waits, the chart;
* ``decoder``  -- ``PersistentDecoder``: the reference model's API over the kernel.
"""

from .decoder import DEFAULT_VERSION, VERSIONS, GridNotCoResidentError, PersistentDecoder

__all__ = ["PersistentDecoder", "GridNotCoResidentError", "VERSIONS", "DEFAULT_VERSION"]
