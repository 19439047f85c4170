"""tools/mutate.py stays in step with the sources: every planted bug's text is found exactly once, so a refactor
that moves a text fails here (update the MUTATIONS entry) instead of silently leaving a bug unplanted."""

import importlib.util
import sys

from tests.conftest import ROOT


def load_mutate():
    """tools/ is not a package: load the script as a module (registered first: its dataclasses look it up)."""
    name = "tools_mutate"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "tools" / "mutate.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def test_every_planted_text_is_found_exactly_once():
    mutate = load_mutate()
    assert mutate.check_texts(mutate.MUTATIONS) == []
    names = [m.name for m in mutate.MUTATIONS]
    assert len(set(names)) == len(names)
    for m in mutate.MUTATIONS:
        assert m.tests and all(t.startswith("tests/") and (ROOT / t.split("::")[0]).is_file() for t in m.tests), m.name


def test_a_missing_or_repeated_text_is_reported(tmp_path):
    mutate = load_mutate()
    (tmp_path / "k.py").write_text("a = 1\nb = 2\nb = 2\n")
    cases = [mutate.Mutation("gone", "k.py", (("c = 3\n", "c = 4\n"),), ("tests/x.py",)),
             mutate.Mutation("twice", "k.py", (("b = 2\n", "b = 3\n"),), ("tests/x.py",)),
             mutate.Mutation("fine", "k.py", (("a = 1\n", "a = 0\n"),), ("tests/x.py",)),
             mutate.Mutation("no file", "nope.py", (("a", "b"),), ("tests/x.py",))]
    problems = mutate.check_texts(cases, root=tmp_path)
    assert [p.split(":")[0] for p in problems] == ["gone", "twice", "no file"]
    assert "found 0 times" in problems[0] and "found 2 times" in problems[1]
