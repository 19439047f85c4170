"""tools/ncu_lines.py: Nsight Compute's per-instruction stall samples, attributed to Python functions and lines through
the disassembly's line table (no GPU: a hand-made listing of the two formats)."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "ncu_lines.py"

HEADER = ('"Address","Source","Warp Stall Sampling (All Samples)","Warp Stall Sampling (Not-issued Samples)",'
          '"stall_barrier","stall_long_sb","stall_barrier (Not Issued)"')


def _line(path_in_repo: str, text: str) -> int:
    """The line of ``text`` in a source file (so the test follows the file as it changes)."""
    lines = (ROOT / path_in_repo).read_text().splitlines()
    return next(i for i, line in enumerate(lines, 1) if text in line)


def _write(tmp_path, opcodes_in_sass):
    v2 = "/elsewhere/megakernel/persistent/v2.py"  # compiled from another checkout: the tool maps it to this one
    dn = "/elsewhere/megakernel/kernels/deltanet.py"
    l_issue = _line("megakernel/persistent/v2.py", "if PAIRS and pairs:")
    l_item = _line("megakernel/kernels/deltanet.py", "delta = (vsh[cj] - pred) * beta")
    sass = [
        "\t.section .text.kernel",
        f'\t//## File "{v2}", line {l_issue}',
        f"        /*0000*/                   {opcodes_in_sass[0]} R1, c[0x0][0x28] ;",
        f"        /*0010*/                   {opcodes_in_sass[1]} UR4, SR_CTAID.X ;",
        f'\t//## File "{dn}", line {l_item}',
        f"        /*0020*/                   @P0 {opcodes_in_sass[2]} R4, desc[UR24][R4.64] ;",
    ]
    csv = [
        '"Kernel Name","persistent_v2"',
        HEADER,
        '"0x7f00","      LDC R1, c[0x0][0x28]","30","29","20","10","19"',
        '"0x7f10","      S2UR UR4, SR_CTAID.X","10","10","10","0","10"',
        '"0x7f20","@P0   LDG.E R4, desc[UR24][R4.64]","60","50","0","60","0"',
    ]
    (tmp_path / "lines.sass").write_text("\n".join(sass) + "\n")
    (tmp_path / "sass.csv").write_text("\n".join(csv) + "\n")
    return tmp_path / "sass.csv", tmp_path / "lines.sass", l_issue, l_item


def _run(*args):
    return subprocess.run([sys.executable, str(TOOL), *map(str, args)], capture_output=True, text=True, timeout=60)


def test_samples_are_summed_per_function_and_line(tmp_path):
    csv, sass, l_issue, l_item = _write(tmp_path, ["LDC", "S2UR", "LDG.E"])
    p = _run(csv, sass)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    # 100 samples: 40 in issue_next (v2.py), 60 in the DeltaNet item's body
    assert "60.00%  kernels/deltanet.py:deltanet_item_tagged" in out and "long_sb 100%" in out
    assert "40.00%  persistent/v2.py:issue_next" in out and "barrier 75%" in out
    assert f"persistent/v2.py:{l_issue}" in out and f"kernels/deltanet.py:{l_item}" in out


def test_listings_of_different_cubins_are_refused(tmp_path):
    csv, sass, _, _ = _write(tmp_path, ["MOV", "IADD3", "STG.E"])
    p = _run(csv, sass)
    assert p.returncode != 0 and "not the same cubin" in (p.stderr + p.stdout)
