"""`databox:create`, and the helpers the collection/record commands share.

Heavy imports stay inside handlers: the CLI must stay light.
"""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from schedulerd.commands import CommandError, arg, command, print_json

if TYPE_CHECKING:
    from ..databox import Databox
    from ..settings import DataboxSettings


def pick_databox(args: argparse.Namespace, env: Any) -> tuple[str, DataboxSettings]:
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


def open_box(args: argparse.Namespace, env: Any, *, create: bool = False) -> tuple[str, Databox]:
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


@command("databox:create", "Create a configured databox (its SQLite file or PostgreSQL schema, and storage folder)",
         DATABOX_ARG, JSON_ARG)
def databox_create(args: argparse.Namespace, env: Any) -> int:
    from .. import DataboxError, DataboxMissing, open_databox

    name, settings = pick_databox(args, env)
    try:
        open_databox(settings, create=False).close()
        existed = True
    except DataboxMissing:
        existed = False
    except DataboxError as e:
        raise CommandError(f"databox {name}: {e}", code=2) from None
    _, db = open_box(args, env, create=True)
    with db:
        state = {"databox": name, "path": settings.where, "storage": str(settings.storage), "created": not existed,
                 "collections": [c.name for c in db.collections()]}
    if args.json:
        print_json(state)
    elif existed:
        print(f"databox {name} already exists at {settings.where}")
    else:
        print(f"databox {name} created at {settings.where} (storage {settings.storage})")
    return 0


@command("databox:copy", "Copy every row of a databox into another, empty one, ids kept (SQLite <-> PostgreSQL)",
         arg("source", metavar="FROM", help="the configured databox to copy"),
         arg("target", metavar="TO", help="a configured databox holding nothing yet (created when missing)"),
         JSON_ARG)
def databox_copy(args: argparse.Namespace, env: Any) -> int:
    from .. import DataboxError, open_databox
    from ..copy import copy_databox

    boxes = getattr(env.config(), "databoxes", None) or {}
    for key, name in (("FROM", args.source), ("TO", args.target)):
        if name not in boxes:
            raise CommandError(f"{key}: unknown databox {name!r} (known: {', '.join(boxes) or 'none configured'})", 2)
    if args.source == args.target:
        raise CommandError("TO: the same databox as FROM", 2)
    try:
        with open_databox(boxes[args.source], create=False) as src, open_databox(boxes[args.target]) as dst:
            counts = copy_databox(src, dst)
    except DataboxError as e:
        raise CommandError(str(e), 2) from None
    if args.json:
        print_json({"from": args.source, "to": args.target, "rows": counts})
    else:
        print(f"databox {args.source} copied to {args.target}: "
              + ", ".join(f"{n} {table}" for table, n in counts.items()))
    return 0
