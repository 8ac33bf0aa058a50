"""`record:subdefs ID [--rebuild]`: build one record's sub-definitions in the CLI's own process.

Uses the same code, status bit and tool timeout as the databox's `subdefs` task, so a
record fixed by hand ends exactly as the task would have left it.
"""

from __future__ import annotations

import argparse
import sys
from typing import TYPE_CHECKING, Any

from repository import DATABOX_ARG, JSON_ARG, open_box
from schedulerd.commands import CommandError, arg, command, print_json, print_table

if TYPE_CHECKING:
    from repository import Record


@command(
    "record:subdefs", "Build a record's sub-definitions (thumbnail, preview...) now, in this process",
    DATABOX_ARG,
    arg("id", metavar="ID", help="record id"),
    arg("--rebuild", action="store_true", help="build them again even if up to date or marked in error"),
    JSON_ARG,
)
def record_subdefs(args: argparse.Namespace, env: Any) -> int:
    import functools

    import anyio

    from repository import UnknownRecord
    from tasks.media import as_specs, classify
    from tasks.media.maker import DEFAULT_TIMEOUT
    from tasks.subdefs import build_record, specs_for, task_settings_for

    if not str(args.id).isdigit() or int(args.id) <= 0:
        raise CommandError(f"ID: expected a record id (a positive integer), got {args.id!r}", code=2)
    rid = int(args.id)
    name, db = open_box(args, env)
    task = task_settings_for(env.config(), name)
    with db:
        try:
            record = db.get_record(rid)
        except UnknownRecord as e:
            raise CommandError(str(e), code=2) from None
        if record.document_path is None:
            raise CommandError(f"{record.label} has no document (a story?): nothing to build", code=2)
        specs = as_specs(db.settings.subdefs)
        current = record.subdefs_version is not None and record.subdefs_version >= record.doc_version
        have = db.subdefs(rid)
        if not args.rebuild:
            if record.subdef_error:
                raise CommandError(f"{record.label} is marked in error: {record.subdef_error} "
                                   "(use --rebuild to retry)", code=1)
            wanted = {sp.name for sp in specs_for(specs, classify(record.document_path, record.mime))}
            if current and wanted <= set(have):
                _report(args, record, {n: s.to_json() for n, s in have.items()}, None, "up to date (use --rebuild)")
                return 0
        outcome = anyio.run(functools.partial(
            build_record, db, record, specs,
            timeout=task.tool_timeout if task else DEFAULT_TIMEOUT,
            status_bit=task.status_bit if task else None,
        ))
    built = {n: {"path": str(m.path), "width": m.width, "height": m.height, "size": m.bytes} for n, m in outcome.built}
    problem = outcome.error or outcome.waiting
    _report(args, record, built, problem, outcome.nothing)
    return 1 if problem else 0


def _report(args: argparse.Namespace, record: Record, built: dict[str, dict[str, object]], problem: str | None,
            note: str | None) -> None:
    if args.json:
        print_json({"record": record.id, "original_name": record.original_name, "subdefs": built, "error": problem,
                    "note": note})
        return
    if problem:
        print(f"{record.label}: {problem}", file=sys.stderr)
        return
    if note:
        print(f"{record.label}: {note}")
    if not built:
        return
    print_table([[n, d["path"], f"{d['width']}x{d['height']}", d["size"]] for n, d in built.items()],
                ["subdef", "path", "size", "bytes"])
