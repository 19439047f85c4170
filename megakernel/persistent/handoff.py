"""Flag-in-data hand-offs between blocks: a value and the tag of the phase that wrote it in one 64-bit word.

A grid barrier hands data over in three steps: the writers' stores, a release (``red.release.gpu``, which
compiles to ``MEMBAR.ALL.GPU`` and waits until every store of the block is acknowledged), then the readers' acquire
polls. On the H100 the release is most of a barrier's latency while weight pages are in flight to the SM (NOTES.md:
2.8 of 3.4 us after an input projection), because the stores' acknowledgements queue behind the pages. NCCL's
"LL" protocol avoids the fence altogether: each 32-bit value travels with a 32-bit flag in one 64-bit word, written
by one single-copy-atomic store, so a reader that sees the flag it expects sees the value written with it, whatever
the order in which the writer's other stores land. A reader spins only on the words it reads, not on the grid.

Here the flag is the ``tag`` of the hand-off: the count of grid barriers before the next one, over every launch
of the decoder (``ll_tag``: the launch's base, the control block's ``CTL_LL_BASE``, plus the barriers it has passed,
plus 1; block 0 stores the next launch's base when a launch ends, and the host never zeroes it, unlike the
barriers' own words). So a word left over from an earlier layer, step or launch never carries the tag a reader
waits for (until 2^32 barriers later, long after every word was rewritten), and a new buffer's zeros never do. What a tag does not order is everything else: a reader may use the words it
waited for and nothing their writers wrote beside them; and a buffer of such words may be rewritten only past a
grid barrier after its last reader (the schedule model checks both: ``schedule.check_dependencies``).

    ll_store(words, i, value, tag)   int64 words[i] = (tag << 32) | bits(value), one 64-bit store
    ll_first(words, i)               the word's first read, to issue several reads before waiting on any
    ll_value(words, i, word, tag)    ``word``'s value once it carries ``tag`` (re-reading words[i] until then)
    ll_tag(base, count)              the tag of a hand-off after ``count`` grid barriers of a launch from ``base``
    ll_close(ctl, base, count)       (thread 0 of block 0, after the launch's last barrier) the next launch's base
    ll_wait4(words, i0, w0, ..., i3, w3, tag, backoff)   four words' values, re-read together until all carry ``tag``
    ll_stage_norm(words, off, tag, gw, xs, nv, scratch, backoff, together)
                                     ``fused_matvec.stage_norm`` of the vector held as words ``words[off:]``
"""

from __future__ import annotations

from numba import cuda, float32, int32, int64

from .. import device as D
from . import plan as P
from . import tma
from ..kernels.fused_matvec import stage_norm4

_LOW32 = (1 << 32) - 1
_HALF32 = 1 << 31
BASE = P.CTL_LL_BASE


@cuda.jit(device=True)
def ll_base(ctl):
    return int64(ctl[BASE]) & _LOW32


@cuda.jit(device=True)
def ll_tag(base, count):
    return (int64(base) + int64(count) + 1) & _LOW32


@cuda.jit(device=True)
def ll_close(ctl, base, count):
    v = (int64(base) + int64(count)) & _LOW32
    ctl[BASE] = int32(v - (_LOW32 + 1) if v >= _HALF32 else v)


@cuda.jit(device=True)
def ll_store(words, i, value, tag):
    tma.st_relaxed_u64(words, i, (int64(tag) << 32) | (int64(D.f32_to_bits(float32(value))) & _LOW32))


@cuda.jit(device=True)
def ll_first(words, i):
    return tma.ld_relaxed_u64(words, i)


@cuda.jit(device=True)
def ll_value(words, i, word, tag):
    while ((word >> 32) & _LOW32) != tag:
        word = tma.ld_relaxed_u64(words, i)
    return D.bits_to_f32(word & _LOW32)


@cuda.jit(device=True)
def ll_value_sleep(words, i, word, tag, backoff):
    """``ll_value`` that sleeps ``backoff`` ns (``nanosleep``) between the re-reads of a word (0: spin)."""
    while ((word >> 32) & _LOW32) != tag:
        if backoff > 0:
            cuda.nanosleep(backoff)
        word = tma.ld_relaxed_u64(words, i)
    return D.bits_to_f32(word & _LOW32)


@cuda.jit(device=True)
def ll_ready(word, tag):
    return ((word >> 32) & _LOW32) == tag


@cuda.jit(device=True)
def ll_wait4(words, i0, w0, i1, w1, i2, w2, i3, w3, tag, backoff):
    """The values of four words (``w*``: their first reads) once all four carry ``tag``. Every round re-reads all
    the words not yet written, together: one memory round trip a round, where waiting on them one after another
    (``ll_value``) costs a round trip for each word whose first read came too early, one after the other.
    ``backoff``: ns to sleep between rounds (0: none)."""
    while not (ll_ready(w0, tag) and ll_ready(w1, tag) and ll_ready(w2, tag) and ll_ready(w3, tag)):
        if backoff > 0:
            cuda.nanosleep(backoff)
        if not ll_ready(w0, tag):
            w0 = tma.ld_relaxed_u64(words, i0)
        if not ll_ready(w1, tag):
            w1 = tma.ld_relaxed_u64(words, i1)
        if not ll_ready(w2, tag):
            w2 = tma.ld_relaxed_u64(words, i2)
        if not ll_ready(w3, tag):
            w3 = tma.ld_relaxed_u64(words, i3)
    return (D.bits_to_f32(w0 & _LOW32), D.bits_to_f32(w1 & _LOW32), D.bits_to_f32(w2 & _LOW32),
            D.bits_to_f32(w3 & _LOW32))


@cuda.jit(device=True)
def ll_stage_norm(words, off, tag, gw, xs, nv, scratch, backoff, together):
    """``fused_matvec.stage_norm`` (xs <- h * (1 + gw) in the split layout; returns sum(h^2), the same in every
    block) of ``h`` given as ``8 nv`` flag-in-data words from ``words[off]``: a thread issues the first read of
    all four of its words before it waits for any, then re-reads each until it carries ``tag``, sleeping
    ``backoff`` ns between the reads (every block reads every word: without a pause the polls of the blocks that
    are done load L2 while the last writers are still at work); with ``together``, all four re-read in each round
    (``ll_wait4``). The same arithmetic in the same order as ``stage_norm``: the same bits."""
    ss = float32(0)
    q = cuda.threadIdx.x
    while q < 2 * nv:
        i = off + 4 * q
        w0 = ll_first(words, i)
        w1 = ll_first(words, i + 1)
        w2 = ll_first(words, i + 2)
        w3 = ll_first(words, i + 3)
        g0, g1, g2, g3 = D.load_f32x4(gw, q)
        if together:
            h0, h1, h2, h3 = ll_wait4(words, i, w0, i + 1, w1, i + 2, w2, i + 3, w3, tag, backoff)
        else:
            h0 = ll_value_sleep(words, i, w0, tag, backoff)
            h1 = ll_value_sleep(words, i + 1, w1, tag, backoff)
            h2 = ll_value_sleep(words, i + 2, w2, tag, backoff)
            h3 = ll_value_sleep(words, i + 3, w3, tag, backoff)
        ss += stage_norm4(xs, q, nv, h0, h1, h2, h3, g0, g1, g2, g3)
        q += cuda.blockDim.x
    return D.block_sum(ss, scratch)


__all__ = ["ll_base", "ll_tag", "ll_close", "ll_store", "ll_first", "ll_value", "ll_value_sleep", "ll_ready", "ll_wait4",
           "ll_stage_norm"]
