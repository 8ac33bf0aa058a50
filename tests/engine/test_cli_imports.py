"""The thin CLI's import budget (issue 22): `scheduler:state` and `task:list` against a running
daemon import only what they need, so they stay faster than `supervisorctl status`.

Each command runs for real (`python -X importtime -m schedulerd.cli`, the module `bin/console`
runs) against a real daemon; the modules it imported are read from the importtime report.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.engine.conftest import ROOT

TASKS = """
[tasks.a]
type = "command"
period = "1h"
argv = ["true"]
"""

# Heavy, or not needed to talk to a running daemon: the full config tree (task types, plugins,
# entry points), the stores and their drivers, the engine's event loop, media and SSH libraries,
# and the standard library's big ones that came in through them.
FORBIDDEN = (
    "schedulerd.config", "schedulerd.registry", "schedulerd.plugin", "schedulerd.stores", "schedulerd.store",
    "schedulerd.pgstore", "schedulerd.daemon", "schedulerd.runner", "schedulerd.jobs", "schedulerd.web",
    "importlib.metadata", "email", "zipfile", "subprocess", "logging", "difflib", "shutil", "sqlite3",
    "anyio", "asyncio", "psycopg", "PIL", "asyncssh", "tasks", "repository",
    # the config unchanged since the daemon started: its record gives the socket, no settings class
    # is built (dataclasses + inspect were a quarter of the start)
    "dataclasses", "inspect", "schedulerd.settings", "schedulerd.configfiles",
)


def imported(site, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    p = subprocess.run([sys.executable, "-X", "importtime", "-m", "schedulerd.cli", "--config", str(site.config), *args],
                       capture_output=True, text=True, timeout=60, env=env, cwd=site.root)
    names = {line.split("|")[2].strip() for line in p.stderr.splitlines()
             if line.startswith("import time:") and "self [us]" not in line}
    return p, names


def console_imported(site, *args: str) -> tuple[subprocess.CompletedProcess, set[str]]:
    """The same, through the real `bin/console` (its Python flags included): PYTHONPROFILEIMPORTTIME."""
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    p = subprocess.run([str(ROOT / "bin/console"), "--config", str(site.config), *args],
                       capture_output=True, text=True, timeout=60, env=env, cwd=site.root)
    return p, {line.split("|")[2].strip() for line in p.stderr.splitlines()
               if line.startswith("import time:") and "self [us]" not in line}


def heavy(names: set[str]) -> list[str]:
    return sorted(n for n in names if any(n == f or n.startswith(f + ".") for f in FORBIDDEN))


@pytest.mark.parametrize("command, code", [(("scheduler:state",), 10), (("scheduler:state", "--json"), 10),
                                           (("task:list",), 0), (("task:list", "--json"), 0)])
def test_daemon_talking_commands_import_none_of_the_heavy_modules(site, command, code):
    site.write(TASKS)
    site.console("scheduler:start", check=True)
    p, names = imported(site, *command)
    assert p.returncode == code, p.stderr[-2000:]
    assert "a" in p.stdout and "schedulerd.client" in names  # it did talk to the daemon
    assert heavy(names) == []


@pytest.mark.parametrize("where", ["file", "drop-in"])
def test_a_config_changed_since_the_daemon_started_is_validated_again(site, where):
    """The daemon's record stands for the config only while no file is newer than it: an invalid
    [scheduler] written after the start is read, named, and the running daemon used with a warning."""
    site.write(TASKS)
    site.console("scheduler:start", check=True)
    assert site.console("scheduler:state").returncode == 10
    bad = '[scheduler]\nlog_level = "loud"\n'
    if where == "file":
        site.config.write_text(site.config.read_text().replace("[scheduler]\n", bad, 1))
    else:
        (site.etc / "schedulerd.d").mkdir(exist_ok=True)
        (site.etc / "schedulerd.d" / "z.toml").write_text(bad)
    for command, code in (("scheduler:state", 10), ("task:list", 0)):
        p, names = imported(site, command)
        assert p.returncode == code, p.stderr[-2000:]
        assert "warning: the config does not load" in p.stderr and "scheduler.log_level" in p.stderr
        assert "schedulerd.configfiles" in names


def test_an_invalid_scheduler_section_is_still_refused_on_the_thin_path(site):
    """Same errors as before the split: [scheduler] is validated in full (exit 2, key path named)."""
    site.write(TASKS, scheduler='log_level = "loud"\n')
    p = site.console("scheduler:state")
    assert p.returncode == 2
    assert "scheduler.log_level" in p.stderr


def test_bin_console_skips_site_for_the_thin_commands_and_runs_it_for_the_others(site):
    """`bin/console` starts Python with -S: `site` and the venv's .pth files (the editable install's
    finder: pathlib, urllib, importlib.util) cost a third of the interpreter's start, and the thin
    commands need only the standard library. Any other command (and a thin one once the daemon is
    down) runs site.main() first, so site-packages are there (anyio, the plugins' entry points)."""
    site.write(TASKS)
    site.console("scheduler:start", check=True)
    for command, code in (("scheduler:state", 10), ("task:list", 0)):
        p, names = console_imported(site, command)
        assert p.returncode == code and "schedulerd.client" in names, p.stderr[-2000:]
        assert "site" not in names and not any(n.startswith("__editable__") for n in names)
    p, names = console_imported(site, "job:list")
    assert p.returncode == 0, p.stderr[-2000:]
    assert "site" in names
    site.console("scheduler:stop", check=True)
    p, names = console_imported(site, "task:list")  # offline: the config and the store, from site-packages
    assert p.returncode == 1 and "a " in p.stdout, p.stderr[-2000:]  # a: configured started, stopped
    assert "site" in names
