"""``python -m megakernel.generate`` on the GPU at the real Qwen3.5-0.8B shapes (synthetic checkpoint): every
stage streams the same greedy text as the reference, and the closing line gives tok/s and the fraction of the
bandwidth floor. The text itself is meaningless (random weights); identical text means identical tokens.
"""

import re

import pytest

from megakernel.launch import gpu_available

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not gpu_available(), reason="needs a CUDA GPU")]

ARGS = ["--prompt", "The capital of France is", "--max-new-tokens", "32", "--no-stop-at-eos"]


def _generate(capsys, stage):
    from megakernel import generate

    status = generate.main(["--stage", stage, *ARGS])
    out, err = capsys.readouterr()
    assert status == 0, err
    return out, err.strip().splitlines()[-1]


@pytest.mark.parametrize("stage", ["layered", "persistent"])
def test_generate_streams_the_reference_text_with_the_floor(stage, capsys):
    if stage == "persistent":
        pytest.importorskip("megakernel.persistent")
    ref_text, _ = _generate(capsys, "reference")
    text, stats = _generate(capsys, stage)
    assert text == ref_text
    m = re.search(r"decode ([\d,.]+) tok/s .*; ([\d.]+)% of the bandwidth floor", stats)
    assert m, stats
    with capsys.disabled():
        print(f"\n[{stage}] {stats}")
