"""`bin/console task:create TYPE NAME --set k=v` and `task:delete NAME`: drop-ins checked with the
whole config before they exist, picked up by a running daemon, never a hand-written file touched."""

from __future__ import annotations

import tomllib

from schedulerd.dropin import MARK

BASE = """
[tasks.main]
type = "command"
period = "1h"
argv = ["true"]
"""


def dropins(site) -> list[str]:
    d = site.etc / "schedulerd.d"
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_task_create_writes_a_checked_dropin_the_daemon_runs_and_task_delete_removes_it(site):
    site.write(BASE)
    site.console("scheduler:start", check=True)
    out = site.root / "hello.out"
    p = site.console("task:create", "command", "hello", "--set", f'argv=["sh", "-c", "echo hi >> {out}"]',
                     "--set", "period=1h", "--set", 'env={"GREETING": "hi"}', "--set", "timeout=30")
    assert p.returncode == 0, p.stderr
    path = site.etc / "schedulerd.d" / "task-hello.toml"
    assert "reloaded: added hello" in p.stdout and str(path) in p.stdout
    assert path.read_text().splitlines()[0] == MARK
    table = tomllib.loads(path.read_text())["tasks"]["hello"]
    assert table == {"type": "command", "argv": ["sh", "-c", f"echo hi >> {out}"], "period": "1h",
                     "env": {"GREETING": "hi"}, "timeout": 30}
    assert site.console("config:check").stdout.strip().endswith("ok (2 tasks)")
    site.wait_for(lambda: out.exists() and out.read_text() == "hi\n", what="the daemon running the new task")
    assert site.task("hello")["state"] in ("waiting", "running")

    p = site.console("task:delete", "hello")
    assert p.returncode == 0, p.stderr
    assert "reloaded" in p.stdout and "removed hello" in p.stdout
    assert dropins(site) == []
    assert site.console("task:state", "hello").returncode == 2
    assert site.console("task:delete", "hello").returncode == 2  # gone: an unknown task


def test_an_invalid_set_is_refused_naming_the_key_and_nothing_is_written(site):
    site.write(BASE)
    final = site.etc / "schedulerd.d" / "task-hello.toml"
    for sets, words in ((["argv=[\"true\"]", "period=soon"], "tasks.hello.period: expected a duration"),
                        (["argv=[\"true\"]", "perod=1h"], "tasks.hello.perod: unknown setting"),
                        (["period=1h"], "tasks.hello.argv: missing required setting"),
                        (["argv"], "--set 'argv': expected key=value"),
                        (["argv=[\"true\"]", "type=archive"], "the type is the command's TYPE argument")):
        p = site.console("task:create", "command", "hello", *(x for s in sets for x in ("--set", s)))
        assert p.returncode == 2, (sets, p.stdout)
        assert words in p.stderr, p.stderr
        if "tasks.hello" in words:
            assert str(final) in p.stderr  # the file it would have been
        assert dropins(site) in ([], [])  # no drop-in, no temporary file left
    p = site.console("task:create", "nosuchtype", "hello", "--set", "argv=[\"true\"]")
    assert p.returncode == 2 and "tasks.hello.type" in p.stderr and dropins(site) == []
    assert site.console("config:check").returncode == 0


def test_hand_written_files_are_never_rewritten_nor_removed(site):
    site.write(BASE)
    mine = site.etc / "schedulerd.d" / "mine.toml"
    mine.parent.mkdir()
    text = '# mine\n[tasks.mine]\ntype = "command"\nargv = ["true"]\n'
    mine.write_text(text)
    p = site.console("task:delete", "mine")
    assert p.returncode == 2 and f"task mine is defined in {mine}, which task:create did not write" in p.stderr
    p = site.console("task:delete", "main")
    assert p.returncode == 2 and str(site.config) in p.stderr
    for name, where in (("mine", mine), ("main", site.config)):
        p = site.console("task:create", "command", name, "--set", 'argv=["true"]')
        assert p.returncode == 2 and f"a task named {name!r} is already defined in {where}" in p.stderr
    assert mine.read_text() == text and dropins(site) == ["mine.toml"]
    assert "[tasks.main]" in site.config.read_text()
