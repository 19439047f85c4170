"""Persistent megakernel, version 8: version 7 with the LM head's pages copied 64 KB at a time (``pair_copies=1``).

What changes from version 7, and why. The LM head is the step's longest phase (~200 us of ~1,130 at context 512
on the H100) and nothing but the weight stream limits it: 508 MB at ~2.5 TB/s, against the 3.0 TB/s a copy
reaches. The ring alone, with nothing else running, streams 2.7 TB/s in 32 KB copies (6 slots) and 3.0 TB/s in
64 KB copies (3 slots) (``python -m megakernel.bench.consumer``): the copy engine moves more per copy it
starts. But 64 KB pages made every phase's last page longer and the barriers slower (NOTES.md). So version 8
keeps the 32 KB pages the consumers take and changes only how the copy thread fetches them: the page table marks
a page whose next page continues its bytes (``pages.page_table(pairs=)``: ``n2 = -n1(next)``), and when such a
page falls on an even slot the copy thread waits until the next slot is free too, then fetches both with one
copy; the second slot's mbarrier completes at once (its bytes arrive with the first's, which its readers have
already awaited). Only the LM head's pages are marked, and only the LM head's call site of the page loop carries
the pairing code (a constant argument folds it away elsewhere). A first build that compiled the pairing code into
every call site, with the same pages marked, made the MLP phases ~10 us slower than version 7 although none of
their pages changed; pairing every phase's pages too (``pair_copies=2``) made them ~50 us slower (pages wait for
their pair's second slot).

The same arithmetic as version 7, in the same order: the same bits (a simulator test compares them exactly).

Measured (H100, profiling builds at context 512, same call): version 7 1,134 us per step, LM head 203 us;
version 8 1,119 us, LM head 192 us, every other phase within noise.
"""

from __future__ import annotations

from . import v2, v3, v7

VERSION = 8
DESCRIPTION = "version 7 with the LM head's pages fetched 64 KB at a time (two adjacent 32 KB slots per copy)"
DEFAULTS = {**v7.DEFAULTS, "pair_copies": 1}
OPTIONS = {**v2.OPTIONS, **DEFAULTS}
POSITIONS_PER_SPLIT = v3.POSITIONS_PER_SPLIT
kernel_key = v2.kernel_key
extra_args = v2.extra_args
build = v2.build_with(DEFAULTS)  # version 2's kernel builder with these defaults (an option passed wins)
configure = v7.configure

__all__ = ["VERSION", "DESCRIPTION", "DEFAULTS", "POSITIONS_PER_SPLIT", "configure", "build", "kernel_key",
           "extra_args"]
