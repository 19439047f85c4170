"""Project plumbing: environment.yml and pyproject.toml list the same dependencies; CI runs the README's test
command; the README's two set-up commands exist."""

import re
import tomllib

from tests.conftest import ROOT


def _pyproject_deps() -> list[str]:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


def _environment_pip_deps() -> list[str]:
    lines = (ROOT / "environment.yml").read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.strip() == "- pip:")
    deps = []
    for line in lines[start + 1:]:
        m = re.match(r"^\s+- (.+)$", line)
        if not m:
            break
        dep = m.group(1).split("#")[0].strip()
        if not dep.startswith("-e"):
            deps.append(dep)
    return deps


def _normalise(dep: str) -> str:
    return re.sub(r"\s+", "", dep.split(";")[0]).lower().replace("_", "-")


def test_environment_yml_matches_pyproject():
    assert sorted(map(_normalise, _environment_pip_deps())) == sorted(map(_normalise, _pyproject_deps()))


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make demo" in readme
    assert re.search(r"^make test\b", ci, re.M)
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)
