"""Compile kernels for the H100 (sm_90) without a GPU, and catch slow code before it runs.

A kernel that passes its simulator test can still be slow on the GPU for reasons the
simulator cannot see.  Three common ones are visible at compile time:

* **float64 arithmetic**: a Python float literal (``x * 0.5``) or ``math.*`` on a float64
  makes Numba compute in double precision, which the H100 runs at a fraction of the float32
  rate.  In PTX: instructions with ``.f64`` and ``%fd`` registers.
* **local memory in PTX**: a per-thread array indexed at run time, or a tuple indexed with
  a variable, cannot live in registers; it goes to (slow, off-chip) local memory.  In PTX:
  ``.local``, ``ld.local``/``st.local`` and ``__local_depot``.
* **register spills**: ptxas, the assembler that turns PTX into machine code, decides how
  many registers a kernel gets and spills the rest to local memory.  That is not in the PTX:
  we assemble the PTX with nvJitLink (from the ``nvidia-nvjitlink`` wheel, no GPU needed)
  and read its "Used N registers, S bytes stack frame, X bytes spill stores, Y bytes spill
  loads" report.

``cuda.compile_ptx(..., cc=(9, 0))`` works without a GPU once the NVVM wheel is installed
(``numba-cuda[cu13]``; the 13.5 wheels emit PTX ISA 9.5).  Two catches, handled here:

* it needs the plain Python function (``kernel.py_func``), and it cannot run in a process
  where the simulator is on (``cuda.jit`` then makes simulator objects).  The test suite runs
  with ``NUMBA_ENABLE_CUDASIM=1``, so there ``check_module_kernels("megakernel.kernels.matvec")``
  runs the check in a subprocess with the simulator off;
* kernels that call ``@cuda.jit(device=True)`` functions make Numba ask the *current GPU* for
  its compute capability; while compiling we answer (9, 0).

A kernel module opts in by listing its kernels and the signatures to check::

    PTX_SIGNATURES = {
        "matvec_bf16": ["void(uint32[::1], float32[::1], float32[::1], int32, int32)"],
    }
    PTX_CHECK_OPTIONS = {"matvec_bf16": {"max_spill_bytes": 0}}   # optional, per kernel

and ``python -m megakernel.testing.ptx_check megakernel.kernels.matvec`` (or a path to a .py file)
prints one line per kernel and exits non-zero if any check fails.  Per-kernel options are
``check_ptx``'s (``allow_f64``, ``allow_local``, ``max_spill_bytes``, ``max_stack_bytes``) and
the compiler's (``fastmath``, ``lineinfo``, ``launch_bounds``).  Register counts depend on
launch bounds: without them ptxas may use up to 255 registers per thread, so give the
kernel's real block size (``launch_bounds=512``) when occupancy matters.

API: ``compile_ptx_sm90(pyfunc, signature) -> str``; ``check_ptx(ptx, name, ...) -> PtxReport``
(raises ``AssertionError``); ``check_kernel(name, pyfunc, signature, **options)``;
``check_kernels([(name, pyfunc, signature[, options]), ...])`` prints the table;
``check_module_kernels(module)``; ``check_in_subprocess(*modules)``; ``assemble(ptx)`` and
``parse_ptxas_log(log)`` for the raw resource report.

If nvJitLink cannot be loaded, ``ptxas`` from ``PATH`` (or ``/usr/local/bin``) is used when
present; an older ptxas that rejects the PTX ISA version gets the PTX with its ``.version``
lowered to what it supports (fine for what Numba emits).  With neither, the PTX checks still
run and the register/spill columns say "n/a".
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

ARCH = "sm_90"
CC = (9, 0)
CC_90A = (9, 0, "a")  # what numba-cuda targets on an H100 (``_ensure_cc``): sm_90a
REPO_ROOT = Path(__file__).resolve().parents[2]

_F64 = re.compile(r"\.f64\b|%fd\d")
_LOCAL = re.compile(r"\.local\b|__local_depot|%SPL?\b")
MAX_LINES_SHOWN = 12


@dataclass
class PtxReport:
    """What one compiled kernel looks like.  ``None`` in a resource field: not measured."""

    name: str
    signature: str = ""
    registers: int | None = None
    stack_bytes: int | None = None
    spill_store_bytes: int | None = None
    spill_load_bytes: int | None = None
    f64_lines: list[str] = field(default_factory=list)
    local_lines: list[str] = field(default_factory=list)
    assembler: str = ""
    problems: list[str] = field(default_factory=list)
    ptx: str = field(default="", repr=False)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def spill_bytes(self) -> int | None:
        if self.spill_store_bytes is None:
            return None
        return self.spill_store_bytes + (self.spill_load_bytes or 0)

    def to_dict(self, with_ptx: bool = True) -> dict:
        d = asdict(self)
        if not with_ptx:
            d["ptx"] = ""
        return d


# --------------------------------------------------------------------------------------
# Compiling
# --------------------------------------------------------------------------------------


def _require_gpu_target():
    from numba import config

    if config.ENABLE_CUDASIM:
        raise RuntimeError(
            "PTX compilation needs NUMBA_ENABLE_CUDASIM=0 (under the simulator cuda.jit makes "
            "simulator objects); from the test suite use ptx_check.check_in_subprocess(...)"
        )


class _TargetDevice:
    def __init__(self, cc):
        self.compute_capability = cc


@contextlib.contextmanager
def _compiling_for(cc):
    """Make device-function compilation target ``cc`` instead of asking the driver."""
    import numba.cuda.dispatcher as dispatcher

    saved = dispatcher.get_current_device
    dispatcher.get_current_device = lambda: _TargetDevice(cc)
    try:
        yield
    finally:
        dispatcher.get_current_device = saved


def compile_ptx_sm90(pyfunc, signature, *, fastmath=False, lineinfo=False, launch_bounds=None):
    """PTX of a kernel for sm_90.  ``pyfunc``: the Python function or a ``cuda.jit`` kernel."""
    _require_gpu_target()
    from numba import cuda

    pyfunc = getattr(pyfunc, "py_func", pyfunc)
    kwargs = {"fastmath": fastmath, "lineinfo": lineinfo, "cc": CC}
    if launch_bounds is not None:
        kwargs["launch_bounds"] = launch_bounds
    with _compiling_for(CC):
        ptx, _ = cuda.compile_ptx(pyfunc, signature, **kwargs)
    return ptx


def compile_library_sm90a(pyfunc, signature, *, lto=True):
    """The code library Numba builds for a kernel on an H100 (sm_90a; through LTO-IR by default, as numba-cuda
    does where nvJitLink is installed), for what happens after code generation: ``library.get_cubin(CC_90A)``
    links it as a launch would (with the project's compiler hooks)."""
    _require_gpu_target()
    from numba.core import sigutils, types
    from numba.cuda.compiler import compile_cuda, kernel_fixup

    pyfunc = getattr(pyfunc, "py_func", pyfunc)
    args, _ = sigutils.normalize_signature(signature)
    with _compiling_for(CC):  # what ``cuda.jit``'s kernel does before it links (numba-cuda's ``_Kernel``)
        cres = compile_cuda(pyfunc, types.void, args, nvvm_options={"fastmath": False, "opt": 3}, cc=CC_90A,
                            lto=lto)
    library = cres.library
    library._entry_name = cres.fndesc.llvm_func_name
    kernel_fixup(library.get_function(cres.fndesc.llvm_func_name), False)
    return library


# --------------------------------------------------------------------------------------
# Assembling (ptxas via nvJitLink) and reading the resource report
# --------------------------------------------------------------------------------------


def _needs_cudadevrt(ptx: str) -> bool:
    # this_grid().sync() calls into the device runtime library
    return bool(re.search(r"\.extern\s+\.func[^\n]*\bcudaCG", ptx))


def _assemble_nvjitlink(ptx: str, arch: str, max_registers: int | None = None, ltoir: bytes | None = None,
                        cudadevrt: bool | None = None) -> tuple[str, str]:
    """``cudadevrt``: link the device runtime (``this_grid().sync()``); None: if the PTX calls it."""
    from cuda.bindings import nvjitlink

    options = [f"-arch={arch}", "-verbose"] + ([f"-maxrregcount={max_registers}"] if max_registers else [])
    options += ["-lto"] if ltoir is not None else []
    handle = nvjitlink.create(len(options), options)
    try:
        if ltoir is not None:
            nvjitlink.add_data(handle, nvjitlink.InputType.LTOIR, ltoir, len(ltoir), "kernel.ltoir")
        else:
            data = ptx.encode()
            nvjitlink.add_data(handle, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
        if _needs_cudadevrt(ptx) if cudadevrt is None else cudadevrt:
            from numba.cuda.cudadrv.libs import get_cudalib

            lib = get_cudalib("cudadevrt", static=True)
            nvjitlink.add_file(handle, nvjitlink.InputType.LIBRARY, lib)
        try:
            nvjitlink.complete(handle)
        except Exception as exc:  # noqa: BLE001 - report the linker's own words
            size = nvjitlink.get_error_log_size(handle)
            buf = bytearray(size)
            if size:
                nvjitlink.get_error_log(handle, buf)
            raise RuntimeError(f"nvJitLink failed: {exc}\n{buf.decode(errors='replace')}") from exc
        size = nvjitlink.get_info_log_size(handle)
        buf = bytearray(size)
        if size:
            nvjitlink.get_info_log(handle, buf)
        major, minor = nvjitlink.version()
        return f"nvJitLink {major}.{minor}", buf.decode(errors="replace")
    finally:
        nvjitlink.destroy(handle)


def _find_ptxas() -> str | None:
    return shutil.which("ptxas") or (
        "/usr/local/bin/ptxas" if os.access("/usr/local/bin/ptxas", os.X_OK) else None
    )


def _assemble_ptxas(ptx: str, arch: str, max_registers: int | None = None) -> tuple[str, str]:
    exe = _find_ptxas()
    if exe is None:
        raise RuntimeError("no ptxas on PATH")
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp, "kernel.ptx")
        for _ in range(2):
            src.write_text(ptx)
            cmd = [exe, f"-arch={arch}", "-v", "-c", "-o", str(Path(tmp, "k.o")), str(src)]
            if max_registers:
                cmd.insert(1, f"-maxrregcount={max_registers}")
            proc = subprocess.run(cmd, capture_output=True, text=True)
            log = proc.stdout + proc.stderr
            if proc.returncode == 0:
                return "ptxas", log
            # An older ptxas than the NVVM that wrote the PTX: lower the ISA version.
            m = re.search(r"Unsupported \.version [\d.]+; current version is '([\d.]+)'", log)
            if not m:
                break
            ptx = re.sub(r"^\.version\s+[\d.]+", f".version {m.group(1)}", ptx, flags=re.M)
        raise RuntimeError(f"ptxas failed:\n{log}")


def assemble(ptx: str, arch: str = ARCH, max_registers: int | None = None) -> tuple[str, str]:
    """Assemble PTX for ``arch`` (``max_registers``: the kernel's register cap, as ``cuda.jit(max_registers=)``
    passes it to the linker); returns (tool used, its verbose log)."""
    try:
        return _assemble_nvjitlink(ptx, arch, max_registers)
    except (ImportError, OSError) as exc:  # library missing: try the command-line tool
        nvjitlink_error = exc
    try:
        return _assemble_ptxas(ptx, arch, max_registers)
    except RuntimeError as exc:
        raise RuntimeError(f"cannot assemble: nvJitLink: {nvjitlink_error}; ptxas: {exc}") from exc


def assemble_lto(library, max_registers: int | None = None) -> tuple[str, str]:
    """Link a code library (``compile_library_sm90a``) as a launch on an H100 does: its LTO-IR through nvJitLink
    for sm_90a, the whole program compiled at once. Returns (tool used, the assembler's verbose log). This is the
    cubin that runs: Numba's own PTX assembled alone (``assemble``) compiles each out-of-line function in
    separate-compilation mode, with the full call ABI, and reports other stack frames and spills."""
    return _assemble_nvjitlink("", "sm_90a", max_registers, library.get_ltoir(CC_90A),
                               cudadevrt="cudaCG" in library.get_llvm_str())  # (v1: grid.sync)


_RE_ENTRY = re.compile(r"^ptxas.*Compiling entry function '([^']+)'")
_RE_PROPS = re.compile(r"^ptxas\s+info\s+:\s+Function properties for\s+'?([^'\s:]+)")
_RE_FRAME = re.compile(
    r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads"
)
_RE_REGS = re.compile(r"^ptxas.*Used (\d+) registers")


def parse_ptxas_log(log: str) -> dict[str, dict]:
    """``{function: {registers, stack_bytes, spill_store_bytes, spill_load_bytes}}`` from
    ptxas' verbose output.  Only ptxas' own lines count: nvJitLink also logs the libraries it
    links (lower-case "info : used N registers" lines, which these patterns do not match)."""
    out: dict[str, dict] = {}
    entry = props = None
    for line in log.splitlines():
        if m := _RE_ENTRY.search(line):
            entry = m.group(1)
            out.setdefault(entry, {})
        elif m := _RE_PROPS.search(line):
            props = m.group(1)
            out.setdefault(props, {})
        elif (m := _RE_FRAME.search(line)) and props is not None:
            stack, st, ld = map(int, m.groups())
            out[props].update(stack_bytes=stack, spill_store_bytes=st, spill_load_bytes=ld)
        elif (m := _RE_REGS.search(line)) and entry is not None:
            out[entry]["registers"] = int(m.group(1))
    return out


# --------------------------------------------------------------------------------------
# Checking
# --------------------------------------------------------------------------------------


def _instruction_lines(ptx: str):
    for raw in ptx.splitlines():
        line = raw.split("//", 1)[0].strip()
        if not line or line.startswith(".reg"):
            continue
        yield line


def find_f64(ptx: str) -> list[str]:
    """PTX lines doing float64 work (``.f64`` types, ``%fd`` registers)."""
    return [line for line in _instruction_lines(ptx) if _F64.search(line)]


def find_local(ptx: str) -> list[str]:
    """PTX lines touching local memory."""
    return [line for line in _instruction_lines(ptx) if _LOCAL.search(line)]


def _entry_names(ptx: str) -> list[str]:
    return re.findall(r"\.entry\s+([\w$.]+)", ptx)


def _shown(lines: list[str]) -> str:
    more = f"\n      ... {len(lines) - MAX_LINES_SHOWN} more" if len(lines) > MAX_LINES_SHOWN else ""
    return "\n".join(f"      {line}" for line in lines[:MAX_LINES_SHOWN]) + more


def check_ptx(
    ptx: str,
    name: str,
    allow_f64: bool = False,
    allow_local: bool = False,
    max_spill_bytes: int | None = 0,
    max_stack_bytes: int | None = None,
    assemble_ptx: bool = True,
    signature: str = "",
    raise_on_failure: bool = True,
) -> PtxReport:
    """Inspect a kernel's PTX (and, when possible, its ptxas resource report).

    Fails (``AssertionError`` naming the kernel and the offending lines) on float64
    instructions unless ``allow_f64``, on local memory in the PTX unless ``allow_local``, and
    on more than ``max_spill_bytes`` of spill stores + loads (``None``: no limit; spill data is
    only available if the PTX could be assembled).  A stack frame alone (e.g. the call into
    the device runtime that ``this_grid().sync()`` makes) only fails with ``max_stack_bytes``.
    """
    rep = PtxReport(name=name, signature=signature, ptx=ptx)
    rep.f64_lines = find_f64(ptx)
    rep.local_lines = find_local(ptx)
    if assemble_ptx:
        try:
            rep.assembler, log = assemble(ptx)
        except RuntimeError as exc:
            rep.assembler = f"unavailable ({str(exc).splitlines()[0]})"
        else:
            funcs = parse_ptxas_log(log)
            entries = [e for e in _entry_names(ptx) if e in funcs] or list(funcs)
            if entries:
                rep.registers = max(funcs[e].get("registers", 0) for e in entries)
                rep.stack_bytes = max(funcs[e].get("stack_bytes", 0) for e in entries)
            # spills anywhere (entry or non-inlined device functions) count
            rep.spill_store_bytes = sum(f.get("spill_store_bytes", 0) for f in funcs.values())
            rep.spill_load_bytes = sum(f.get("spill_load_bytes", 0) for f in funcs.values())

    if rep.f64_lines and not allow_f64:
        rep.problems.append(
            f"{len(rep.f64_lines)} float64 instruction(s) (a Python float literal or float64 "
            f"math in float32 code? use float32(...)):\n{_shown(rep.f64_lines)}"
        )
    if rep.local_lines and not allow_local:
        rep.problems.append(
            f"{len(rep.local_lines)} local-memory line(s) (a local array or tuple indexed at "
            f"run time?):\n{_shown(rep.local_lines)}"
        )
    if max_spill_bytes is not None and rep.spill_bytes is not None and rep.spill_bytes > max_spill_bytes:
        rep.problems.append(
            f"register spills: {rep.spill_store_bytes} bytes stored, {rep.spill_load_bytes} "
            f"bytes loaded (limit {max_spill_bytes}) with {rep.registers} registers"
        )
    if max_stack_bytes is not None and (rep.stack_bytes or 0) > max_stack_bytes:
        rep.problems.append(f"stack frame of {rep.stack_bytes} bytes (limit {max_stack_bytes})")
    if rep.problems and raise_on_failure:
        raise AssertionError(failure_message([rep]))
    return rep


def failure_message(reports: list[PtxReport]) -> str:
    parts = []
    for rep in reports:
        for problem in rep.problems:
            parts.append(f"kernel {rep.name}[{rep.signature}]: {problem}")
    return "PTX check failed:\n" + "\n".join(parts)


_COMPILE_KEYS = ("fastmath", "lineinfo", "launch_bounds")


def check_kernel(name, pyfunc, signature, raise_on_failure=True, **options) -> PtxReport:
    """Compile one kernel for sm_90 and ``check_ptx`` it.  ``options``: ``check_ptx``
    keywords plus ``fastmath``, ``lineinfo``, ``launch_bounds`` for the compiler."""
    compile_opts = {k: options.pop(k) for k in _COMPILE_KEYS if k in options}
    try:
        ptx = compile_ptx_sm90(pyfunc, signature, **compile_opts)
    except Exception as exc:  # noqa: BLE001 - a typing error is a finding, not a crash
        rep = PtxReport(name=name, signature=signature)
        first = f"{type(exc).__name__}: {exc}"
        rep.problems.append(f"does not compile for {ARCH}:\n      {first[:3000]}")
        if raise_on_failure:
            raise AssertionError(failure_message([rep])) from exc
        return rep
    return check_ptx(ptx, name, signature=signature, raise_on_failure=raise_on_failure, **options)


def format_table(reports: list[PtxReport]) -> str:
    """One line per kernel: registers, stack, spills, f64 and local-memory line counts."""

    def num(v):
        return "n/a" if v is None else str(v)

    rows = [("kernel", "regs", "stack", "spill st/ld", "f64", "local", "status")]
    for r in reports:
        label = r.name if not r.signature else f"{r.name}  {r.signature}"
        spill = "n/a" if r.spill_store_bytes is None else f"{r.spill_store_bytes}/{r.spill_load_bytes}"
        rows.append(
            (label, num(r.registers), num(r.stack_bytes), spill, str(len(r.f64_lines)),
             str(len(r.local_lines)), "ok" if r.ok else "FAIL")
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    assembler = next((r.assembler for r in reports if r.assembler), "")
    if assembler:
        lines.append(f"(resources from {assembler}, {ARCH})")
    return "\n".join(lines)


def check_kernels(items, raise_on_failure=True, print_table=True, **options) -> list[PtxReport]:
    """Check ``(name, pyfunc, signature)`` or ``(name, pyfunc, signature, options)`` items,
    print the table, then raise one ``AssertionError`` listing every failure."""
    reports = []
    for item in items:
        name, pyfunc, sig = item[:3]
        opts = {**options, **(item[3] if len(item) > 3 else {})}
        reports.append(check_kernel(name, pyfunc, sig, raise_on_failure=False, **opts))
    if print_table:
        print(format_table(reports))
    failed = [r for r in reports if not r.ok]
    if failed and raise_on_failure:
        raise AssertionError(failure_message(failed))
    return reports


def _load(target: str):
    """A module by dotted name, or by path to a .py file."""
    if target.endswith(".py") or os.sep in target:
        path = Path(target).resolve()
        spec = importlib.util.spec_from_file_location(f"_ptx_check_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module
        spec.loader.exec_module(module)
        return module
    return importlib.import_module(target)


def module_items(target: str) -> list[tuple]:
    """The (name, kernel, signature, options) items a module declares in PTX_SIGNATURES."""
    module = _load(target)
    sigs = getattr(module, "PTX_SIGNATURES", None)
    if not sigs:
        raise ValueError(f"{target} has no PTX_SIGNATURES = {{kernel name: [signatures]}}")
    options = getattr(module, "PTX_CHECK_OPTIONS", {})
    items = []
    for name, signatures in sigs.items():
        if isinstance(signatures, str):
            signatures = [signatures]
        for sig in signatures:
            items.append((name, getattr(module, name), sig, dict(options.get(name, {}))))
    return items


def check_module_kernels(target: str, raise_on_failure=True, print_table=True) -> list[PtxReport]:
    """Check every kernel a module (dotted name or .py path) lists in ``PTX_SIGNATURES``.

    With the simulator on (the test suite), this runs in a subprocess with it off."""
    from numba import config

    if config.ENABLE_CUDASIM:
        reports = check_in_subprocess(target, raise_on_failure=raise_on_failure)
        if print_table:
            print(format_table(reports))
        return reports
    return check_kernels(module_items(target), raise_on_failure, print_table)


# --------------------------------------------------------------------------------------
# From a simulator process: run the checks in a subprocess
# --------------------------------------------------------------------------------------


def check_in_subprocess(*targets: str, timeout: float = 900, raise_on_failure=True) -> list[PtxReport]:
    """Check the kernels of each target in a fresh process with the simulator off.

    Raises ``AssertionError`` with the table and the failures if any kernel fails (its
    ``reports`` attribute holds all the reports, PTX included).
    """
    env = dict(os.environ)
    env["NUMBA_ENABLE_CUDASIM"] = "0"
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp, "reports.json")
        cmd = [sys.executable, "-m", "megakernel.testing.ptx_check", "--json", str(out), "--no-fail", *targets]
        proc = subprocess.run(
            cmd, env=env, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout
        )
        if proc.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"PTX check subprocess failed (rc={proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
            )
        reports = [PtxReport(**r) for r in json.loads(out.read_text())]
    failed = [r for r in reports if not r.ok]
    if failed and raise_on_failure:
        error = AssertionError(format_table(reports) + "\n" + failure_message(failed))
        error.reports = reports  # for callers that want to look closer
        raise error
    return reports


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("targets", nargs="+", help="module names or .py paths with PTX_SIGNATURES")
    parser.add_argument("--json", help="write the reports (with PTX) to this file")
    parser.add_argument("--no-fail", action="store_true", help="exit 0 even if checks fail")
    args = parser.parse_args(argv)
    reports = []
    for target in args.targets:
        reports += check_module_kernels(target, raise_on_failure=False, print_table=False)
    print(format_table(reports))
    failed = [r for r in reports if not r.ok]
    if failed:
        print(failure_message(failed))
    if args.json:
        Path(args.json).write_text(json.dumps([r.to_dict() for r in reports]))
    return 0 if (args.no_fail or not failed) else 1


if __name__ == "__main__":
    sys.exit(main())
