"""record:search — full-text search in the index the `indexer` task keeps (bin/indexer)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from schedulerd.commands import CommandError, arg, command, print_json, print_table


def _indexer_tasks(config: Any) -> list[Any]:
    return [tc for tc in config.tasks.values() if tc.type == "indexer"]


def pick_databox(config: Any, wanted: str | None) -> str:
    """The databox to search: --databox, else the indexer task's, else the only one."""
    names: list[str] = sorted(config.databoxes)
    if wanted is not None:
        if wanted not in config.databoxes:
            raise CommandError(f"unknown databox {wanted!r} (known: {', '.join(names) or 'none configured'})", 2)
        return wanted
    bases: list[str] = [tc.settings.base for tc in _indexer_tasks(config) if tc.settings.base in config.databoxes]
    if bases:
        return bases[0]
    if len(names) == 1:
        return names[0]
    raise CommandError("which databox? give --databox NAME (known: " + (", ".join(names) or "none configured") + ")", 2)


def index_for(config: Any, databox: str) -> Path:
    """`--index=` in the indexer task's extra_args when set, else `<databox file>.fts`."""
    from ..fulltext import index_path_for

    for tc in _indexer_tasks(config):
        if tc.settings.base == databox:
            for a in tc.settings.extra_args:
                if a.startswith("--index="):
                    p = Path(a.split("=", 1)[1])
                    return p if p.is_absolute() else config.base_dir / p
    return index_path_for(config.databoxes[databox].path)


@command("record:search", "Full-text search of record names and fields (exit 1 when nothing matches)",
         arg("query", help='words that must all match; "word*" matches a prefix'),
         arg("--databox", default=None, help="databox name (default: the indexer task's)"),
         arg("--index", type=Path, default=None, help="index file (default: the databox's)"),
         arg("--limit", type=int, default=20),
         arg("--raw", action="store_true", help="the query is FTS5 syntax (OR, NOT, NEAR, column:)"),
         arg("--json", action="store_true"))
def record_search(args: argparse.Namespace, env: Any) -> int:
    from ..fulltext import FulltextError, search_databox

    if args.limit < 1:
        raise CommandError("--limit must be at least 1", 2)
    settings = None
    if args.index is not None:
        index = args.index
    else:
        config = env.config()
        name = pick_databox(config, args.databox)
        settings = config.databoxes[name]
        index = None if settings.url is not None else index_for(config, name)
    try:
        hits = search_databox(settings, index, args.query, limit=args.limit, raw=args.raw)
    except ValueError as e:
        raise CommandError(str(e), 2) from None
    except FulltextError as e:
        raise CommandError(str(e), 1) from None
    if args.json:
        print_json([{"id": h.record_id, "name": h.name, "collection": h.collection, "match": h.snippet,
                     "rank": h.rank} for h in hits])
    else:
        print_table([[h.record_id, h.collection, h.name, " | ".join(h.snippet.splitlines())] for h in hits],
                    ["ID", "COLLECTION", "NAME", "MATCH"])
    return 0 if hits else 1
