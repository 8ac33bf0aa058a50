"""`bin/console`: parse arguments, run one command, print, exit with its code.

The CLI is a thin client: commands that talk to the daemon load only the
[scheduler] section of the config and never import task types.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

from .commands import CommandError, find, load_all

# Commands that, against a running daemon, need only the standard library. `bin/console` starts
# Python without `site` (-S): its .pth files (the editable install's finder) cost a third of the
# interpreter's start. These commands go without it until they load the full config or a store
# (the daemon down); every other command runs site.main() first (site-packages on sys.path).
THIN = frozenset({"scheduler:state", "task:list", "task:state"})


def full_site() -> None:
    """What `python` without -S does at start: site-packages, .pth files, sitecustomize."""
    if sys.flags.no_site and "site" not in sys.modules:
        import site

        site.main()


class Env:
    """What commands get: the config (loaded lazily), the control client and the stores."""

    def __init__(self, config_path: Path | None, verbose: bool):
        self.config_path = config_path
        self.verbose = verbose
        self._config: Any = None
        self._scheduler: Any = None
        self._daemon: tuple[Path, Path] | None = None

    def config(self) -> Any:
        if self._config is None:
            full_site()
            from .config import load
            from .settings import ConfigError

            try:
                self._config = load(self.config_path)
            except ConfigError as e:
                raise CommandError(str(e), 2) from None
        return self._config

    def scheduler(self) -> Any:
        """Only [scheduler]: enough to find the socket and pidfile, cheap to load."""
        if self._config is not None:
            return self._config.scheduler
        if self._scheduler is None:
            from .configfiles import load_scheduler
            from .settings import ConfigError

            try:
                self.config_path, self._scheduler = load_scheduler(self.config_path)
            except ConfigError as e:
                self._scheduler = self._running_daemon(e)
        return self._scheduler

    def _running_daemon(self, error: Exception) -> Any:
        """The file does not load: a running daemon is still found from what it recorded at its
        start, so that commands which only talk to it work (with a warning); else the error."""
        import dataclasses

        from .configfiles import scheduler_fallback
        from .configpaths import default_path
        from .pidfile import read_record, running_pid

        self.config_path = self.config_path or default_path()
        sch = scheduler_fallback(self.config_path)
        pid = running_pid(sch.pidfile)
        record = read_record(sch.pidfile)
        if pid is None or record is None or record.pid != pid:
            raise CommandError(str(error), 2)
        print(f"console: warning: the config does not load ({error}); using the running daemon "
              f"(pid {pid}, socket {record.socket}) until the file is repaired", file=sys.stderr)
        return dataclasses.replace(sch, socket=record.socket, state_dir=record.state_dir, log_dir=record.log_dir)

    def daemon_paths(self) -> tuple[Path, Path]:
        """(socket, pidfile): a running daemon's record while no config file changed since its
        start (no settings class built: configpaths.recorded_daemon), else [scheduler] in full."""
        if self._daemon is None:
            if self._config is None and self._scheduler is None:
                from .configpaths import recorded_daemon

                self._daemon = recorded_daemon(self.config_path)
            if self._daemon is None:
                sch = self.scheduler()
                self._daemon = (sch.socket, sch.pidfile)
        return self._daemon

    def client(self, timeout: float = 60.0) -> Any:
        from .client import Client

        return Client(self.daemon_paths()[0], timeout)

    def running_pid(self) -> int | None:
        from .pidfile import running_pid

        return running_pid(self.daemon_paths()[1])

    def call(self, cmd: str, **args: Any) -> Any:
        """One request to the daemon; its faults become clean CLI errors."""
        from .client import NotRunning
        from .protocol import ControlError

        try:
            return self.client().call(cmd, **args)
        except NotRunning as e:
            raise CommandError(str(e), 1) from None
        except ControlError as e:
            raise fault_error(e) from None

    def try_call(self, cmd: str, **args: Any) -> Any:
        """Like call, but None when the daemon is down (commands that also work offline)."""
        from .client import NotRunning
        from .protocol import ControlError

        if self.running_pid() is None:
            return None
        try:
            return self.client(10).call(cmd, **args)
        except (NotRunning, OSError):
            return None
        except ControlError as e:
            raise fault_error(e) from None

    def store_settings(self) -> Any:
        """[store]: the whole config's when loaded, else that section alone (the thin CLI)."""
        if self._config is not None:
            return self._config.store
        full_site()
        from .config import load_store
        from .settings import ConfigError

        self.scheduler()  # finds the config file
        try:
            return load_store(self.config_path)
        except ConfigError as e:
            raise CommandError(str(e), 2) from None

    def check_store(self) -> Any:
        """[store], its schema checked: a schema this program does not know exits 2 saying what
        to run; a store that does not answer exits 1."""
        from .store import StoreUnavailable
        from .stores import SchemaMismatch, check_schema

        store = self.store_settings()
        try:
            check_schema(store)
        except SchemaMismatch as e:
            raise CommandError(str(e), 2) from None
        except StoreUnavailable as e:
            raise CommandError(f"the store does not answer: {e}", 1) from None
        return store

    def _open(self, opener: Any) -> Any:
        return opener(self.scheduler(), self.check_store(), pool_size=2)

    def state_store(self) -> Any:
        from .stores import open_state_store

        return self._open(open_state_store)

    def job_store(self) -> Any:
        from .stores import open_job_store

        return self._open(open_job_store)

    def add_job(self, type: str, payload: Any, queue: str | None = None, priority: int = 0,
                after: tuple[int, ...] = ()) -> int:
        """Write the job to the store (works with the daemon down), then tell a running daemon."""
        from .jobadd import add_job
        from .jobstore import JobError
        from .wake import send_wake

        store = self.job_store()
        try:
            jid, to_queue = add_job(store, self.config(), type, payload, queue=queue, priority=priority, after=after)
            send_wake(self.scheduler().state_dir, to_queue)
        except JobError as e:
            raise CommandError(str(e), 2) from None
        finally:
            store.close()
        return jid


def fault_error(e: Any) -> CommandError:
    """The daemon's refusal as a clean CLI error: exit 2 for bad input (unknown name, bad argument)."""
    from .protocol import Fault

    bad_input = (Fault.BAD_ARGUMENTS, Fault.NO_SUCH_TASK, Fault.TASK_DISABLED, Fault.NO_SUCH_JOB, Fault.BAD_JOB_STATE,
                 Fault.BAD_JOB, Fault.NO_SUCH_QUEUE, Fault.CONFIG_INVALID)
    return CommandError(e.message, 2 if e.code in bad_input else 1)


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's formatter, its width found without `shutil`: argparse builds a formatter for
    every add_argument, and `shutil` (with zlib, bz2, lzma) is most of what scheduler:state
    would otherwise import. Same width as shutil.get_terminal_size gives."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, width=_columns() - 2)


def _columns() -> int:
    try:
        columns = int(os.environ.get("COLUMNS", "0"))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno() if sys.__stdout__ else -1).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return columns or 80


def _usage() -> str:
    lines = ["usage: console [--config PATH] [-v] COMMAND [ARGS]", "", "commands:"]
    for name, cmd in sorted(load_all().items()):
        lines.append(f"  {name:28} {cmd.help}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    top = argparse.ArgumentParser(prog="console", add_help=False, formatter_class=_HelpFormatter)
    top.add_argument("--config", type=Path, default=None)
    top.add_argument("-v", "--verbose", action="store_true")
    top.add_argument("-h", "--help", action="store_true")
    opts, rest = top.parse_known_args(argv)
    if not rest or rest[0] not in THIN:
        full_site()
    if not rest or rest[0] in ("list", "help") or (opts.help and not rest):
        print(_usage())
        return 0 if (rest or opts.help) else 2
    name, rest = rest[0], rest[1:]
    cmd = find(name)
    if cmd is None:
        print(f"console: unknown command {name!r} (see `console list`)", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(prog=f"console {name}", description=cmd.help, formatter_class=_HelpFormatter)
    parser.add_argument("--config", type=Path, default=argparse.SUPPRESS)
    parser.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS)
    for a in cmd.args:
        parser.add_argument(*a.flags, **a.options)
    if opts.help:
        rest.append("--help")
    args = parser.parse_args(rest)
    config_path = getattr(args, "config", None) or opts.config
    verbose = getattr(args, "verbose", False) or opts.verbose
    env = Env(config_path, verbose)
    try:
        code = cmd.handler(args, env)
        return 0 if code is None else int(code)
    except CommandError as e:
        print(f"console {name}: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        return 0
    except Exception as e:
        if verbose:
            raise
        print(f"console {name}: {type(e).__name__}: {e} (use -v for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
