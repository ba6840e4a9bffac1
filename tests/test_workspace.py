"""The workspace's own wiring: the dev environment and Hatch's agree, packages layer as designed."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]


def _requirement_names(lines: list[str]) -> dict[str, str]:
    out = {}
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[<>=!~\[ ]", line, maxsplit=1)[0].lower()
            out[name] = line.replace(" ", "")
    return out


def test_hatch_env_and_dev_requirements_agree() -> None:
    """`hatch run test` and `python3 tools/dev.py test` install the same test dependencies."""
    hatch = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["envs"]["default"]
    dev = _requirement_names((ROOT / "tools" / "requirements-dev.txt").read_text().splitlines())
    pins = _requirement_names((ROOT / "tools" / "constraints-dev.txt").read_text().splitlines())
    assert _requirement_names(hatch["dependencies"]) == {**dev, **pins}
    assert hatch["installer"] == "pip"


@pytest.mark.parametrize(
    ("package", "allowed"),
    [
        ("hiend-data", set()),
        ("hiend-model", {"hiend-data"}),
        ("hiend-train", {"hiend-data", "hiend-model"}),
        ("hiend-eval", {"hiend-data", "hiend-model"}),
    ],
)
def test_packages_depend_only_on_earlier_ones_and_pin_no_torch(package: str, allowed: set[str]) -> None:
    meta = tomllib.loads((ROOT / "packages" / package / "pyproject.toml").read_text())["project"]
    deps = list(meta["dependencies"]) + [
        d for extra in meta.get("optional-dependencies", {}).values() for d in extra
    ]
    names = _requirement_names(deps)
    assert {n for n in names if n.startswith("hiend-")} <= allowed
    assert not any(spec.startswith("torch==") for spec in names.values()), "a torch pin in package metadata"
    if package == "hiend-data":
        assert "torch" not in _requirement_names(meta["dependencies"]), (
            "hiend-data's core must stay torch-free"
        )


def test_ci_runs_the_lint_and_the_readme_test_command() -> None:
    # issue 8 item 6: ruff check + ruff format --check in CI, before the README's test command
    ci = (ROOT / ".ci" / "run").read_text()
    readme = (ROOT / "README.md").read_text()
    assert "python3 tools/dev.py test" in readme
    lines = [line.split("#")[0].strip() for line in ci.splitlines()]
    assert lines.index("python3 tools/dev.py lint") < lines.index("python3 tools/dev.py test")
    dev = (ROOT / "tools" / "dev.py").read_text()
    assert '"check"' in dev and '"format", "--check"' in dev
    pinned = [
        r for r in (ROOT / "tools" / "requirements-dev.txt").read_text().splitlines() if r.startswith("ruff")
    ]
    assert pinned and "==" in pinned[0]
