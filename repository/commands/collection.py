"""`collection:create`, `collection:list`."""

from __future__ import annotations

import argparse
from typing import Any

from schedulerd.commands import arg, command, print_json, print_table

from .databox import DATABOX_ARG, JSON_ARG, fail, open_box


@command("collection:create", "Create a collection in a databox", arg("name", help="collection name"), DATABOX_ARG,
         JSON_ARG)
def collection_create(args: argparse.Namespace, env: Any) -> int:
    from .. import DataboxError
    from ..checks import creating_collections

    with creating_collections():  # the config may already name the collection made here
        env.config()
    name, db = open_box(args, env, create=True)
    with db:
        try:
            coll = db.create_collection(args.name)
        except (DataboxError, ValueError) as e:
            raise fail(e, "name") from None
    if args.json:
        print_json({"databox": name, **coll.to_json()})
    else:
        print(f"collection {coll.name!r} created in databox {name} (id {coll.id})")
    return 0


@command("collection:list", "List the collections of a databox", DATABOX_ARG, JSON_ARG)
def collection_list(args: argparse.Namespace, env: Any) -> int:
    name, db = open_box(args, env)
    with db:
        colls = db.collections()
        counts = db.collection_counts()
    if args.json:
        print_json([{**c.to_json(), "records": counts.get(c.id, 0)} for c in colls])
    elif colls:
        print_table([[c.id, c.name, counts.get(c.id, 0), c.created[:19]] for c in colls],
                    ["ID", "NAME", "RECORDS", "CREATED"])
    else:
        print(f"no collections in databox {name} (create one with collection:create NAME)")
    return 0
