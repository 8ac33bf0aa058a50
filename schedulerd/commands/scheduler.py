"""scheduler:start|stop|state|run|reload|log — the daemon's lifecycle from the shell and cron."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any

from . import CommandError, arg, command, print_json, print_table
from ._format import HEADERS, rows

STARTED, STOPPED = 10, 11  # Phraseanet's exit codes for scheduler:state


@command("scheduler:start", "Start the daemon detached (safe to call from cron every minute)",
         arg("--wait", type=float, default=30.0, help="seconds to wait for the socket to answer"))
def start(args: Any, env: Any) -> int:
    import subprocess  # here, not at the top: scheduler:state must not pay for it

    pid = env.running_pid()
    if pid:
        print(f"schedulerd is already running (pid {pid})")
        return 0
    sch = env.scheduler()
    sch.log_dir.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable, "-m", "schedulerd.daemon"]
    if env.config_path:
        argv += ["--config", str(env.config_path)]
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from ..logs import OUT_ENV

    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")])),
                 OUT_ENV: str((sch.log_dir / "scheduler.out").resolve())}  # reopened by SIGUSR1 (logrotate)
    out = open(sch.log_dir / "scheduler.out", "ab")
    with out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=out, start_new_session=True,
                                env=child_env, close_fds=True)
    deadline = time.monotonic() + args.wait
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            tail = _tail(sch.log_dir / "scheduler.out")
            raise CommandError(f"the daemon exited at start (status {code}): {tail}", 1)
        try:
            reply = env.client(2).call("ping")
            print(f"schedulerd started (pid {reply['pid']})")
            return 0
        except Exception:
            time.sleep(0.05)
    raise CommandError(f"the daemon did not answer on {sch.socket} within {args.wait:g}s", 1)


def _tail(path: Any) -> str:
    try:
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
        return lines[-1] if lines else "no output"
    except OSError:
        return "no output"


@command("scheduler:stop", "Stop the daemon gracefully (exit 0 also when it was not running)",
         arg("--timeout", type=float, default=None, help="seconds to wait (default stop_timeout + 15)"))
def stop(args: Any, env: Any) -> int:
    import signal

    pid = env.running_pid()
    if not pid:
        print("schedulerd is not running")
        return 0
    timeout = args.timeout if args.timeout is not None else env.scheduler().stop_timeout + 15
    try:
        env.client(5).call("shutdown")
    except Exception:
        if pid > 0:
            os.kill(pid, signal.SIGTERM)  # the socket is gone or stuck: the signal does the same
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if env.running_pid() is None:
            print(f"schedulerd stopped (pid {pid})")
            return 0
        time.sleep(0.05)
    raise CommandError(f"schedulerd (pid {pid}) did not stop within {timeout:g}s", 1)


@command("scheduler:state", "Show the daemon's state: exit 10 started, 11 stopped, 1 error",
         arg("--json", action="store_true"), arg("--short", action="store_true", help="print started(PID) or stopped"))
def state(args: Any, env: Any) -> int:
    pid = env.running_pid()
    if not pid:
        if args.json:
            print_json({"state": "stopped"})
        else:
            print("stopped")
        return STOPPED
    try:
        st = env.client(10).call("state")
    except Exception as e:
        print(f"console scheduler:state: schedulerd (pid {pid}) holds its pidfile but does not answer: {e}",
              file=sys.stderr)
        return 1
    if args.json:
        print_json({"state": "started", **st})
    elif args.short:
        print(f"started({st['pid']})")
    else:
        print(f"schedulerd started (pid {st['pid']}, uptime {int(st['uptime'])}s, {len(st['tasks'])} tasks)")
        for warning in (st.get("cluster") or {}).get("warnings", []):
            print(f"warning: {warning}")
        print_table(rows(st["tasks"]), HEADERS)
    return STARTED


@command("scheduler:run", "Run the daemon in the foreground (systemd Type=notify); exit 1 if it already runs")
def run(args: Any, env: Any) -> int:
    from ..daemon import run as run_daemon

    pid = env.running_pid()
    if pid:
        raise CommandError(already_running(pid), 1)
    return run_daemon(env.config_path, log_to_stderr=True)


def already_running(pid: int | None) -> str:
    who = f"pid {pid}" if pid and pid > 0 else "its pidfile is locked"
    return f"schedulerd is already running ({who}): see scheduler:state, stop it with scheduler:stop"


@command("scheduler:reload", "Reload the configuration (like SIGHUP); an invalid one is refused")
def reload(args: Any, env: Any) -> int:
    res = env.call("reload")
    print(f"reloaded: added {res['added'] or '-'}, changed {res['changed'] or '-'}, removed {res['removed'] or '-'}")
    return 0


@command("scheduler:reopen-logs", "Reopen every log file and scheduler.out (after logrotate moved them; as SIGUSR1)")
def reopen_logs(args: Any, env: Any) -> int:
    if not env.running_pid():  # logrotate's postrotate runs it whether or not the daemon runs
        print("schedulerd is not running: nothing to reopen")
        return 0
    env.call("logs.reopen")
    print("log files reopened")
    return 0


def follow_files(paths: list[Path], n: int, follow: bool) -> int:
    """Print the last n lines; with follow, keep printing what is appended (daemon down)."""
    from ..logs import merged_tail

    for line in merged_tail(paths, n):
        print(line, flush=True)
    if not follow:
        return 0
    offsets = {p: _size(p) for p in paths}
    while True:
        for p in paths:
            offsets[p] = _print_appended(p, offsets[p])
        time.sleep(0.2)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _print_appended(path: Path, offset: int) -> int:
    """Print the whole lines written after `offset`; a file that shrank (rotated) is read from its start."""
    try:
        with open(path, "rb") as fh:
            if os.fstat(fh.fileno()).st_size < offset:
                offset = 0
            fh.seek(offset)
            data = fh.read()
    except FileNotFoundError:
        return 0
    end = data.rfind(b"\n") + 1
    if end:
        sys.stdout.write(data[:end].decode("utf-8", "replace"))
        sys.stdout.flush()
    return offset + end


def show_log(env: Any, n: int, follow: bool, *, task: str | None = None, all_tasks: bool = False) -> int:
    """The scheduler log, one task's log or every task's: from the daemon, or from the files when it is down."""
    from ..cli import fault_error
    from ..client import NotRunning
    from ..logs import scheduler_log_path, task_log_path
    from ..protocol import ControlError

    if env.running_pid():
        try:
            for line in env.client().stream("log.tail", task=task, all_tasks=all_tasks, lines=n, follow=follow):
                print(line, flush=True)
            return 0
        except ControlError as e:
            raise fault_error(e) from None
        except (NotRunning, OSError):
            pass  # gone meanwhile: the files
    log_dir = env.scheduler().log_dir
    if all_tasks:
        paths = [task_log_path(log_dir, name) for name in env.config().tasks]
    else:
        paths = [task_log_path(log_dir, task) if task else scheduler_log_path(log_dir)]
    return follow_files(paths, n, follow)


@command("scheduler:log", "Show the scheduler log", arg("-f", "--follow", action="store_true"),
         arg("-n", "--lines", type=int, default=20))
def log(args: Any, env: Any) -> int:
    return show_log(env, args.lines, args.follow)
