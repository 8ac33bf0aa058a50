"""`databox:create`, and the helpers the collection/record commands share.

Heavy imports stay inside handlers: the CLI must stay light.
"""

from __future__ import annotations

from typing import Any

from schedulerd.commands import CommandError, arg, command, print_json


def pick_databox(args: Any, env: Any) -> tuple[str, Any]:
    """The databox named by --databox, else the only (or first) configured one."""
    boxes = getattr(env.config(), "databoxes", None) or {}
    if not boxes:
        raise CommandError("no databox configured: add a [databoxes.NAME] table to the config", code=2)
    name = getattr(args, "databox", None)
    if name is None:
        name = next(iter(boxes))
    elif name not in boxes:
        raise CommandError(f"--databox: unknown databox {name!r} (known: {', '.join(boxes)})", code=2)
    return name, boxes[name]


def open_box(args: Any, env: Any, *, create: bool = False) -> tuple[str, Any]:
    """(name, open Databox) or a clean CommandError."""
    from .. import DataboxError, open_databox

    name, settings = pick_databox(args, env)
    try:
        return name, open_databox(settings, create=create)
    except DataboxError as e:
        raise CommandError(f"databox {name}: {e}", code=2) from None


def fail(e: Exception, what: str = "") -> CommandError:
    """A databox/validation error as a one-line CommandError."""
    return CommandError(f"{what}: {e}" if what else str(e), code=2)


DATABOX_ARG = arg("--databox", help="databox name (default: the only or first configured one)")
JSON_ARG = arg("--json", action="store_true", help="print JSON")


@command("databox:create", "Create a configured databox (its SQLite file and storage folder)", DATABOX_ARG, JSON_ARG)
def databox_create(args: Any, env: Any) -> int:
    from pathlib import Path

    name, settings = pick_databox(args, env)
    existed = Path(settings.path).exists()
    _, db = open_box(args, env, create=True)
    with db:
        state = {"databox": name, "path": str(settings.path), "storage": str(settings.storage), "created": not existed,
                 "collections": [c.name for c in db.collections()]}
    if args.json:
        print_json(state)
    elif existed:
        print(f"databox {name} already exists at {settings.path}")
    else:
        print(f"databox {name} created at {settings.path} (storage {settings.storage})")
    return 0
