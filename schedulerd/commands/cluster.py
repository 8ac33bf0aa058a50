"""cluster:nodes — the nodes sharing the store (docs/cluster.md)."""

from __future__ import annotations

import time
from typing import Any

from . import CommandError, arg, command, print_json, print_table

HEADERS = ["NODE", "KIND", "HOST", "PID", "VERSION", "STARTED", "HEARTBEAT", "TASKS", "JOBS", "CONFIG"]


def _pg_nodes(store: Any) -> list[dict[str, Any]]:
    from ..pgstore.cluster import PgCluster
    from ..store import StoreUnavailable
    from ..stores import SchemaMismatch, check_schema

    try:
        check_schema(store)
        cluster = PgCluster(store, max_size=1)
        try:
            return [vars(n) for n in cluster.nodes()]
        finally:
            cluster.close()
    except SchemaMismatch as e:
        raise CommandError(str(e), 2) from None
    except StoreUnavailable as e:
        raise CommandError(f"the store does not answer: {e}", 1) from None


def _row(n: dict[str, Any]) -> list[Any]:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(n["started"]))
    beat = f"{n['heartbeat_age']:.1f}s ago" + ("" if n["alive"] else " (dead)")
    return [n["id"], n["kind"], n["host"], n["pid"], n["version"], started, beat, n["tasks_held"],
            n["jobs_running"], n["config_hash"]]


@command("cluster:nodes", "List the nodes sharing the store: id, host, pid, heartbeat, tasks held, jobs running",
         arg("--json", action="store_true"))
def nodes(args: Any, env: Any) -> int:
    store = env.store_settings()
    if store.url is not None:
        found = _pg_nodes(store)
    else:  # the SQLite store: the one local node, as the running daemon describes it
        state = env.try_call("state")
        found = state["cluster"]["nodes"] if state else []
    if args.json:
        print_json(found)
    elif not found:
        print("no node: the daemon is not running" if store.url is None else "no node is registered")
    else:
        print_table([_row(n) for n in found], HEADERS)
        if len({n["config_hash"] for n in found if n["alive"] and n["kind"] == "daemon"}) > 1:
            from ..cluster import DIFFERING_CONFIGS

            print(f"warning: the nodes' task or pipeline configurations differ (CONFIG): {DIFFERING_CONFIGS}")
    return 0
