"""CLI commands, grouped by module: `job:list` lives in `commands/job.py`.

A command whose module is not named after its prefix is found by scanning this
package, then the plugins' command modules: the entry points of the group
`schedulerd.commands` (the repository's `databox:*`, `record:*`, the task types'
`record:subdefs`, `export:ftp`, `task:preview`), which register with `@command`
like the engine's own. Command modules must import heavy libraries inside their
handlers: the CLI stays light. This module itself imports almost nothing (no
`dataclasses`, no `importlib.metadata` until the plugins' commands are needed): a
daemon-talking command such as `scheduler:state` pays only for what it uses
(tests/engine/test_cli_imports.py guards that).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

COMMAND_GROUP = "schedulerd.commands"  # NAME = "module": importing the module registers its commands


class CommandError(Exception):
    """A clean failure: one line on stderr and `code` as the exit status."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


class Arg(NamedTuple):
    flags: tuple[str, ...]
    options: dict[str, Any]


def arg(*flags: str, **options: Any) -> Arg:
    return Arg(flags, options)


Handler = Callable[[argparse.Namespace, Any], int | None]  # (args, env) -> exit code


class Command(NamedTuple):
    name: str
    help: str
    args: tuple[Arg, ...]
    handler: Handler


COMMANDS: dict[str, Command] = {}


def command(name: str, help: str, *args: Arg) -> Callable[[Handler], Handler]:
    """Register `handler(args, env) -> exit code` under `name`."""

    def register(handler: Handler) -> Handler:
        COMMANDS[name] = Command(name, help, args, handler)
        return handler

    return register


def find(name: str) -> Command | None:
    prefix = name.split(":", 1)[0]
    try:
        importlib.import_module(f"{__name__}.{prefix}")
    except ModuleNotFoundError as e:
        if e.name != f"{__name__}.{prefix}":
            raise
    if name not in COMMANDS:
        load_all()
    return COMMANDS.get(name)


def load_all() -> dict[str, Command]:
    import pkgutil
    from importlib.metadata import entry_points

    for m in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{m.name}")
    for ep in entry_points(group=COMMAND_GROUP):
        ep.load()
    return COMMANDS


def print_json(obj: Any) -> None:
    json.dump(obj, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


def print_table(rows: list[list[Any]], headers: list[str] | None = None) -> None:
    """Aligned columns, like `supervisorctl status`."""
    all_rows = ([headers] if headers else []) + [[("" if c is None else str(c)) for c in r] for r in rows]
    if not all_rows:
        return
    widths = [max(len(r[i]) for r in all_rows if i < len(r)) for i in range(max(map(len, all_rows)))]
    for r in all_rows:
        print("  ".join(c.ljust(widths[i]) for i, c in enumerate(r)).rstrip())
