"""The CPU-testable parts of the benchmark: llama-bench JSON -> rows, the floor arithmetic, the checks, the README
table from a results JSON, the whole pipeline on a tiny model on the CPU, and the CLI's refusal without a GPU.

Fixtures (tests/data/): llama_bench_sample.json is shaped like ``llama-bench -o json`` output (made-up numbers);
bench_results_sample.json is a results file as megakernel.bench writes it (made-up numbers, a failed and an
unavailable system, unchecked llama.cpp rows).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megakernel.bench import results as R
from megakernel.bench.decode import Bench, Settings, floor_seconds, fraction_of_floor, prompt_ids, summarize, write_outputs
from megakernel.bench.systems import (
    CheckOutcome, Oracle, System, check_system, llama_cpp_rows, read_llama_bench_json,
)
from reference import Qwen35Config
from reference.budget import H100_COPY_BANDWIDTH, decode_budget
from reference.notebook import PUBLISHED_CONFIG

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(__file__).parent / "data"
LLAMA = DATA / "llama_bench_sample.json"
RESULTS = DATA / "bench_results_sample.json"
CONFIG = Qwen35Config.from_pretrained(PUBLISHED_CONFIG)


def floor_fn(context, tokens):
    return floor_seconds(CONFIG, context, tokens)


# ------------------------------------------------------------------------------------------------ floor
def test_floor_is_the_mean_over_the_run_and_fraction_is_floor_over_measured():
    b0, b1 = decode_budget(CONFIG, 16), decode_budget(CONFIG, 16 + 127)
    expected = (b0.total_bytes + b1.total_bytes) / 2 / H100_COPY_BANDWIDTH
    assert floor_seconds(CONFIG, 16, 128) == pytest.approx(expected, rel=1e-12)
    # the README's figure: ~0.51 ms/token, ~1,950 tok/s at short context
    assert 0.50e-3 < floor_seconds(CONFIG, 16, 128) < 0.52e-3
    # KV bytes grow with context: 12,288 B per position for the 0.8B model
    assert decode_budget(CONFIG, 4096).total_bytes - decode_budget(CONFIG, 4095).total_bytes == 12288
    f = floor_seconds(CONFIG, 512, 128)
    assert fraction_of_floor(f, f) == pytest.approx(1.0)
    assert fraction_of_floor(f, 2 * f) == pytest.approx(0.5)
    assert floor_seconds(CONFIG, 16, 128, bandwidth=H100_COPY_BANDWIDTH / 2) == pytest.approx(2 * expected)
    with pytest.raises(ValueError):
        fraction_of_floor(f, 0.0)


def test_summarize_median_spread_and_fraction():
    samples = [(0.5, 100), (0.25, 100), (1.0, 100), (0.4, 100), (0.2, 100)]  # 200, 400, 100, 250, 500 tok/s
    s = summarize(samples, floor_s=1e-3)
    assert s["tok_s"] == pytest.approx(250.0)
    assert s["tok_s_p10"] == pytest.approx(100 + 0.4 * (200 - 100))  # linear interpolation, as numpy
    assert s["tok_s_p90"] == pytest.approx(400 + 0.6 * (500 - 400))
    assert s["ms_per_token"] == pytest.approx(4.0)
    assert s["fraction_of_floor"] == pytest.approx(1e-3 / 4e-3)
    assert summarize([(1.0, 10)], None)["fraction_of_floor"] is None


def test_prompt_ids_are_fixed_and_below_the_special_tokens():
    a = prompt_ids(4096, CONFIG.vocab_size, seed=0)
    assert a == prompt_ids(4096, CONFIG.vocab_size, seed=0) and len(a) == 4096
    assert max(a) < 248044 and min(a) >= 0
    assert prompt_ids(16, CONFIG.vocab_size) != prompt_ids(16, CONFIG.vocab_size, seed=1)
    assert max(prompt_ids(64, 515)) < 515


# ------------------------------------------------------------------------------------------------ llama.cpp
def test_llama_bench_json_to_rows():
    tests = read_llama_bench_json(LLAMA)
    rows = {r["workload"]: r for r in llama_cpp_rows(tests, floor_fn)}
    assert set(rows) == {"pp512", "tg128@0", "tg128@16", "tg128@512", "tg128@4096"}  # the pg test is skipped
    tg = rows["tg128@512"]
    src = next(t for t in tests if t["n_gen"] == 128 and t["n_prompt"] == 0 and t["n_depth"] == 512)
    assert tg["kind"] == "decode" and tg["context"] == 512 and tg["tokens"] == 128
    assert tg["tok_s"] == pytest.approx(455.9)  # median of samples_ts
    assert tg["tok_s_p10"] < tg["tok_s"] < tg["tok_s_p90"]
    assert tg["ms_per_token"] == pytest.approx(sorted(src["samples_ns"])[2] / 1e6 / 128)
    assert tg["fraction_of_floor"] == pytest.approx(floor_fn(512, 128) / (tg["ms_per_token"] / 1e3))
    assert tg["checked"] == "no" and "not checked" in tg["check"] and tg["status"] == "ok"
    pp = rows["pp512"]
    assert pp["kind"] == "prefill" and pp["fraction_of_floor"] is None and pp["tok_s"] == pytest.approx(20222.9)
    assert "a1b2c3d4" in pp["note"]


def test_llama_rows_without_samples_use_the_mean(tmp_path):
    tests = read_llama_bench_json(LLAMA)
    for t in tests:
        t.pop("samples_ts")
        t.pop("samples_ns")
    p = tmp_path / "l.json"
    p.write_text(json.dumps({"results": tests}))  # also accepts an object holding the list
    rows = {r["workload"]: r for r in llama_cpp_rows(read_llama_bench_json(p), floor_fn)}
    assert rows["tg128@16"]["tok_s"] == pytest.approx(tests[3]["avg_ts"])
    assert rows["tg128@16"]["tok_s_p10"] is None
    # JSONL (llama-bench -o jsonl) works too
    p.write_text("\n".join(json.dumps(t) for t in tests))
    assert len(read_llama_bench_json(p)) == len(tests)


def test_llama_bench_json_garbage_is_refused_clearly(tmp_path):
    p = tmp_path / "bad.json"
    p.write_text("not json at all {")
    with pytest.raises(ValueError, match="neither llama-bench JSON"):
        read_llama_bench_json(p)
    p.write_text(json.dumps([{"model": "x"}]))
    with pytest.raises(ValueError, match="lacks n_prompt"):
        read_llama_bench_json(p)


# ------------------------------------------------------------------------------------------------ checks
class FakeSystem(System):
    def __init__(self, tokens, logits):
        self.name, self._tokens, self._logits = "fake", tokens, logits

    def greedy(self, prompt, n):
        return self._tokens

    def teacher_forced(self, prompt, tokens):
        return self._logits


def _oracle(n=4, vocab=10):
    logits = [torch.arange(vocab, dtype=torch.float32).roll(i) for i in range(n)]  # argmax 9, 0, 1, 2
    return Oracle("oracle", [int(l.argmax()) for l in logits], logits, tol=1e-2)


def test_check_passes_identical_and_refuses_bugs():
    o = _oracle()
    assert check_system(FakeSystem(o.tokens, [l.clone() for l in o.logits]), o, [1]).passed
    # tokens only (no logits API): must be identical
    fake = FakeSystem(o.tokens, None)
    assert check_system(fake, o, [1]).passed
    fake._tokens = o.tokens[:2] + [5, 5]
    out = check_system(fake, o, [1])
    assert not out.passed and "step 2" in out.detail
    # logits far off: fails even though the tokens agree
    bad = [l.clone() for l in o.logits]
    bad[1][3] += 5.0
    out = check_system(FakeSystem(o.tokens, bad), o, [1])
    assert not out.passed and isinstance(out, CheckOutcome) and "tolerance" in out.detail
    # NaN logits fail
    nan = [l.clone() for l in o.logits]
    nan[2][0] = float("nan")
    assert not check_system(FakeSystem(o.tokens, nan), o, [1]).passed


def test_check_accepts_generate_stopping_at_eos():
    o = _oracle()
    fake = FakeSystem(o.tokens[:2], [l.clone() for l in o.logits])
    assert not check_system(fake, o, [1]).passed  # too short, no reason
    fake.stop_tokens = (o.tokens[1],)
    out = check_system(fake, o, [1])
    assert out.passed and "EOS" in out.detail


def test_check_accepts_a_near_tie_only_when_the_logit_error_explains_it():
    o = _oracle()
    o.logits[2][8] = 8.995  # step 2: token 1 (9.0) just ahead of token 8
    mine = [l.clone() for l in o.logits]
    mine[2][8] = 9.005  # within tolerance (1e-2 of max 9) and flips the argmax
    tokens = o.tokens[:2] + [8, 9]
    out = check_system(FakeSystem(tokens, mine), o, [1])
    assert out.passed and "near tie" in out.detail and out.tokens_agree == 2
    # the same divergence without the logits to explain it (greedy path disagrees with its own logits): fails
    out = check_system(FakeSystem(o.tokens[:2] + [5, 9], mine), o, [1])
    assert not out.passed and "not a near tie" in out.detail


# ------------------------------------------------------------------------------------------------ README table
README = """# Title

Intro text that must not change.

## Results

<!-- results:start -->
old table
<!-- results:end -->

Text after the table, also unchanged.
"""


def test_readme_section_round_trip(tmp_path):
    results = R.load_results(RESULTS)
    section = R.results_markdown(results, "data/results/bench_latest.png")
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert R.update_readme(readme, section)
    text = readme.read_text()
    before, rest = text.split(R.START)
    inside, after = rest.split(R.END)
    assert before == README.split(R.START)[0]
    assert after == README.split(R.END)[1]
    assert "old table" not in inside and section.strip() in inside
    assert not R.update_readme(readme, section)  # idempotent
    table = R.markdown_table(results)
    lines = {line.split("|")[1].strip(): line for line in table.splitlines()[2:]}
    assert "| system | tg128 @16 | tg128 @512 | tg128 @4096 | pp512 | fraction of floor @16 |" in table
    # a failed check: "failed", no number anywhere in its row
    failed = lines["`reference-compile`"]
    assert failed.count("failed") >= 5 and not any(ch.isdigit() for ch in failed.split("|")[2:7])
    assert "**FAILED**" in failed
    # not checked rows are marked; checked rows say so; the oracle is named
    assert "**not checked**" in lines["`llama.cpp`"] and "468" in lines["`llama.cpp`"]
    assert "yes: tokens 16/16" in lines["`layered`"] and "134" in lines["`layered`"]
    assert "oracle" in lines["`reference-eager`"]
    assert "1 graph (980 kernels)" in lines["`reference-graph`"]
    # the fraction of the floor at the first context, from the row
    row = next(r for r in results["rows"] if r["system"] == "layered" and r["workload"] == "tg128@16")
    assert f"{100 * row['fraction_of_floor']:.0f}%" in lines["`layered`"]
    # systems that did not run are listed with the reason, not in the table
    assert "`megakernel`" not in lines and "`megakernel` (not built yet" in section
    assert "Test GPU (fixture)" in section and "1,955 tok/s" in section
    assert "![" in section and "data/results/bench_latest.png" in section


def test_results_file_floor_model_matches_the_budget():
    """results.py recomputes floors (for llama.cpp rows) from the JSON alone: the same numbers as the bench's."""
    fn = R.floor_fn_from_results(R.load_results(RESULTS))
    for context, tokens in ((0, 128), (16, 128), (4096, 128), (512, 1)):
        assert fn(context, tokens) == pytest.approx(floor_fn(context, tokens), rel=1e-12)


def test_results_cli_adds_llama_rows_without_a_gpu(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN35_RESULTS_DIR", str(tmp_path / "results"))
    run = json.loads(RESULTS.read_text())
    run["rows"] = [r for r in run["rows"] if r["system"] != "llama.cpp"]
    del run["systems"]["llama.cpp"]
    src = tmp_path / "run.json"
    src.write_text(json.dumps(run))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    assert R.main(["--json", str(src), "--llama-json", str(LLAMA), "--readme", str(readme), "--no-chart"]) == 0
    saved = R.load_results(R.find_latest(tmp_path / "results"))
    rows = {r["workload"]: r for r in saved["rows"] if r["system"] == "llama.cpp"}
    assert rows["tg128@16"]["fraction_of_floor"] == pytest.approx(
        floor_fn(16, 128) / (rows["tg128@16"]["ms_per_token"] / 1e3))
    assert "`llama.cpp` | 468" in readme.read_text()
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    assert R.main(["--json", str(src), "--llama-json", str(bad), "--readme", str(readme), "--no-chart"]) == 1


def test_readme_without_markers_is_refused(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# no markers here\n")
    with pytest.raises(ValueError, match="markers"):
        R.update_readme(readme, "x")
    assert readme.read_text() == "# no markers here\n"


def test_results_cli_and_merge(tmp_path, monkeypatch):
    monkeypatch.setenv("QWEN35_RESULTS_DIR", str(tmp_path / "results"))
    readme = tmp_path / "README.md"
    readme.write_text(README)
    chart = tmp_path / "chart.png"
    assert R.main(["--json", str(RESULTS), "--readme", str(readme), "--chart", str(chart)]) == 0
    assert chart.stat().st_size > 1000 and "`layered`" in readme.read_text()
    assert "](chart.png)" in readme.read_text()
    # no results at all: a clear message, status 1
    assert R.main(["--readme", str(readme), "--no-chart"]) == 1
    # merging: a later run of one system replaces that system's rows of the same workloads only
    later = json.loads(RESULTS.read_text())
    later["created"] = "2026-01-03T00:00:00+00:00"
    later["systems"] = {"layered": dict(later["systems"]["layered"])}
    later["rows"] = [dict(r, tok_s=999.0) for r in later["rows"] if r["system"] == "layered"]
    p2 = tmp_path / "later.json"
    p2.write_text(json.dumps(later))
    merged = R.merge_results([R.load_results(RESULTS), R.load_results(p2)])
    assert {r["tok_s"] for r in merged["rows"] if r["system"] == "layered"} == {999.0}
    # a later run at another context adds its rows beside the earlier ones
    deeper = dict(later, rows=[dict(r, workload="tg128@32768", tok_s=5.0) for r in later["rows"][:1]],
                  settings=dict(later["settings"], contexts=[32768]))
    p4 = tmp_path / "deeper.json"
    p4.write_text(json.dumps(deeper))
    both = R.merge_results([R.load_results(p2), R.load_results(p4)])
    layered = {r["workload"]: r["tok_s"] for r in both["rows"] if r["system"] == "layered"}
    assert layered.pop("tg128@32768") == 5.0 and set(layered.values()) == {999.0} and layered
    assert both["settings"]["contexts"] == sorted(set(later["settings"]["contexts"]) | {32768})
    assert any(r["system"] == "llama.cpp" for r in merged["rows"]) and "reference-compile" in merged["systems"]
    # rows keep their run's date: a merge of two days' runs names both in the README section
    assert R._dates(merged) == R.load_results(RESULTS)["date"]
    other_day = dict(later, date="2099-01-02")
    assert R._dates(R.merge_results([R.load_results(RESULTS), other_day])) == \
        f"2099-01-02 (`layered`); {R.load_results(RESULTS)['date']} (the other rows)"
    assert R.main(["--json", str(RESULTS), str(p2), "--readme", str(readme), "--no-chart"]) == 0
    saved = list((tmp_path / "results").glob("bench_*.json"))
    assert len(saved) == 1 and R.find_latest(tmp_path / "results") == saved[0]
    # "--json A --json B" merges both too (not only the last one given)
    saved[0].unlink()
    assert R.main(["--json", str(RESULTS), "--json", str(p2), "--readme", str(readme), "--no-chart"]) == 0
    assert len(R.load_results(saved[0])["rows"]) == len(merged["rows"])
    other = dict(later, device="Another GPU")
    p3 = tmp_path / "other.json"
    p3.write_text(json.dumps(other))
    with pytest.raises(ValueError, match="different devices"):
        R.merge_results([R.load_results(RESULTS), R.load_results(p3)])


# ------------------------------------------------------------------------------------------------ the pipeline
def test_bench_pipeline_on_cpu(tiny_checkpoint, tmp_path, monkeypatch):
    """The bench's own machinery on the CPU, tiny model: the check before timing, rows, JSON, chart, table.
    GPU-only systems are recorded as not run; a system whose check fails is recorded FAILED and never timed."""
    from megakernel.bench import decode as bench, systems as bench_systems

    timed = []

    class WrongLogits(bench_systems.DecoderSystem):
        """A stand-in kernel stage on the reference model whose logits are off by a large margin."""

        oracle_name = "reference bf16"

        def load(self):
            self.model = bench_systems._load_reference_bf16(self.ctx)

        def oracle(self):
            return bench_systems._reference_oracle(self.ctx, self.oracle_name, lambda: self.model, 5e-2)

        def teacher_forced(self, prompt, tokens):
            return [x + 10 * torch.rand_like(x) for x in super().teacher_forced(prompt, tokens)]

        def decode(self, ids, gen):
            timed.append(gen)
            return super().decode(ids, gen)

    real_make = bench.make_system
    monkeypatch.setattr(bench, "make_system", lambda name, ctx: WrongLogits(name, ctx) if name == "persistent-v1"
                        else real_make(name, ctx))
    settings = Settings(model=Path(tiny_checkpoint), out=tmp_path, contexts=[8, 20], gen=2, prefill=8, reps=2,
                        check_steps=3, llama_json=LLAMA,
                        systems=["llama.cpp", "reference-eager", "reference-graph", "layered", "persistent-v1"])
    res = Bench(settings, torch.device("cpu"), progress=False).run()
    path, png = write_outputs(res, tmp_path)
    doc = R.load_results(path)
    rows = {(r["system"], r["workload"]): r for r in doc["rows"]}
    ref = rows[("reference-eager", "tg2@8")]
    assert ref["status"] == "ok" and ref["tok_s"] > 0 and ref["checked"] == "oracle"
    assert len(ref["samples_s"]) == 2 and ref["fraction_of_floor"] > 0
    assert rows[("reference-eager", "pp8")]["status"] == "ok"
    assert doc["systems"]["reference-graph"]["status"] == "unavailable"
    assert "CUDA" in doc["systems"]["layered"]["reason"]
    bad = doc["systems"]["persistent-v1"]
    assert bad["status"] == "failed" and bad["checked"] == "FAILED" and not timed
    assert all(r["tok_s"] is None and r["status"] == "failed" for r in doc["rows"] if r["system"] == "persistent-v1")
    assert rows[("llama.cpp", "tg128@16")]["checked"] == "no"
    assert png is not None and png.exists() and (tmp_path / "bench_latest.png").exists()
    table = R.markdown_table(doc)
    assert "`persistent-v1` | failed" in table and "**FAILED**" in table
    # a second run of one system merges into the same file
    settings.systems = ["llama.cpp"]
    again = Bench(settings, torch.device("cpu"), progress=False).run()
    path2, _ = write_outputs(again, tmp_path)
    assert path2 == path and "reference-eager" in R.load_results(path)["systems"]


def test_transformers_systems_on_cpu(tiny_checkpoint):
    """The transformers adapters (cached loop and generate()) pass their check and time decode on the CPU."""
    pytest.importorskip("transformers")
    from megakernel.bench.systems import BenchContext, make_system

    ctx = BenchContext(path=Path(tiny_checkpoint), device=torch.device("cpu"), max_context=64,
                       check_prompt=[5, 17, 300], check_steps=3)
    for name in ("hf-loop-eager", "hf-generate-eager"):
        system = make_system(name, ctx)
        system.load()
        twin = system.check_target()  # the same code in fp32, checked against the fp32 reference
        assert twin is not system and twin.dtype == torch.float32
        outcome = check_system(twin, system.oracle(), ctx.check_prompt)
        twin.close()
        assert outcome.passed, outcome.detail
        assert outcome.worst_rel == 0.0  # transformers and the reference agree bit for bit in fp32
        seconds, steps = system.decode([1, 2], 2)
        assert seconds > 0 and steps == (1 if name == "hf-generate-eager" else 2)  # generate: N-1 decode forwards
        assert (system.prefill([1, 2]) is None) == (name == "hf-generate-eager")
        assert any("flash-linear-attention" in n for n in system.notes)
        system.close()


def test_transformers_with_fla_kernels_is_checked_at_the_tf32_tolerance(monkeypatch):
    """With flash-linear-attention importable on a GPU, transformers' DeltaNet layers run fla's Triton kernels,
    whose fp32 products are TF32: its fp32 twin is held to TOL_FP32_TF32 (named in the check's line), every other
    system and the cached oracle keep TOL_FP32."""
    from megakernel.bench import systems as S

    ctx = S.BenchContext(path=Path("unused"), device=torch.device("cuda"), max_context=8)
    ctx.oracles["reference fp32"] = S.Oracle("reference fp32", [1, 2], [torch.zeros(4), torch.zeros(4)], S.TOL_FP32)
    system = S.make_system("hf-generate-sdpa", ctx)
    monkeypatch.setattr(S.importlib.util, "find_spec", lambda name: object() if name == "fla" else None)
    oracle = system.oracle()
    assert oracle.tol == S.TOL_FP32_TF32 > S.TOL_FP32 and "TF32" in oracle.name
    assert ctx.oracles["reference fp32"].tol == S.TOL_FP32
    monkeypatch.setattr(S.importlib.util, "find_spec", lambda name: None)
    assert system.oracle().tol == S.TOL_FP32
    ctx.device = torch.device("cpu")  # fla's kernels need a GPU: on the CPU transformers runs its torch fallback
    monkeypatch.setattr(S.importlib.util, "find_spec", lambda name: object())
    assert S.make_system("hf-generate-sdpa", ctx).oracle().tol == S.TOL_FP32


# ------------------------------------------------------------------------------------------------ the CLI
def _run_cli(*args):
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", PYTHONPATH=os.pathsep.join(
        filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-m", "megakernel.bench", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
def test_systems_take_persistent_build_variants():
    """``--systems``: the named systems and persistent build variants (version + options, as the profiling tools
    spell them), in the order given; a variant's options are checked before anything runs."""
    import argparse

    from megakernel.bench.systems import BenchContext, KernelStage, make_system, parse_system_names

    names = parse_system_names("persistent-v12,persistent-v12+prod+noindec+preg=40-step,layered-graph")
    assert names == ["persistent-v12", "persistent-v12+prod+noindec+preg=40-step", "layered-graph"]
    with pytest.raises(argparse.ArgumentTypeError, match="unknown option 'bogus'"):
        parse_system_names("persistent-v12+bogus")
    with pytest.raises(argparse.ArgumentTypeError, match="unknown system 'nope'"):
        parse_system_names("layered,nope")
    ctx = BenchContext.__new__(BenchContext)
    ctx.device = torch.device("cpu")
    system = make_system("persistent-v12+prod+noindec+preg=40-step", ctx)
    assert isinstance(system, KernelStage) and system.version == 12 and system.step_mode
    assert system.options == {"producer": True, "inline_decode": False, "producer_regs": 40}
    with pytest.raises(ValueError, match="no \\+nobar"):
        make_system("persistent-v12+nobar", ctx)


def test_cli_without_gpu_exits_with_a_clear_message():
    p = _run_cli("--quick")
    assert p.returncode == 2
    assert "needs a CUDA GPU" in p.stderr
    assert "Traceback" not in p.stderr + p.stdout
    bad = _run_cli("--systems", "nonsense")
    assert bad.returncode == 2 and "unknown system" in bad.stderr and "Traceback" not in bad.stderr


def test_cli_list_needs_no_gpu(capsys):
    from megakernel.bench.decode import main

    assert main(["--list"]) == 0
    assert "reference-graph" in capsys.readouterr().out


def test_the_results_table_orders_every_persistent_version():
    """The README table sorts its rows by ``SYSTEM_ORDER``: every persistent version (and its one-launch-per-token
    twin) has a place there, so a new version is not sorted among the unknown systems at the end."""
    from megakernel.bench.results import SYSTEM_ORDER
    from megakernel.persistent import VERSIONS

    missing = [n for v in VERSIONS for n in (f"persistent-v{v}", f"persistent-v{v}-step") if n not in SYSTEM_ORDER]
    assert not missing, missing


# ------------------------------------------------------------------------------------------ the A/B timing
def test_ab_variants_are_parsed_before_anything_loads():
    """``python -m megakernel.bench.ab --variants``: two or more distinct builds, each a known version with known
    options; a misspelling is refused with a line naming it, before a model or kernel loads."""
    import argparse

    from megakernel.bench.ab import parse_variants

    assert parse_variants("13, 14") == ["13", "14"]
    assert parse_variants("13,13+llr+llt=2+pd,12") == ["13", "13+llr+llt=2+pd", "12"]
    for text, needle in (("13", "two or more"), ("13,13", "distinct"), ("13,99", "no persistent version 99"),
                         ("13,13+bogus", "unknown option 'bogus'"), ("13,13+nobar", "grid barriers")):
        with pytest.raises(argparse.ArgumentTypeError, match=needle):
            parse_variants(text)


def test_ab_ratios_are_taken_round_by_round():
    """The per-round ratio (not the ratio of medians) is what cancels the drift between rounds; each round starts
    at another variant."""
    from megakernel.bench.ab import ratio_summary, rotated

    r = ratio_summary([100.0, 200.0, 100.0], [101.0, 202.0, 103.0])
    assert r["ratio"] == pytest.approx(1.01) and r["ratio_min"] == pytest.approx(1.01)
    assert r["ratio_max"] == pytest.approx(1.03) and r["ratios"] == [1.01, 1.01, 1.03]
    assert [rotated(["a", "b", "c"], k) for k in range(4)] == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"],
                                                               ["a", "b", "c"]]


def test_ab_results_render_as_a_table_and_a_chart():
    """The stored A/B run (version 14 against 13 on the H200) renders: every checked row with its ratio to the
    baseline, and one bar per variant and context with a dot per round."""
    import matplotlib

    matplotlib.use("Agg")
    from megakernel.bench.ab import format_ab, plot_ab

    doc = json.loads((Path(__file__).resolve().parents[1] / "data" / "results"
                      / "ab-v14_nvidia-h200_2026-11-28.json").read_text())
    assert doc["variants"] == ["13", "14"] and all(r["check"]["passed"] for rows in doc["contexts"].values()
                                                   for r in rows.values())
    text = format_ab(doc)
    assert text.count("(baseline)") == len(doc["contexts"]) and "x1.02" in text
    ax = plot_ab(doc)
    assert len(ax.patches) == len(doc["contexts"]) and len(ax.lines) == len(doc["contexts"]) + 1
    failed = json.loads(json.dumps(doc))
    failed["contexts"]["16"]["14"] = {"status": "failed", "check": {"passed": False, "detail": "x"}}
    assert "FAILED its check: not timed" in format_ab(failed)
