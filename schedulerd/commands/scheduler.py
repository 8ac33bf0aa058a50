"""scheduler:start|stop|state|run|reload|log — the daemon's lifecycle from the shell and cron."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import Any

from . import CommandError, arg, command, print_json, print_table
from ._format import HEADERS, rows

STARTED, STOPPED = 10, 11  # Phraseanet's exit codes for scheduler:state


@command("scheduler:start", "Start the daemon detached (safe to call from cron every minute)",
         arg("--wait", type=float, default=30.0, help="seconds to wait for the socket to answer"))
def start(args: Any, env: Any) -> int:
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
    child_env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [pkg_root, os.environ.get("PYTHONPATH")]))}
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
        print_table(rows(st["tasks"]), HEADERS)
    return STARTED


@command("scheduler:run", "Run the daemon in the foreground (systemd Type=notify)")
def run(args: Any, env: Any) -> int:
    from ..daemon import run as run_daemon

    return run_daemon(env.config_path, log_to_stderr=True)


@command("scheduler:reload", "Reload the configuration (like SIGHUP); an invalid one is refused")
def reload(args: Any, env: Any) -> int:
    res = env.call("reload")
    print(f"reloaded: added {res['added'] or '-'}, changed {res['changed'] or '-'}, removed {res['removed'] or '-'}")
    return 0


def follow_file(path: Any, n: int, follow: bool) -> int:
    """Print the last n lines; with follow, keep printing what is appended (daemon down)."""
    from ..logs import tail

    for line in tail(path, n):
        print(line, flush=True)
    if not follow:
        return 0
    try:
        with open(path, "rb") as fh:
            fh.seek(0, 2)
            while True:
                line = fh.readline()
                if line:
                    sys.stdout.write(line.decode("utf-8", "replace"))
                    sys.stdout.flush()
                else:
                    time.sleep(0.2)
    except FileNotFoundError:
        raise CommandError(f"no log file {path}", 1) from None


def show_log(env: Any, task: str | None, n: int, follow: bool) -> int:
    from ..logs import scheduler_log_path, task_log_path

    if env.running_pid():
        try:
            for line in env.client().stream("log.tail", task=task, lines=n, follow=follow):
                print(line, flush=True)
            return 0
        except CommandError:
            raise
        except Exception as e:
            from ..protocol import ControlError

            if isinstance(e, ControlError):
                raise CommandError(e.message, 2) from None
    log_dir = env.scheduler().log_dir
    return follow_file(task_log_path(log_dir, task) if task else scheduler_log_path(log_dir), n, follow)


@command("scheduler:log", "Show the scheduler log", arg("-f", "--follow", action="store_true"),
         arg("-n", "--lines", type=int, default=20))
def log(args: Any, env: Any) -> int:
    return show_log(env, None, args.lines, args.follow)
