"""The layer contracts (pyproject's [tool.importlinter], docs/architecture.md): they hold for the
checkout, `.ci/run` checks them before the tests, and a scratch copy with one offending import
added breaks the contract that forbids it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"
PACKAGES = ("schedulerd", "repository", "tasks")


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(root)}  # the copy's packages, not the installed checkout's
    return subprocess.run([str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.fixture
def scratch(tmp_path: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    return tmp_path


def test_the_checkout_keeps_every_contract() -> None:
    r = lint_imports(ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "0 broken" in r.stdout


def test_ci_checks_the_contracts_before_the_tests() -> None:
    lines = [line.strip() for line in (ROOT / ".ci/run").read_text().splitlines()]
    assert "set -euo pipefail" in lines  # a failing lint-imports ends the run
    assert lines.index(".venv/bin/lint-imports") < lines.index(".venv/bin/python -m pytest")


@pytest.mark.parametrize(("module", "offending", "contract"), [
    ("schedulerd/daemon.py", "import tasks.noop", "the engine imports neither the task types nor the repository"),
    ("schedulerd/config.py", "from repository import DataboxSettings",
     "the engine imports neither the task types nor the repository"),
    ("repository/fields.py", "import tasks.archive", "layers: task types over the repository domain over the engine"),
    ("tasks/noop.py", "from repository.caption import parse_caption",
     "task types use the repository's public API (its __init__) only"),
    ("tasks/noop.py", "from schedulerd.daemon import run", "task types and the repository use the engine's plugin API"),
])
def test_an_offending_import_breaks_its_contract(scratch: Path, module: str, offending: str, contract: str) -> None:
    clean = lint_imports(scratch)
    assert clean.returncode == 0, clean.stdout + clean.stderr  # the copy itself is clean
    with (scratch / module).open("a") as f:
        f.write(f"\n{offending}  # noqa\n")
    r = lint_imports(scratch)
    assert r.returncode == 1, r.stdout + r.stderr
    broken = [line for line in r.stdout.splitlines() if line.endswith("BROKEN")]
    assert any(line.startswith(contract) for line in broken), r.stdout
    assert module.removesuffix(".py").replace("/", ".") in r.stdout  # the report names the importer
