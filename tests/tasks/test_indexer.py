"""The `indexer` task type: a supervised bin/indexer (and misbehaving stand-ins) as real processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from schedulerd import settings as s  # noqa: E402
from schedulerd.config import load  # noqa: E402
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.settings import ConfigError  # noqa: E402
from tasks.indexer import FailedStart, Indexer, PortBusy, Settings, mask_argv  # noqa: E402
from tests.repository.dbx import (  # noqa: E402
    CONSOLE,
    FakeConfig,
    add,
    alive,
    collect,
    free_port,
    listening,
    make_databox,
    pids_with,
    site_config,
    wait_for,
)

SECRET = "Pw-7f3e-secret"

# A stand-in that speaks the command line but misbehaves as told by --mode=
FAKE = textwrap.dedent("""\
    import signal, socket, sys, time
    args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
    mode = args.get("--mode", "ok")
    print("fake indexer argv:", " ".join(sys.argv[1:]), flush=True)
    print("stderr copy:", " ".join(sys.argv[1:]), file=sys.stderr, flush=True)
    if mode == "exit":
        sys.exit(3)
    if mode == "exit-later":
        time.sleep(0.6)
        sys.exit(4)
    if mode == "ignore-all":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", int(args["--socket"])))
    srv.listen(5)
    while True:
        conn, _ = srv.accept()
        conn.recv(100)  # reads Q and ignores it
        conn.close()
    """)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    script = tmp_path / "fake_indexer"
    script.write_text(f"#!{sys.executable}\n" + FAKE)
    script.chmod(0o755)
    return script


@pytest.fixture
def box(tmp_path: Path):
    settings, db = make_databox(tmp_path)
    yield settings, db
    db.close()


@pytest.fixture
def logs() -> Iterator[Any]:
    lines, done = collect("schedulerd.task.ix")
    yield lines
    done()


def settings(**kw: Any) -> Settings:
    data = {"base": "main", "password": SECRET, "startsecs": "200ms", "stop_wait": "2s", "kill_wait": "1s", **kw}
    return s.build(Settings, data, "tasks.ix")


def context(tmp_path: Path, st: Settings, dbs: Any = None) -> TaskContext:
    return TaskContext.for_test("ix", st, config=FakeConfig(databoxes={"main": dbs} if dbs else {}), tmp_path=tmp_path)


async def until(pred: Any, timeout: float = 10.0, what: str = "condition") -> Any:
    with anyio.fail_after(timeout):
        while True:
            v = pred()
            if v:
                return v
            await anyio.sleep(0.03)


async def supervise_then_cancel(task: Indexer, ctx: TaskContext, port: int) -> int:
    """Start run_once, wait for the child to listen, cancel it like a task stop; the child's pid."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run_once, ctx)
        pid = await until(lambda: ctx.info.get("pid"), what="the indexer pid")
        await until(lambda: listening(port), what="the control socket")
        tg.cancel_scope.cancel()
    return pid


# --- settings and command line ---------------------------------------------------------


def test_command_line_is_phraseanets_and_the_password_is_masked(box) -> None:
    dbs, _ = box
    st = settings(stem="en", sort_empty="A", debug=3, nolog=True, extra_args=["--interval=0.2"])
    argv = Indexer(st).argv(FakeConfig(databoxes={"main": dbs}))
    assert argv[1:9] == ["-h=127.0.0.1", "-P=3306", "-b=main", "-u=root", f"-p={SECRET}", "--socket=25200",
                         "--default-character-set=utf8", "-o"]
    assert argv[0].endswith("bin/indexer")
    assert {"--stem=en", "--sort-empty=A", "-d=3", "-n", f"--databox-path={dbs.path}", "--interval=0.2"} <= set(argv)
    shown = mask_argv(argv, SECRET)
    assert SECRET not in shown and "-p=********" in shown
    # a foreign binary gets no --databox-path (phraseanet_indexer would not know it)
    assert not any(a.startswith("--databox-path") for a in Indexer(settings(binary="phraseanet_indexer")).argv(
        FakeConfig(databoxes={"main": dbs})))
    assert SECRET not in repr(st)


def test_config_refuses_an_unknown_databox_and_a_shared_socket(tmp_path: Path, box) -> None:
    dbs, _ = box
    cfg = site_config(tmp_path / "a", """
        [tasks.ix]
        type = "indexer"
        base = "nope"
        """, dbs)
    with pytest.raises(ConfigError, match=r"tasks\.ix\.base: unknown databox 'nope' \(known: main\)"):
        load(cfg)
    cfg = site_config(tmp_path / "b", """
        [tasks.ix1]
        type = "indexer"
        base = "main"
        [tasks.ix2]
        type = "indexer"
        base = "main"
        """, dbs)
    with pytest.raises(ConfigError, match=r"tasks\.ix[12]\.socket: port 25200 is also the socket of indexer task"):
        load(cfg)
    cfg = site_config(tmp_path / "c", """
        [tasks.ix]
        type = "indexer"
        base = "main"
        startsecs = "soon"
        """, dbs)
    with pytest.raises(ConfigError, match=r"tasks\.ix\.startsecs: expected a duration"):
        load(cfg)


# --- supervision ---------------------------------------------------------------------------


@pytest.mark.anyio
async def test_runs_the_real_indexer_and_stops_it_with_q(tmp_path: Path, box, logs) -> None:
    dbs, db = box
    add(db, "incoming", "boat.jpg", fields={"Title": "sailing boat"})
    port = free_port()
    st = settings(socket=port, extra_args=["--interval=0.05"])
    task, ctx = Indexer(st), context(tmp_path, st, dbs)
    pidfile = ctx.state_dir / "indexer.json"

    async with anyio.create_task_group() as tg:
        tg.start_soon(task.run_once, ctx)
        pid = await until(lambda: ctx.info.get("pid"), what="the pid")
        await until(lambda: listening(port), what="the control socket")
        assert json.loads(pidfile.read_text())["pid"] == pid
        assert json.loads(pidfile.read_text())["port"] == port
        await until(lambda: "indexed 1" in logs.text, what="the first pass in the task log")
        await until(lambda: ctx.info.get("uptime", 0) >= 1, what="uptime")
        assert ctx.info["restarts"] == 0 and ctx.info["socket"] == port
        t0 = time.monotonic()
        tg.cancel_scope.cancel()
    assert time.monotonic() - t0 < 3  # Q answered at once: no stop_wait, no signals
    assert not alive(pid) and not listening(port) and not pidfile.exists()
    assert "Q received on the control socket" in logs.text  # the child's own line: it quit on Q
    assert "SIGTERM" not in logs.text
    assert ctx.info.get("last_exit") == 0 and "pid" not in ctx.info
    assert "-p=********" in logs.text and SECRET not in logs.text


@pytest.mark.anyio
async def test_password_is_masked_in_the_childs_output_too(tmp_path: Path, fake: Path, logs) -> None:
    port = free_port()
    st = settings(binary=str(fake), socket=port, stop_wait="300ms", kill_wait="300ms")
    task, ctx = Indexer(st), context(tmp_path, st)
    await supervise_then_cancel(task, ctx, port)
    assert "fake indexer argv:" in logs.text and "stderr: stderr copy:" in logs.text
    assert SECRET not in logs.text
    assert logs.text.count("-p=********") >= 3  # the logged command line and both echoed lines


@pytest.mark.anyio
@pytest.mark.parametrize(("mode", "status", "said"), [("ignore-q", -signal.SIGTERM, "SIGTERM to its group"),
                                                      ("ignore-all", -signal.SIGKILL, "SIGTERM to its group")])
async def test_a_child_ignoring_q_gets_sigterm_then_sigkill(tmp_path: Path, fake: Path, logs,
                                                            mode: str, status: int, said: str) -> None:
    port = free_port()
    st = settings(binary=str(fake), socket=port, stop_wait="300ms", kill_wait="400ms", extra_args=[f"--mode={mode}"])
    task, ctx = Indexer(st), context(tmp_path, st)
    t0 = time.monotonic()
    pid = await supervise_then_cancel(task, ctx, port)
    assert not alive(pid)
    assert ctx.info["last_exit"] == status
    assert "did not quit on Q within 0.3s" in logs.text and said in logs.text
    assert time.monotonic() - t0 < 6


@pytest.mark.anyio
async def test_an_exit_within_startsecs_is_a_failed_start(tmp_path: Path, fake: Path, logs) -> None:
    st = settings(binary=str(fake), socket=free_port(), startsecs="1s", extra_args=["--mode=exit"])
    task, ctx = Indexer(st), context(tmp_path, st)
    for n in range(3):
        with pytest.raises(FailedStart, match=r"exited with status 3 after .* within startsecs \(1s\)"):
            await task.run_once(ctx)
        assert ctx.info["last_exit"] == 3 and ctx.info["restarts"] == n
    with pytest.raises(FailedStart, match="cannot start"):
        await Indexer(settings(binary=str(tmp_path / "missing"), socket=free_port())).run_once(ctx)


@pytest.mark.anyio
async def test_an_exit_after_a_good_start_ends_the_iteration_normally(tmp_path: Path, fake: Path, logs) -> None:
    st = settings(binary=str(fake), socket=free_port(), startsecs="200ms", extra_args=["--mode=exit-later"])
    task, ctx = Indexer(st), context(tmp_path, st)
    summary = await task.run_once(ctx)
    assert "exited with status 4" in summary
    assert "restarted at the next tick" in logs.text and ctx.info["last_exit"] == 4


@pytest.mark.anyio
async def test_a_stranger_on_the_port_is_never_joined_by_a_second_indexer(tmp_path: Path, fake: Path) -> None:
    import socket

    port = free_port()
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", port))
        srv.listen(1)
        st = settings(binary=str(fake), socket=port)
        task, ctx = Indexer(st), context(tmp_path, st)
        with pytest.raises(PortBusy, match=f"port 127.0.0.1:{port} is already in use"):
            await task.run_once(ctx)
        assert "pid" not in ctx.info and not (ctx.state_dir / "indexer.json").exists()


SUPERVISOR = textwrap.dedent("""\
    import sys, anyio
    sys.path.insert(0, {root!r})
    from pathlib import Path
    from schedulerd import settings as s
    from schedulerd.context import TaskContext
    from tasks.indexer import Indexer, Settings
    from tests.repository.dbx import FakeConfig
    st = s.build(Settings, {{"base": {db!r}, "socket": {port}, "password": "x-secret", "startsecs": "100ms",
                             "extra_args": ["--interval=0.05"]}})
    ctx = TaskContext.for_test("ix", st, config=FakeConfig(), tmp_path=Path({tmp!r}))
    anyio.run(Indexer(st).run_once, ctx)
    """)


@pytest.mark.anyio
async def test_an_orphan_left_by_a_killed_supervisor_is_stopped_before_the_next_start(tmp_path: Path, box,
                                                                                         logs) -> None:
    dbs, db = box
    port = free_port()
    pidfile = tmp_path / "state" / "indexer.json"
    sup = subprocess.Popen([sys.executable, "-c", SUPERVISOR.format(root=str(ROOT), db=str(dbs.path), port=port,
                                                                     tmp=str(tmp_path))])
    try:
        wait_for(lambda: pidfile.exists() and listening(port), what="the supervised indexer")
        orphan = json.loads(pidfile.read_text())["pid"]
        st = settings(base=str(dbs.path), socket=port, extra_args=["--interval=0.05"])
        # while its supervisor lives, the indexer is not an orphan: refused, left alone
        with pytest.raises(PortBusy, match=f"belongs to live process {sup.pid}"):
            await Indexer(st).run_once(context(tmp_path, st))
        assert alive(orphan)
        sup.send_signal(signal.SIGKILL)
        sup.wait(5)
        add(db, "incoming", "late.jpg")  # the orphan writes a line into its dead supervisor's pipe...
        time.sleep(0.4)
        assert alive(orphan) and listening(port)  # ...and survives it, until the next start stops it

        task, ctx = Indexer(st), context(tmp_path, st)
        async with anyio.create_task_group() as tg:
            tg.start_soon(task.run_once, ctx)
            new = await until(lambda: ctx.info.get("pid"), what="the new indexer")
            await until(lambda: listening(port), what="the new control socket")
            assert new != orphan and not alive(orphan)
            assert pids_with(f"--socket={port}") == [new]  # one indexer on the port, never two
            tg.cancel_scope.cancel()
        assert f"found an orphaned indexer (pid {orphan}, socket {port})" in logs.text
        assert f"orphaned indexer {orphan} quit on Q" in logs.text
        assert not alive(new) and pids_with(f"--socket={port}") == []
    finally:
        if sup.poll() is None:
            sup.kill()
            sup.wait(5)
        for pid in pids_with(f"--socket={port}"):
            os.killpg(pid, signal.SIGKILL)


# --- the real daemon -------------------------------------------------------------------------


def console(cfg: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
    return subprocess.run([str(CONSOLE), "--config", str(cfg), *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def state(cfg: Path, name: str) -> dict:
    p = console(cfg, "task:state", name, "--json")
    return json.loads(p.stdout) if p.stdout.strip() else {}


def test_daemon_kill9_then_restart_keeps_one_indexer_and_failed_starts_crash(tmp_path: Path, box, fake: Path) -> None:
    dbs, db = box
    port, port2 = free_port(), free_port()
    site = tmp_path / "site"
    cfg = site_config(site, f"""
        [tasks.ix]
        type = "indexer"
        base = "main"
        password = "{SECRET}"
        socket = {port}
        startsecs = "200ms"
        stop_wait = "3s"
        extra_args = ["--interval=0.05"]

        [tasks.broken]
        type = "indexer"
        base = "main"
        binary = "{fake}"
        socket = {port2}
        startsecs = "1s"
        extra_args = ["--mode=exit"]
        """, dbs)
    pidfile = site / "var" / "run" / "schedulerd.pid"
    try:
        assert console(cfg, "scheduler:start").returncode == 0
        first = wait_for(lambda: state(cfg, "ix").get("info", {}).get("pid"), what="the indexer pid")
        broken = wait_for(lambda: state(cfg, "broken").get("state") == "crashed" and state(cfg, "broken"),
                          what="the broken indexer to crash")
        assert broken["info"]["last_exit"] == 3 and broken["info"]["restarts"] == 2
        wait_for(lambda: listening(port), what="the control socket")

        daemon = int(pidfile.read_text())
        os.kill(daemon, signal.SIGKILL)
        wait_for(lambda: not alive(daemon), what="the daemon to die")
        assert alive(first)  # orphaned

        assert console(cfg, "scheduler:start").returncode == 0
        second = wait_for(lambda: (state(cfg, "ix").get("info", {}).get("pid") or 0) not in (0, first)
                          and state(cfg, "ix")["info"]["pid"], what="a new indexer")
        assert not alive(first)
        assert pids_with(f"--socket={port}") == [second]
        log = (site / "var" / "log" / "task-ix.log").read_text()
        assert f"found an orphaned indexer (pid {first}, socket {port})" in log

        rid = add(db, "archive", "comet.png", fields={"Title": "Comet over the bay"})
        wait_for(lambda: console(cfg, "record:search", "comet").returncode == 0, what="the record to be searchable")
        assert str(rid) in console(cfg, "record:search", "comet").stdout

        assert console(cfg, "scheduler:stop").returncode == 0
        assert not alive(second) and pids_with(f"--socket={port}") == []
        log = (site / "var" / "log" / "task-ix.log").read_text()
        assert "Q received on the control socket" in log
        assert SECRET not in log and "-p=********" in log
        assert SECRET not in (site / "var" / "log" / "scheduler.log").read_text()
    finally:
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        for pid in pids_with(f"--socket={port}") + pids_with(f"--socket={port2}"):
            os.killpg(pid, signal.SIGKILL)


def test_a_port_taken_by_another_checkout_names_the_key_and_crashes_without_tracebacks(tmp_path: Path, box) -> None:
    """Issue 25 item 20: a second checkout's indexer already holds the fixed port."""
    import socket

    dbs, _ = box
    port = free_port()
    site = tmp_path / "site"
    cfg = site_config(site, f"""
        [tasks.indexer]
        type = "indexer"
        base = "main"
        socket = {port}
        """, dbs)
    pidfile = site / "var" / "run" / "schedulerd.pid"
    with socket.socket() as other_checkout:
        other_checkout.bind(("127.0.0.1", port))
        other_checkout.listen(5)
        try:
            assert console(cfg, "scheduler:start").returncode == 0
            st = wait_for(lambda: state(cfg, "indexer").get("state") == "crashed" and state(cfg, "indexer"),
                          what="the indexer task to crash")
            assert st["crashes"] == 3
            error = st["last_run"]["error"]
            assert f"port 127.0.0.1:{port} is already in use" in error and "set tasks.indexer.socket" in error
            log = (site / "var" / "log" / "task-indexer.log").read_text()
            failures = [line for line in log.splitlines() if "iteration failed" in line]
            assert len(failures) == 3 and all("set tasks.indexer.socket to a free port" in f for f in failures)
            assert "Traceback" not in log
            assert pids_with(f"--socket={port}") == []  # no indexer was started beside the other one
        finally:
            console(cfg, "scheduler:stop")
            try:
                os.kill(int(pidfile.read_text()), signal.SIGKILL)
            except (OSError, ValueError):
                pass


def test_a_stopped_indexer_shows_no_error(tmp_path: Path, box) -> None:
    """Issue 25 item 8: stopping the indexer (task:stop, scheduler:stop) is its planned end: the run
    is `stopped`, not a failure, and task:list/task:state show no `last error: cancelled at stop`."""
    dbs, db = box
    port = free_port()
    site = tmp_path / "site"
    cfg = site_config(site, f"""
        [tasks.ix]
        type = "indexer"
        base = "main"
        password = "{SECRET}"
        socket = {port}
        startsecs = "200ms"
        extra_args = ["--interval=0.05"]
        """, dbs)
    pidfile = site / "var" / "run" / "schedulerd.pid"
    try:
        assert console(cfg, "scheduler:start").returncode == 0
        wait_for(lambda: listening(port), what="the control socket")
        assert console(cfg, "task:stop", "ix").returncode == 0
        snap = state(cfg, "ix")
        assert (snap["state"], snap["failures"]) == ("stopped", 0), snap
        assert snap["last_run"]["outcome"] == "stopped" and snap["last_run"]["error"] is None
        assert "error" not in console(cfg, "task:state", "ix").stdout
        assert console(cfg, "task:start", "ix").returncode == 0
        wait_for(lambda: listening(port), what="the control socket again")
        assert console(cfg, "scheduler:stop").returncode == 0
        listing = console(cfg, "task:list")  # the daemon down: from the stored history
        assert "ix" in listing.stdout and "error" not in listing.stdout, listing.stdout
        assert state(cfg, "ix")["failures"] == 0
        history = console(cfg, "task:history", "ix").stdout
        assert history.count("stopped") == 2 and "cancelled" not in history, history
    finally:
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (OSError, ValueError):
            pass
        for pid in pids_with(f"--socket={port}"):
            os.killpg(pid, signal.SIGKILL)
