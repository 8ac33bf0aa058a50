"""The suite's CI policy (tests/conftest.py): a skip passes on a laptop and fails on CI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).resolve().parents[1] / "conftest.py"


def _run(tmp_path: Path, ci: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_needs_tool.py").write_text(
        "import pytest\n\ndef test_needs_tool():\n    pytest.skip('frobnicate is not installed')\n\n"
        "@pytest.mark.xfail(reason='known')\ndef test_known_bug():\n    assert False\n")
    env = {**os.environ, "CI": ci}
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)


def test_a_skip_passes_off_ci(tmp_path: Path) -> None:
    r = _run(tmp_path, "")
    assert r.returncode == 0, r.stdout
    assert "1 skipped, 1 xfailed" in r.stdout


def test_a_skip_fails_on_ci_with_its_reason(tmp_path: Path) -> None:
    r = _run(tmp_path, "true")
    assert r.returncode == 1, r.stdout
    assert "skipped on CI, where every test must run: frobnicate is not installed" in r.stdout
    assert "1 failed, 1 xfailed" in r.stdout
