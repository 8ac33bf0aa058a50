"""ruff and mypy, configured in pyproject.toml ([tool.ruff], [tool.mypy]): the checkout passes both,
`.ci/run` runs them before the tests, and a scratch copy with one finding added fails each (mypy: in
each of the engine, the repository domain and the task types)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def ruff(root: Path, *paths: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "ruff"), "check", "--no-cache", *paths], cwd=root, capture_output=True, text=True,
                          timeout=120)


def mypy(root: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    # the config (files, strict) is pyproject's; the cache goes to a temp folder, not the checkout
    return subprocess.run([str(BIN / "mypy"), "--cache-dir", str(cache)], cwd=root, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("mypy-cache")


def test_ruff_passes_on_the_checkout() -> None:
    r = ruff(ROOT, ".")
    assert r.returncode == 0, r.stdout + r.stderr


def test_mypy_passes_on_the_engine_the_repository_and_the_task_types(mypy_cache: Path) -> None:
    r = mypy(ROOT, mypy_cache)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "Success: no issues found" in r.stdout


def test_ci_runs_ruff_and_mypy_before_the_tests() -> None:
    lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert "set -euo pipefail" in lines  # a failing check ends the run
    tests = lines.index(".venv/bin/python -m pytest")
    assert lines.index(".venv/bin/ruff check .") < tests
    assert lines.index(".venv/bin/mypy") < tests


def test_a_finding_fails_each_check(tmp_path: Path, mypy_cache: Path) -> None:
    for package in ("schedulerd", "repository", "tasks"):
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    with (tmp_path / "schedulerd/protocol.py").open("a") as f:
        f.write("\n\ndef untyped(x):\n    import os\n    return x\n")
    r = ruff(tmp_path, "schedulerd")
    assert r.returncode == 1 and "F401" in r.stdout, r.stdout  # the unused import
    with (tmp_path / "repository/status.py").open("a") as f:  # a None not handled
        f.write("\n\ndef first_bit(mask: str | None) -> str:\n    return mask[0]\n")
    with (tmp_path / "tasks/noop.py").open("a") as f:
        f.write("\n\ndef untyped_task_helper(ctx):\n    return ctx\n")
    r = mypy(tmp_path, mypy_cache)
    assert r.returncode == 1, r.stdout
    assert "schedulerd/protocol.py" in r.stdout and "no-untyped-def" in r.stdout, r.stdout
    assert "repository/status.py" in r.stdout and "[index]" in r.stdout, r.stdout
    assert "tasks/noop.py" in r.stdout, r.stdout
