"""Drop-in files written by `bin/console task:create` and removed by `task:delete`.

A created file is `schedulerd.d/task-NAME.toml` beside the config file, its first line the
MARK below; only such a file is ever removed, and none is ever rewritten. A new file is written
under a name the loader does not read (`.task-NAME.toml.tmp`), checked with the whole config as
`config:check` does, and renamed into place only once valid: an invalid one leaves nothing.
"""

from __future__ import annotations

import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .config import load
from .configfiles import merge
from .durable import fsync_dir
from .settings import ConfigError

MARK = "# created by bin/console task:create (bin/console task:delete NAME removes it)"


class DropinError(Exception):
    """Bad input or a file that is not ours: the message names the argument or the file."""


def parse_value(text: str) -> Any:
    """A `--set` value: TOML (`"x"`, `3`, `["true"]`, `{ a = 1 }`), else JSON, else a plain string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        pass
    try:
        return json.loads(text)
    except ValueError:
        return text


def parse_sets(items: Sequence[str]) -> dict[str, Any]:
    """`key=value` pairs (a dotted key makes a table: `env.PATH=/bin`) into one table."""
    table: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise DropinError(f"--set {item!r}: expected key=value")
        target = table
        for part in parts[:-1]:
            target = target.setdefault(part, {})
            if not isinstance(target, dict):
                raise DropinError(f"--set {item!r}: {part} is already a value, not a table")
        if parts[-1] in target:
            raise DropinError(f"--set {item!r}: {key} given twice")
        target[parts[-1]] = parse_value(value)
    return table


def dropin_dir(config_file: Path) -> Path:
    return config_file.parent / "schedulerd.d"


def config_files(config_file: Path) -> list[Path]:
    return [config_file, *sorted(dropin_dir(config_file).glob("*.toml"))]


def defined_in(config_file: Path, task: str) -> Path | None:
    """The file that defines [tasks.NAME], if any."""
    _, origin = merge(config_files(config_file))
    where = origin.get(f"tasks.{task}")
    return Path(where) if where else None


def create_task(config_file: Path, type_name: str, name: str, settings: Mapping[str, Any]) -> Path:
    """Write `schedulerd.d/task-NAME.toml` once the whole config loads with it; its path."""
    import tomli_w

    if "type" in settings:
        raise DropinError("--set type=...: the type is the command's TYPE argument")
    where = defined_in(config_file, name)
    if where is not None:
        raise DropinError(f"a task named {name!r} is already defined in {where}")
    final = dropin_dir(config_file) / f"task-{name}.toml"
    if final.exists():
        raise DropinError(f"{final} already exists")
    body = tomli_w.dumps({"tasks": {name: {"type": type_name, **settings}}})
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.parent / f".task-{name}.toml.tmp"
    with open(tmp, "w") as f:
        f.write(f"{MARK}\n{body}")
        f.flush()
        os.fsync(f.fileno())
    try:
        load(config_file, extra=(tmp,))
    except ConfigError as e:
        tmp.unlink()
        raise DropinError(str(e).replace(str(tmp), str(final))) from None
    except BaseException:
        tmp.unlink()
        raise
    os.replace(tmp, final)
    fsync_dir(final.parent)
    return final


def delete_task(config_file: Path, name: str) -> Path:
    """Remove the drop-in task:create wrote for NAME (refused for any other file); its path.
    The rest of the config must still load without it (nothing else may name the task)."""
    where = defined_in(config_file, name)
    if where is None:
        raise LookupError(name)
    if not is_created(where):
        raise DropinError(f"task {name} is defined in {where}, which task:create did not write: "
                          f"change that file by hand")
    aside = where.parent / f".{where.name}.deleted"
    os.replace(where, aside)
    try:
        load(config_file)
    except ConfigError as e:
        os.replace(aside, where)
        raise DropinError(f"the config would not load without task {name}: {e}") from None
    aside.unlink()
    fsync_dir(where.parent)
    return where


def is_created(path: Path) -> bool:
    try:
        with open(path) as f:
            return f.readline().rstrip("\n") == MARK
    except OSError:
        return False
