"""Every command-line tool refuses bad input with one line on stderr and a non-zero status, never a traceback,
and before anything slow happens; the library raises the same errors, typed.

The tools are called in-process (``main(argv)``: no interpreter start-up per case); two subprocess runs prove the
real entry points print no traceback. Exit statuses (``reference.cli``): 2 = bad usage, refused before the work
starts; 1 = a failure while running.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from reference import cli
from tests.conftest import ROOT, TEST_CONFIGS

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _cli(module: str):
    import importlib

    return importlib.import_module(module)


def run(module: str, argv, capsys):
    """(status, stdout, stderr) of ``python -m module argv``, in-process."""
    status = _cli(module).main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def assert_one_line_error(module: str, argv, capsys, status: int, *needles: str) -> str:
    """The tool exits with ``status`` and stderr is one line naming the problem (every needle, as a regex)."""
    code, out, err = run(module, argv, capsys)
    lines = err.strip().splitlines()
    assert code == status, f"status {code}, stderr: {err}"
    assert len(lines) == 1, f"expected one line on stderr, got:\n{err}"
    prog = module.removesuffix(".decode").removesuffix(".__main__")
    assert lines[0].startswith(f"python -m {prog}: error: "), lines[0]
    for needle in needles:
        assert re.search(needle, lines[0]), f"{needle!r} not in: {lines[0]}"
    assert "Traceback" not in out + err
    return lines[0]


@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if anything loads weights: arguments must be refused before that."""

    def refuse(*args, **kwargs):
        raise AssertionError("a model was loaded before the arguments were checked")

    import megakernel.stages
    import reference.checkpoint
    import reference.model  # imported before the patch, which it would otherwise copy for good

    monkeypatch.setattr(reference.checkpoint, "load_weights", refuse)
    monkeypatch.setattr(reference.model, "load_weights", refuse)
    monkeypatch.setattr(megakernel.stages, "load", refuse)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny checkpoint of our own (some tests copy and damage it)."""
    from reference import write_synthetic_checkpoint

    return write_synthetic_checkpoint(tmp_path_factory.mktemp("cli_tiny"), TEST_CONFIGS["tiny"], seed=0)


# Every tool that takes a checkpoint directory, with the arguments that make it otherwise valid.
MODEL_TOOLS = {
    "reference.generate": [],
    "megakernel.generate": ["--stage", "reference"],
    "megakernel.demo": [],
    "megakernel.compare": ["--stages", "transformers,reference"],
    "megakernel.bench.decode": [],
}


# ------------------------------------------------------------------------------------------ checkpoint paths
@pytest.mark.parametrize("module", sorted(MODEL_TOOLS))
@pytest.mark.parametrize("case", ["missing", "empty", "a file", "config.json"])
def test_a_path_that_is_not_a_checkpoint_directory(module, case, tiny, tmp_path, capsys, no_model_load):
    path, needles = {
        "missing": (tmp_path / "nope", [r"--model: checkpoint directory \S*nope does not exist",
                                        "expected a directory holding config.json"]),
        "empty": (tmp_path, [f"--model: no config.json in {re.escape(str(tmp_path))}"]),
        "a file": (tiny / "model.safetensors", [r"is a file, not a checkpoint directory",
                                                f"pass the directory that holds it \\({re.escape(str(tiny))}\\)"]),
        "config.json": (tiny / "config.json", [r"config.json is a file, not a checkpoint directory"]),
    }[case]
    assert_one_line_error(module, [*MODEL_TOOLS[module], "--model", path], capsys, 2, *needles)


def test_library_names_the_problem_too(tiny, tmp_path):
    from reference import load_model

    with pytest.raises(NotADirectoryError, match="is a file, not a checkpoint directory"):
        load_model(tiny / "config.json")
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(tmp_path / "nope")


def _damaged_copy(tiny, tmp_path, damage) -> str:
    copy = tmp_path / "ckpt"
    shutil.copytree(tiny, copy)
    damage(copy)
    return copy


@pytest.mark.parametrize("how", ["truncated", "garbage"])
def test_a_truncated_or_corrupt_safetensors_file_is_named(how, tiny, tmp_path, capsys, no_model_load):
    def damage(path):
        f = path / "model.safetensors"
        data = f.read_bytes()
        f.write_bytes(data[: len(data) // 2] if how == "truncated" else os.urandom(200))

    path = _damaged_copy(tiny, tmp_path, damage)
    f = re.escape(str(path / "model.safetensors"))
    for module in ("reference.generate", "megakernel.generate"):
        assert_one_line_error(module, [*MODEL_TOOLS[module], "--model", path], capsys, 2,
                              f"--model: {f} is not a readable safetensors file", "truncated or corrupt")


def test_a_corrupt_config_json_is_named(tiny, tmp_path, capsys, no_model_load):
    path = _damaged_copy(tiny, tmp_path, lambda p: (p / "config.json").write_text('{"model_type": "qwen3_5", '))
    for module in sorted(MODEL_TOOLS):
        assert_one_line_error(module, [*MODEL_TOOLS[module], "--model", path], capsys, 2,
                              f"--model: {re.escape(str(path / 'config.json'))} is not valid JSON")


def test_a_truncated_file_is_named_by_the_library(tiny, tmp_path):
    from reference import CheckpointError, load_model

    path = _damaged_copy(tiny, tmp_path, lambda p: (p / "model.safetensors").write_bytes(
        (p / "model.safetensors").read_bytes()[:-100]))
    with pytest.raises(CheckpointError, match=re.escape(str(path / "model.safetensors"))):
        load_model(path)


def _mismatched_config(tiny, tmp_path):
    path = _damaged_copy(tiny, tmp_path, lambda p: None)
    TEST_CONFIGS["tiny"].replace(num_hidden_layers=8).save(path)
    return path


def test_a_config_that_does_not_match_the_weights(tiny, tmp_path, capsys, no_model_load):
    path = _mismatched_config(tiny, tmp_path)
    for module in ("reference.generate", "megakernel.generate", "megakernel.demo"):
        assert_one_line_error(module, [*MODEL_TOOLS[module], "--model", path], capsys, 2,
                              "missing tensor", "the config has 8 layers, the checkpoint has 4")


def test_a_config_that_does_not_match_the_weights_through_transformers(tiny, tmp_path, capsys, no_model_load,
                                                                        monkeypatch):
    """transformers' own message for this is dozens of lines; the compare tool checks the weights first."""
    import reference.hf_compare

    monkeypatch.setattr(reference.hf_compare, "load_transformers_model", lambda *a, **k: pytest.fail("loaded"))
    path = _mismatched_config(tiny, tmp_path)
    assert_one_line_error("megakernel.compare", ["--stages", "transformers,reference", "--model", path], capsys, 2,
                          "the config has 8 layers, the checkpoint has 4")


# ------------------------------------------------------------------------------------------ sampling, counts
@pytest.mark.parametrize("module", ["reference.generate", "megakernel.generate"])
@pytest.mark.parametrize("flag, value, needle", [
    ("--temperature", "nan", "must be a finite number >= 0, got 'nan'"),
    ("--temperature", "inf", "must be a finite number >= 0, got 'inf'"),
    ("--temperature", "-1", "must be a finite number >= 0, got '-1'"),
    ("--top-p", "0", r"must be in \(0, 1\], got '0'"),
    ("--top-p", "1.5", r"must be in \(0, 1\]"),
    ("--top-p", "nan", r"must be in \(0, 1\]"),
    ("--top-k", "-1", "must be an integer >= 0"),
    ("--top-k", "2.5", "expected an integer, got '2.5'"),
    ("--seed", "-1", r"must be an integer in \[0, 2\*\*63\)"),
    ("--max-new-tokens", "0", "must be an integer >= 1, got '0'"),
    ("--max-new-tokens", "-3", "must be an integer >= 1, got '-3'"),
])
def test_out_of_range_sampling_and_token_counts(module, flag, value, needle, tiny, capsys, no_model_load):
    assert_one_line_error(module, [*MODEL_TOOLS[module], "--model", tiny, "--prompt", "a", flag, value], capsys, 2,
                          f"argument {flag}: {needle}", "see --help")


@pytest.mark.parametrize("module, argv, needle", [
    ("megakernel.demo", ["--tokens", "0"], "argument --tokens: must be an integer >= 1"),
    ("megakernel.compare", ["--tokens", "0"], "argument --tokens: must be an integer >= 1"),
    ("megakernel.compare", ["--prompt-len", "-2"], "argument --prompt-len: must be an integer >= 1"),
    ("megakernel.compare", ["--tol", "nan"], "argument --tol: must be a finite number > 0"),
    ("megakernel.compare", ["--max-context", "0"], "argument --max-context: must be an integer >= 1"),
    ("megakernel.generate", ["--stage", "layered", "--max-context", "0"], "argument --max-context"),
    ("megakernel.bench.decode", ["--gen", "0"], "argument --gen: must be an integer >= 1"),
    ("megakernel.bench.decode", ["--reps", "-1"], "argument --reps: must be an integer >= 1"),
    ("megakernel.bench.decode", ["--prefill", "-1"], "argument --prefill: must be an integer >= 0"),
    ("megakernel.bench.decode", ["--contexts", "16,0"], "argument --contexts: must be an integer >= 1"),
    ("megakernel.bench.decode", ["--bandwidth", "inf"], "argument --bandwidth: must be a finite number > 0"),
])
def test_zero_negative_and_non_finite_counts(module, argv, needle, capsys, no_model_load):
    assert_one_line_error(module, argv, capsys, 2, needle)


def test_sampling_arguments_are_checked_by_the_library(tiny):
    from reference import load_model

    model = load_model(tiny)
    for kwargs, needle in (({"temperature": math.nan}, "temperature must be a finite number"),
                           ({"temperature": math.inf}, "temperature"), ({"top_p": math.nan}, "top_p"),
                           ({"top_k": 1.5}, "top_k must be an integer"), ({"max_new_tokens": 2.5}, "max_new_tokens")):
        args = {"input_ids": [1], "max_new_tokens": 2, **kwargs}
        with pytest.raises(ValueError, match=needle):
            model.generate(**args)


# ------------------------------------------------------------------------------------------ decode_step's token
def test_decode_step_takes_an_int_token(tiny):
    from reference import load_model
    from reference.static_decode import StaticDecoder

    model = load_model(tiny)
    _, state = model.prefill([1, 2])
    static = StaticDecoder(model, capacity=8)
    static.prefill([1, 2])
    for decoder, st in ((model, state), (static, None)):
        for token, needle in ((torch.tensor(3), r"got a tensor of shape \(\) \(pass int\(t\)\)"),
                              (torch.tensor([3]), r"got a tensor of shape \(1,\)"),
                              (3.0, "got float 3.0"), (None, "got NoneType None"), (True, "got bool")):
            with pytest.raises(TypeError, match="decode_step takes one token id as an int, " + needle):
                decoder.decode_step(token, st)
        with pytest.raises(ValueError, match="token id 515 is outside the vocabulary"):
            decoder.decode_step(515, st)
    with pytest.raises(TypeError, match="token ids must be ints, got float"):
        model.prefill([1, 2.5])
    with pytest.raises(TypeError, match="input_ids must be token ids"):
        model.prefill(None)
    import numpy as np

    model.decode_step(np.int64(3), state)  # NumPy integers are integers


# ------------------------------------------------------------------------------------------ stages
def test_unknown_stage_names_list_the_valid_ones(tiny, capsys, no_model_load):
    assert_one_line_error("megakernel.generate", ["--stage", "fast", "--model", tiny], capsys, 2,
                          r"argument --stage: invalid choice: 'fast' \(choose from .*reference.*layered.*persistent")
    assert_one_line_error("megakernel.compare", ["--stages", "reference,fast"], capsys, 2,
                          "argument --stages: unknown stage 'fast': choose from transformers, reference, layered")
    assert_one_line_error("megakernel.compare", ["--stages", "reference"], capsys, 2,
                          "--stages needs at least two stages")
    assert_one_line_error("megakernel.bench.decode", ["--systems", "layered,fast"], capsys, 2,
                          "unknown system 'fast': choose from llama.cpp, ")


def test_unknown_stage_in_the_library(tiny):
    import megakernel
    from megakernel.stages import UnknownStageError

    with pytest.raises(UnknownStageError, match="unknown stage 'fast': choose one of reference, layered, persistent"):
        megakernel.load(tiny, stage="fast")


def test_a_context_longer_than_the_cache(tiny, capsys, no_model_load):
    from megakernel.launch import SIMULATOR

    assert_one_line_error("megakernel.generate", ["--stage", "reference", "--model", tiny, "--prompt", "a",
                                                  "--max-new-tokens", 5000], capsys, 2,
                          r"the prompt \(1 tokens\) and --max-new-tokens 5000 need 5000 positions, more than the "
                          r"4096 this run can hold \(the model's max_position_embeddings\)")
    assert_one_line_error("reference.generate", ["--model", tiny, "--prompt", "a", "--max-new-tokens", 4097], capsys,
                          2, "need 4097 positions, more than the 4096")
    if SIMULATOR:  # the kernel stages' cache: 128 positions by default in the simulator
        assert_one_line_error("megakernel.generate", ["--stage", "layered", "--model", tiny, "--prompt", "a",
                                                      "--max-new-tokens", 200], capsys, 2,
                              "need 200 positions, more than the 128", "--max-context raises it")
        assert_one_line_error("megakernel.compare", ["--tiny", "--prompt-len", 60, "--tokens", 10], capsys, 2,
                              r"--prompt-len 60 \+ --tokens 10 need 70 positions, more than the kernel stages' KV "
                              r"cache of 64 \(--max-context\)")
        assert_one_line_error("megakernel.generate", ["--stage", "layered", "--model", tiny, "--max-context", 5000],
                              capsys, 2, "--max-context 5000 is more than this model's max_position_embeddings")


def test_a_prompt_outside_a_small_vocabulary(tiny, capsys, no_model_load):
    assert_one_line_error("megakernel.generate", ["--stage", "reference", "--model", tiny, "--prompt", "Paris"],
                          capsys, 2, "--prompt has token id \\d+, outside this model's vocabulary of 515")
    assert_one_line_error("megakernel.generate", ["--stage", "reference", "--model", tiny, "--prompt", ""],
                          capsys, 2, "--prompt is empty")


def test_no_gpu_for_a_gpu_stage_says_how_to_simulate(tiny, capsys, no_model_load, monkeypatch):
    """As on a CPU-only machine without NUMBA_ENABLE_CUDASIM."""
    from megakernel import launch

    monkeypatch.setattr(launch, "SIMULATOR", False)
    monkeypatch.setattr(launch, "gpu_available", lambda: False)
    for module, argv in (("megakernel.generate", ["--stage", "layered", "--model", tiny]),
                         ("megakernel.compare", ["--tiny"])):
        assert_one_line_error(module, argv, capsys, 2, "need a CUDA GPU and none is usable here",
                              "set NUMBA_ENABLE_CUDASIM=1 before Python starts")
    assert_one_line_error("megakernel.bench.kernels", [], capsys, 2, "needs a CUDA GPU",
                          "NUMBA_ENABLE_CUDASIM=1 python -m pytest tests/test_kernels_matvec.py")
    assert_one_line_error("megakernel.bench.consumer", [], capsys, 2, "needs a CUDA GPU")
    assert_one_line_error("megakernel.bench.l2_prefetch", [], capsys, 2, "needs a CUDA GPU")
    assert_one_line_error("megakernel.bench.ab", ["--variants", "13,14"], capsys, 2, "needs a CUDA GPU")


def test_an_output_directory_that_is_a_file_is_refused(tmp_path, capsys):
    """``--out`` of the tools that write results (``cli.output_directory``), refused before any GPU work."""
    f = tmp_path / "results.json"
    f.write_text("{}")
    for module, argv in (("megakernel.bench.decode", ["--out", f]), ("megakernel.bench.kernels", ["--out", f]),
                         ("megakernel.bench.ab", ["--variants", "13,14", "--out", f])):
        assert_one_line_error(module, argv, capsys, 2, "--out .*results.json is a file; give a directory")


def test_a_timing_tool_refuses_the_simulator_and_a_machine_without_a_gpu(monkeypatch):
    """``launch.timing_problem``, shared by the GPU timing tools: one line, naming the tool and, where given, the
    command that checks its kernels on the CPU instead; None on a GPU."""
    from megakernel import launch

    monkeypatch.setattr(launch, "SIMULATOR", True)
    line = launch.timing_problem("the probe", "python -m pytest tests/x.py")
    assert line.startswith("NUMBA_ENABLE_CUDASIM is set") and "unset it to run the probe on the GPU" in line
    assert line.endswith("(its kernels' correctness runs in the simulator: python -m pytest tests/x.py)")
    monkeypatch.setattr(launch, "SIMULATOR", False)
    monkeypatch.setattr(launch, "gpu_available", lambda: False)
    assert launch.timing_problem("the probe") == "the probe times the GPU and needs a CUDA GPU (none is usable here)"
    monkeypatch.setattr(launch, "gpu_available", lambda: True)
    assert launch.timing_problem("the probe") is None


def test_no_gpu_in_the_library(tiny, monkeypatch):
    import megakernel
    from megakernel import launch

    monkeypatch.setattr(launch, "SIMULATOR", False)
    monkeypatch.setattr(launch, "gpu_available", lambda: False)
    with pytest.raises(launch.NoGPUError, match="NUMBA_ENABLE_CUDASIM=1"):
        megakernel.load(tiny, stage="layered")


def test_a_model_too_big_for_the_simulator_is_refused_at_once(tmp_path, capsys, no_model_load, monkeypatch):
    """The 0.8B config in a directory without weights: refused from the config alone, before any weight is read."""
    from megakernel import launch
    import megakernel.stages

    monkeypatch.setattr(launch, "SIMULATOR", True)
    monkeypatch.setattr(megakernel.stages, "SIMULATOR", True)
    shutil.copy(ROOT / "data" / "qwen3.5-0.8b" / "config.json", tmp_path / "config.json")
    needles = ["hidden_size = 1024 is too big for the kernel stages in Numba's CUDA simulator", "use a tiny config"]
    assert_one_line_error("megakernel.generate", ["--stage", "layered", "--model", tmp_path], capsys, 2, *needles)
    assert_one_line_error("megakernel.compare", ["--model", tmp_path], capsys, 2, *needles)
    assert_one_line_error("megakernel.compare", [], capsys, 2, *needles)  # the default 0.8B checkpoint


def test_a_model_too_big_for_the_simulator_in_the_library(tmp_path, monkeypatch):
    import megakernel
    from megakernel import launch
    import megakernel.stages
    from megakernel.testing.simulator import SimulatorLimitError

    monkeypatch.setattr(launch, "SIMULATOR", True)
    monkeypatch.setattr(megakernel.stages, "SIMULATOR", True)
    shutil.copy(ROOT / "data" / "qwen3.5-0.8b" / "config.json", tmp_path / "config.json")  # no weights at all
    with pytest.raises(SimulatorLimitError, match="hidden_size = 1024 is too big"):
        megakernel.load(tmp_path, stage="layered")


# ------------------------------------------------------------------------------------------ the results tool
def test_results_tool_errors(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("QWEN35_RESULTS_DIR", str(tmp_path))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- results:start -->\n<!-- results:end -->\n")
    assert_one_line_error("megakernel.bench.results", ["--json", tmp_path / "nope.json"], capsys, 2,
                          "--json \\S*nope.json: no such file")
    assert_one_line_error("megakernel.bench.results", ["--readme", readme, "--no-chart"], capsys, 1,
                          "no bench_\\*.json in", "run `python -m megakernel.bench` on a GPU machine first")
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    assert_one_line_error("megakernel.bench.results", ["--json", bad, "--readme", readme], capsys, 1,
                          "bad.json is not valid JSON")


def test_results_tool_leaves_the_committed_readme_as_it_is(capsys):
    """Rendering the committed results changes nothing: no line of the README is rewritten by accident."""
    from megakernel.bench import results

    status, out, _ = run("megakernel.bench.results", ["--print", "--no-chart"], capsys)
    readme = (ROOT / "README.md").read_text()
    assert status == 0
    assert results.replace_section(readme, out) == readme


def test_numba_low_occupancy_warnings_are_off():
    """Small grids are deliberate in the kernels (one block per head, 1024-row matvecs): no warning for users."""
    import numba

    import megakernel  # noqa: F401 (turns them off on import)

    if "NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS" not in os.environ:
        assert not numba.config.CUDA_LOW_OCCUPANCY_WARNINGS


# ------------------------------------------------------------------------------------------ --debug, exit paths
def test_debug_shows_the_exception(tiny, capsys):
    with pytest.raises(cli.UsageError, match="must be a finite number"):
        _cli("reference.generate").main(["--temperature", "nan", "--debug"])
    with pytest.raises(cli.UsageError, match="is a file") as e:
        _cli("megakernel.generate").main(["--stage", "reference", "--model", tiny / "config.json", "--debug"])
    assert isinstance(e.value.__cause__, NotADirectoryError)  # the library's typed error, in the traceback


def test_a_failure_while_running_is_one_line_with_status_1(tiny, capsys, monkeypatch):
    import megakernel

    def broken(*args, **kwargs):
        raise RuntimeError("device lost\nsecond line")

    monkeypatch.setattr(megakernel, "load", broken)
    status, out, err = run("megakernel.generate", ["--stage", "reference", "--model", tiny, "--prompt", "a"], capsys)
    *progress, last = err.strip().splitlines()  # "loading ..." came first
    assert status == 1 and "Traceback" not in err and len(progress) == 1
    assert last == ("python -m megakernel.generate: error: RuntimeError: device lost second line (rerun with --debug "
                    "to see where)")


def _subprocess(*argv):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", *map(str, argv)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)


def test_the_real_entry_points_print_no_traceback(tmp_path):
    p = _subprocess("megakernel.generate", "--stage", "reference", "--model", tmp_path / "nope")
    assert p.returncode == 2 and p.stdout == ""
    assert p.stderr.count("\n") == 1
    assert p.stderr.startswith("python -m megakernel.generate: error: --model: checkpoint directory")
    p = _subprocess("reference.generate", "--temperature", "-1")
    assert p.returncode == 2 and "Traceback" not in p.stderr and p.stderr.count("\n") == 1
    assert p.stderr.startswith("python -m reference.generate: error: argument --temperature")


# ------------------------------------------------------------------------------------------ help
CLIS = ["reference.generate", "megakernel.generate", "megakernel.demo", "megakernel.compare",
        "megakernel.bench.decode", "megakernel.bench.results", "megakernel.bench.kernels", "megakernel.bench.consumer",
        "megakernel.bench.l2_prefetch", "megakernel.bench.ab"]


@pytest.mark.parametrize("module", CLIS)
def test_every_flag_has_help_and_usage_shows_python_m(module):
    import argparse

    parser = _cli(module).parser
    assert parser.prog.startswith("python -m "), parser.prog
    text = parser.format_help()
    assert text.startswith(f"usage: {parser.prog}")
    for action in parser._actions:
        assert action.help and action.help != argparse.SUPPRESS, f"{module}: {action.option_strings} has no help"
        if action.choices:
            assert all(str(c) in text for c in action.choices)


def test_readme_commands_use_real_flags():
    """Every ``python -m TOOL --flag`` in the READMEs names a flag that tool has."""
    modules = {"megakernel.bench": "megakernel.bench.decode"}
    seen = 0
    for readme in (ROOT / "README.md", ROOT / "notebooks" / "README.md"):
        for line in readme.read_text().splitlines():
            for m in re.finditer(r"python -m ([\w.]+)((?:\s+[^\s`#|]+)*)", line):
                module = modules.get(m.group(1), m.group(1))
                if module not in CLIS:
                    continue
                flags = {a for action in _cli(module).parser._actions for a in action.option_strings}
                for flag in re.findall(r"(--[\w-]+)", m.group(2)):
                    assert flag in flags, f"{readme.name}: `python -m {m.group(1)} {flag}`: no such flag"
                    seen += 1
    assert seen > 10
