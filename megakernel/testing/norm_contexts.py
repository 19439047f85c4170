"""Does the split-layout norm staging round alike wherever it is inlined? (compile-time, no GPU needed)

``fused_matvec.stage_norm4`` is one thread's step of the RMSNorm's staging: it stores h * (1 + g) and returns the
sum of h's four squares. Three callers inline it: ``stage_norm`` (h from floats), ``split_down``'s
``stage_norm_acc`` (h plus the MLP's accumulator) and ``handoff.ll_stage_norm`` (h from flag-in-data words, waited
on one by one or together, ``ll_wait4``). The versions and build options that use them are held to each other's
bits, so the sum must round the same in each. Written as ``h0*h0 + h1*h1 + ...``, it did not: numba-cuda links a
kernel through LTO, whose optimizer contracts a product and a sum into an fma by the context it sees, and with
``ll_wait4`` it chose the other product (GPU bits test of ``ll_residual`` + ``ll_together``). The simulator cannot
see it (NumPy has no contraction).

``square_order(ptx)`` reads the order of the squares' chain from a kernel's PTX: which of h's four values
(numbered by the staging store they feed) is the chain's plain product, and in which order the fmas add the
others. ``orders()`` links a small kernel around each caller through LTO for sm_90a, as a launch on an H100
does, and returns each one's order. Run it with the simulator off (``python -m megakernel.testing.norm_contexts``
prints them as JSON).
"""

from __future__ import annotations

import json
import re

from numba import cuda, float32

_INSTR = re.compile(r"^\s*([a-z][\w.]*)\s+(%\w+),\s*([^;]*);")
_STORE = re.compile(r"^\s*st\.global\.f32\s+\[%\w+(?:\+(\d+))?\],\s*(%\w+);")
_ONE = "0f3F800000"


def square_order(ptx: str) -> list[int]:
    """``[i, j, k, l]``: the chain ``fma(hl, hl, fma(hk, hk, fma(hj, hj, hi * hi)))`` in the PTX, h's values
    numbered by the byte offset / 4 of the staging store their ``h * (1 + g)`` feeds. Raises ``ValueError``
    when there is no such chain (the staging changed shape: this reader needs a look)."""
    defs = {}
    for line in ptx.splitlines():
        m = _INSTR.match(line)
        if m:
            defs[m.group(2)] = (m.group(1), [o.strip() for o in m.group(3).split(",")])
    index = {}
    for line in ptx.splitlines():
        m = _STORE.match(line)
        if not m or m.group(2) not in defs:
            continue
        op, args = defs[m.group(2)]
        if not op.startswith("mul.") or len(args) != 2:
            continue
        ones = [a for a in args if defs.get(a, ("", []))[0].startswith("add.") and _ONE in defs[a][1]]
        if len(ones) == 1:
            index[next(a for a in args if a != ones[0])] = int(m.group(1) or 0) // 4
    squares = {a[2]: (r, a[0]) for r, (o, a) in defs.items()  # a staged value's square fma'd onto a[2]
               if o.startswith("fma.") and len(a) == 3 and a[0] == a[1] and a[0] in index}
    for reg, (op, args) in defs.items():
        if op.startswith("mul.") and len(args) == 2 and args[0] == args[1] and args[0] in index:
            order = [index[args[0]]]
            while reg in squares:
                reg, value = squares[reg]
                order.append(index[value])
            if len(order) == 4:
                return order
    raise ValueError(f"no chain of four squares over the staged values found (staged values: {len(index)})")


_SIGNATURE = "void(float32[::1], int64[::1], float32[::1], float32[::1], float32[::1], int64)"


def _kernels() -> dict:
    """A kernel around each caller of ``stage_norm4``, all with one signature (h, words or the accumulator, g,
    xs, out, tag) and 512 values of h."""
    from megakernel.kernels.fused_matvec import stage_norm
    from megakernel.persistent import handoff
    from megakernel.persistent.split_down import accumulator

    stage_norm_acc = accumulator(64 * 8, 1)[0]

    def plain(h, words, gw, xs, out, tag):
        scratch = cuda.shared.array(32, float32)
        out[0] = stage_norm(h, gw, xs, 64, scratch)

    def with_acc(h, words, gw, xs, out, tag):
        scratch = cuda.shared.array(32, float32)
        out[0] = stage_norm_acc(h, words, gw, xs, 64, scratch)

    def from_words(h, words, gw, xs, out, tag):
        scratch = cuda.shared.array(32, float32)
        out[0] = handoff.ll_stage_norm(words, 0, tag, gw, xs, 64, scratch, 0, False)

    def from_words_together(h, words, gw, xs, out, tag):
        scratch = cuda.shared.array(32, float32)
        out[0] = handoff.ll_stage_norm(words, 0, tag, gw, xs, 64, scratch, 0, True)

    return {"stage_norm": plain, "split_down.stage_norm_acc": with_acc, "ll_stage_norm": from_words,
            "ll_stage_norm + ll_wait4": from_words_together}


def orders() -> dict[str, list[int]]:
    """The squares' order in each caller's context, linked through LTO for sm_90a."""
    from megakernel.testing.ptx_check import CC_90A, compile_library_sm90a

    return {name: square_order(compile_library_sm90a(k, _SIGNATURE).get_lto_ptx(CC_90A))
            for name, k in _kernels().items()}


if __name__ == "__main__":
    print(json.dumps(orders()))
