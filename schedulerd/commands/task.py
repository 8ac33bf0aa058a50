"""task:list|state|start|stop|restart|run|run-now|log|history|create|delete."""

from __future__ import annotations

import sys
from typing import Any

from . import CommandError, arg, command, print_json, print_table
from ._format import HEADERS, matches, rows

NAME = arg("name", help="task name, as in [tasks.NAME]")
JSON = arg("--json", action="store_true")


def _offline_snapshots(env: Any) -> list[dict[str, Any]]:
    """With the daemon down: the same snapshot as the daemon's, built from the config and the store."""
    from ..cli import full_site

    full_site()  # task:list/state are thin commands (no site-packages) only while the daemon answers
    from ..snapshot import offline_snapshot

    config = env.config()
    store = env.state_store()
    try:
        return [offline_snapshot(tc, store.task(name)) for name, tc in config.tasks.items()]
    finally:
        store.close()


def _snapshots(env: Any) -> list[dict[str, Any]]:
    res = env.try_call("task.list")
    return res if res is not None else _offline_snapshots(env)


@command("task:list", "List tasks; exits with the number whose configured status differs from the actual", JSON)
def task_list(args: Any, env: Any) -> int:
    snaps = _snapshots(env)
    if args.json:
        print_json(snaps)
    else:
        print_table(rows(snaps), HEADERS)
    return min(125, sum(not matches(s) for s in snaps))


@command("task:state", "Show one task; exit 1 when its configured status differs from its actual state", NAME, JSON)
def task_state(args: Any, env: Any) -> int:
    snap = next((s for s in _snapshots(env) if s["name"] == args.name), None)
    if snap is None:
        raise unknown_task(args.name)
    if args.json:
        print_json(snap)
    else:
        print_table(rows([snap]), HEADERS)
    return 0 if matches(snap) else 1


def unknown_task(name: str) -> CommandError:
    """The one wording of an unknown task name, as the daemon's NO_SUCH_TASK (exit 2)."""
    return CommandError(f"no task named {name!r}", 2)


def _configured(env: Any, name: str) -> Any:
    """The task's config (the daemon down: the file is what knows the names)."""
    tc = env.config().tasks.get(name)
    if tc is None:
        raise unknown_task(name)
    return tc


def _set_offline(env: Any, name: str, wanted: str) -> int:
    from ..states import Wanted

    if not _configured(env, name).enabled:
        raise CommandError(f"task {name} is disabled (tasks.{name}.enabled = false)", 2)
    store = env.state_store()
    try:
        store.set_wanted(name, Wanted(wanted))
    finally:
        store.close()
    print(f"schedulerd is not running: task {name} is now configured {wanted} (applies when the daemon starts)")
    return 0


@command("task:start", "Start a task (also clears crashed)", NAME)
def task_start(args: Any, env: Any) -> int:
    if not env.running_pid():
        return _set_offline(env, args.name, "started")
    snap = env.call("task.start", name=args.name)
    print(f"{args.name}: {snap['state']}")
    return 0


@command("task:stop", "Stop a task; it stays stopped across daemon restarts", NAME,
         arg("--timeout", type=float, default=None))
def task_stop(args: Any, env: Any) -> int:
    if not env.running_pid():
        return _set_offline(env, args.name, "stopped")
    snap = env.call("task.stop", name=args.name, timeout=args.timeout)
    print(f"{args.name}: {snap['state']}")
    return 0


@command("task:restart", "Stop then start a task", NAME)
def task_restart(args: Any, env: Any) -> int:
    if not env.running_pid():
        _configured(env, args.name)  # an unknown name is bad input before "not running"
    snap = env.call("task.restart", name=args.name)
    print(f"{args.name}: {snap['state']}")
    return 0


@command("task:run-now", "Ask the daemon to start the task's next iteration now", NAME)
def task_run_now(args: Any, env: Any) -> int:
    if not env.running_pid():
        _configured(env, args.name)
    env.call("task.run-now", name=args.name)
    print(f"{args.name}: iteration requested")
    return 0


@command("task:run", "Run one iteration in this process, without the daemon (exit 0 ok, 1 failed, 3 busy)", NAME,
         arg("--no-progress", action="store_true"))
def task_run(args: Any, env: Any) -> int:
    from ..oneshot import run_one

    config = env.config()
    _configured(env, args.name)
    env.check_store()
    return run_one(config, args.name, progress=not args.no_progress and sys.stderr.isatty())


@command("task:log", "Show a task's log, or every task's with --all (works when the daemon is down)",
         arg("name", nargs="?", help="task name, as in [tasks.NAME]"),
         arg("--all", action="store_true", help="every task's log at once (with -f: follow them all)"),
         arg("-f", "--follow", action="store_true"), arg("-n", "--lines", type=int, default=20))
def task_log(args: Any, env: Any) -> int:
    from .scheduler import show_log

    if args.all == (args.name is not None):
        raise CommandError("name one task, or give --all for every task's log", 2)
    if args.name is not None and not env.running_pid():
        _configured(env, args.name)
    return show_log(env, args.lines, args.follow, task=args.name, all_tasks=args.all)


@command("task:history", "Show a task's last runs", NAME, arg("-n", "--lines", type=int, default=20), JSON)
def task_history(args: Any, env: Any) -> int:
    import time

    res = env.try_call("task.history", name=args.name, limit=args.lines)
    if res is None:
        _configured(env, args.name)
        store = env.state_store()
        try:
            res = [r._asdict() for r in store.history(args.name, args.lines)]
        finally:
            store.close()
    if args.json:
        print_json(res)
        return 0
    print_table([[time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(r["started"])), f"{r['ended'] - r['started']:.2f}s",
                  r["outcome"], r["source"], r.get("error") or r.get("summary") or ""] for r in res],
                ["STARTED", "TOOK", "OUTCOME", "BY", "DETAIL"])
    return 0


def _config_file(env: Any) -> Any:
    from ..configpaths import default_path

    path = env.config_path or default_path()
    if path is None or not path.is_file():
        raise CommandError(f"no config file{f' at {path}' if path else ''} (use --config or SCHEDULERD_CONFIG)", 2)
    return path


def _reload_if_running(env: Any) -> None:
    if env.running_pid():
        res = env.call("reload")
        print("reloaded: " + ", ".join(f"{what} {', '.join(res[what]) or '-'}" for what in ("added", "changed", "removed")))


@command("task:create", "Write a task as a drop-in (schedulerd.d/task-NAME.toml), checked like config:check; "
         "reloads a running daemon",
         arg("type", help="task type (command, archive, ...)"), NAME,
         arg("--set", action="append", default=[], metavar="KEY=VALUE",
             help='a setting, as TOML or JSON (argv=\'["true"]\', period=\'"1h"\'); a plain string may go unquoted'))
def task_create(args: Any, env: Any) -> int:
    from ..dropin import DropinError, create_task, parse_sets

    config_file = _config_file(env)
    try:
        path = create_task(config_file, args.type, args.name, parse_sets(args.set))
    except DropinError as e:
        raise CommandError(str(e), 2) from None
    print(f"task {args.name}: written to {path}")
    _reload_if_running(env)
    return 0


@command("task:delete", "Remove a task that task:create wrote (never a hand-written file); reloads a running daemon",
         NAME)
def task_delete(args: Any, env: Any) -> int:
    from ..dropin import DropinError, delete_task

    config_file = _config_file(env)
    try:
        path = delete_task(config_file, args.name)
    except LookupError:
        raise unknown_task(args.name) from None
    except DropinError as e:
        raise CommandError(str(e), 2) from None
    print(f"task {args.name}: {path} removed")
    _reload_if_running(env)
    return 0
