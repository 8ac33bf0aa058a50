"""The cluster on PostgreSQL: the node registry and task leases (schedulerd.cluster uses it).

Plain calls, each one transaction, run in worker threads by the caller. Every decision (is a
heartbeat fresh, has a lease run out) is made by the database against its own clock (the lease
statements use clock_timestamp(), the time they run: queries.sql says why).
"""

from __future__ import annotations

import os

from ..cluster import ClusterView, DuplicateNode, Grant, NodeInfo, NodeRow
from ..states import Wanted
from ..stores import StoreSettings
from . import Database, run


class PgCluster:
    shared = True

    def __init__(self, settings: StoreSettings, max_size: int = 4):
        self.db = Database(settings, "cluster", max_size)

    # --- nodes -----------------------------------------------------------------
    def register(self, me: NodeInfo) -> None:
        """Enter (or re-enter) `me` in the registry. DuplicateNode when another live process has
        the id: its heartbeat is fresh and it is another host, or a pid still alive on this one."""
        with self.db.transaction() as cur:
            run(cur, "node_lock", id=me.id)
            row = run(cur, "node_row", id=me.id).fetchone()
            if row is not None:
                host, pid, alive = row
                if alive and (host, pid) != (me.host, me.pid) and (host != me.host or _alive(pid)):
                    raise DuplicateNode(f"node id {me.id!r} is in use by a live node (host {host}, pid {pid}, "
                                        "heartbeat still fresh): give this daemon another [scheduler] node")
            run(cur, "register_node", id=me.id, host=me.host, pid=me.pid, version=me.version, kind=me.kind,
                lease=me.lease, config_hash=me.config_hash)

    def beat(self, me: NodeInfo, tasks_held: int, jobs_running: int) -> ClusterView:
        """The heartbeat, and what the node follows: the holders of the tasks and their wanted states."""
        with self.db.transaction() as cur:
            ours = run(cur, "node_beat", id=me.id, host=me.host, pid=me.pid, tasks_held=tasks_held,
                       jobs_running=jobs_running, config_hash=me.config_hash).fetchone() is not None
            holders: dict[str, str] = dict(run(cur, "lease_holders").fetchall())
            wanted = {name: Wanted(w) for name, w in run(cur, "all_wanted").fetchall()}
            nodes = [NodeRow(*r) for r in run(cur, "list_nodes").fetchall()]
        if not ours:  # our row was taken by a process with the same id: enter it again, or refuse
            self.register(me)
        return ClusterView(nodes, holders, wanted)

    def unregister(self, me: NodeInfo) -> None:
        with self.db.transaction() as cur:
            run(cur, "unregister_node", id=me.id, host=me.host, pid=me.pid)

    def nodes(self) -> list[NodeRow]:
        with self.db.transaction() as cur:
            return [NodeRow(*r) for r in run(cur, "list_nodes").fetchall()]

    # --- task leases -------------------------------------------------------------
    # each is one statement, a transaction by itself (autocommit: no BEGIN and COMMIT round trips;
    # a task's start is one per iteration)
    def acquire(self, task: str, node: str, lease: float, period: float) -> Grant | None:
        with self.db.statement() as cur:
            row = run(cur, "acquire_lease", task=task, node=node, lease=lease, period=period).fetchone()
        return None if row is None else Grant(int(row[0]), row[1])

    def renew(self, task: str, node: str, generation: int, lease: float) -> bool:
        with self.db.statement() as cur:
            return run(cur, "renew_lease", task=task, node=node, generation=generation,
                       lease=lease).fetchone() is not None

    def begin(self, task: str, node: str, generation: int, margin: float) -> float | None:
        """The iteration's start in database time (seconds since the epoch), recorded as the
        task's last start; None when the lease is no longer held with `margin` seconds left."""
        with self.db.statement() as cur:
            row = run(cur, "begin_iteration", task=task, node=node, generation=generation, margin=margin).fetchone()
        return None if row is None else float(row[0])

    def release(self, task: str, node: str, generation: int) -> None:
        with self.db.statement() as cur:
            run(cur, "release_lease", task=task, node=node, generation=generation)

    def close(self) -> None:
        self.db.close()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
