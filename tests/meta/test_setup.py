"""The set-up a new admin follows: README's prerequisites, and what `.ci/run` does to the host."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
CI_RUN = ROOT / ".ci" / "run"


def _ci_packages() -> list[str]:
    m = re.search(r"^packages=\(([^)]*)\)", CI_RUN.read_text(), re.M)
    assert m, ".ci/run lists its Debian packages in packages=(...)"
    return m.group(1).split()


def test_readme_names_every_package_ci_installs() -> None:
    readme = (ROOT / "README.md").read_text()
    prerequisites = readme[readme.index("Prerequisites"):readme.index("With the shipped config")]
    packages = _ci_packages()
    assert {"python3-venv", "ffmpeg", "poppler-utils", "libimage-exiftool-perl"} <= set(packages)
    assert [p for p in packages if f"`{p}`" not in prerequisites] == []


def test_ci_run_leaves_the_hosts_services_alone() -> None:
    script = CI_RUN.read_text()
    assert not re.search(r"\b(service\s+\S+\s+(stop|restart)|systemctl\s+(stop|restart|disable)|pkill|killall)\b",
                         script.replace("${s}", "X"))
    assert not re.search(r"service\s+\"?\$", script)


def test_ci_run_refuses_an_old_python_before_installing_anything(tmp_path: Path) -> None:
    """A fake python3 that is 3.9: .ci/run stops at once with a clear line, before apt-get or venv."""
    ci = tmp_path / "checkout" / ".ci"
    ci.mkdir(parents=True)
    shutil.copy(CI_RUN, ci / "run")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    for tool in ("apt-get", "dpkg"):  # would record any install attempt
        (bindir / tool).write_text(f"#!/bin/sh\necho {tool} >> {log}\nexit 1\n")
    (bindir / "python3").write_text(
        f"#!/bin/sh\necho \"python3 $*\" >> {log}\n"
        "[ \"$1\" = -V ] && { echo 'Python 3.9.2'; exit 0; }\nexit 1\n")
    for f in bindir.iterdir():
        f.chmod(0o755)
    env = {**os.environ, "PATH": f"{bindir}:/usr/bin:/bin"}
    r = subprocess.run(["bash", str(ci / "run")], env=env, capture_output=True, text=True, timeout=30)
    assert r.returncode == 1
    assert "needs Python >= 3.11; python3 is Python 3.9.2" in r.stderr
    calls = log.read_text().splitlines()
    assert not [c for c in calls if c.startswith(("apt-get", "dpkg", "python3 -m"))], calls
