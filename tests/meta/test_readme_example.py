"""README's "Writing a task type" example, run as written: the task type and its test."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _blocks() -> dict[str, str]:
    """The README's python blocks whose first line names their file (`# tasks/x.py`)."""
    readme = (ROOT / "README.md").read_text()
    found = {}
    for body in re.findall(r"```python\n(.*?)```", readme, re.S):
        first = body.splitlines()[0]
        if first.startswith("# ") and first.endswith(".py"):
            found[first[2:]] = body
    return found


def test_the_task_type_example_and_its_test_pass(tmp_path: Path) -> None:
    blocks = _blocks()
    assert {"tasks/folder_size.py", "tests/tasks/test_folder_size.py"} <= set(blocks)
    for name, body in blocks.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    # the example's module lives in this scratch tasks/ folder, found as the checkout's would be
    (tmp_path / "conftest.py").write_text(
        f"import tasks\ntasks.__path__.append({str(tmp_path / 'tasks')!r})\n")
    r = subprocess.run([sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-q", "-W", "error",
                        str(tmp_path / "tests")], cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    # each async test runs once per anyio backend installed (asyncio, and trio where present)
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) >= 3 and "failed" not in r.stdout, r.stdout
