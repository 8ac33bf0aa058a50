"""The task lock's holder note, read by another user than the holder's (a `task:run` started by
one user, the daemon or another `task:run` running as another)."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedulerd.tasklock import TaskLock

ROOT = Path(__file__).resolve().parents[2]
SYSTEM_PY = "/usr/bin/python3"  # the venv's may live where `nobody` cannot read
HOLDER = "import sys; from pathlib import Path; from schedulerd.tasklock import TaskLock; " \
         "print(TaskLock(Path(sys.argv[1]), sys.argv[2]).holder() or 'the daemon')"


@pytest.fixture
def open_dir() -> Iterator[Path]:
    """A world-traversable folder, so that `nobody` can read the note."""
    d = tempfile.mkdtemp(prefix="sd-lock-")
    os.chmod(d, 0o755)
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


def holder_as_nobody(lock_dir: Path, name: str) -> str:
    if os.getuid() != 0 or not os.access(SYSTEM_PY, os.X_OK):
        pytest.skip("needs root and /usr/bin/python3 to read the lock as nobody")
    r = subprocess.run([SYSTEM_PY, "-c", HOLDER, str(lock_dir), name], capture_output=True, text=True,
                       user=pwd.getpwnam("nobody").pw_uid, env={"PYTHONPATH": str(ROOT)}, cwd="/", timeout=20)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_holder_running_as_another_user_is_named_not_taken_for_the_daemon(open_dir: Path) -> None:
    lock_dir = open_dir / "locks"
    lock = TaskLock(lock_dir, "t")
    assert lock.try_acquire("task:run")
    try:
        os.chmod(lock_dir, 0o755)
        os.chmod(lock.note, 0o644)
        # signalling a root process is not permitted to nobody (EPERM): the process is there all the same
        assert holder_as_nobody(lock_dir, "t") == f"{os.getpid()} task:run"
    finally:
        lock.release()
    assert holder_as_nobody(lock_dir, "t") == "the daemon"  # the note went with the lock
    gone = subprocess.Popen(["true"])  # a holder killed before it removed its note: not named
    gone.wait()
    lock.note.write_text(f"{gone.pid} task:run")
    os.chmod(lock.note, 0o644)
    assert holder_as_nobody(lock_dir, "t") == "the daemon"
    assert lock.holder() == ""
