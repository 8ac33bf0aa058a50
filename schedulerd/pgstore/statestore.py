"""The state store (store.StateStore) on PostgreSQL: wanted states, counters, run history, values."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import psycopg

from ..states import CLEAN_OUTCOMES, Wanted
from ..store import Run, TaskRecord
from ..stores import StoreSettings
from . import Database, run

log = logging.getLogger("schedulerd.store")
CLEAN = sorted(o.value for o in CLEAN_OUTCOMES)
RUN_FIELDS = Run._fields  # insert_runs_fenced's arrays, one per field


class PgStateStore:
    def __init__(self, settings: StoreSettings, max_size: int = 4, node: str | None = None):
        """`node`: the daemon's node id; its crash counters are refused while another node holds
        the task's lease (runs are fenced by their lease generation)."""
        self.db = Database(settings, "state", max_size)
        self.node = node

    def wanted(self, task: str) -> Wanted | None:
        with self.db.transaction() as cur:
            row = run(cur, "task_wanted", task=task).fetchone()
        return Wanted(row[0]) if row and row[0] else None

    def set_wanted(self, task: str, wanted: Wanted) -> None:
        self.save([], {}, {task: wanted})

    def set_crashes(self, task: str, crashes: int) -> None:
        self.save([], {task: crashes}, {})

    def record_run(self, run_: Run) -> None:
        self.save([run_], {}, {})

    def save(self, runs: list[Run], crashes: Mapping[str, int], wanted: Mapping[str, Wanted]) -> None:
        """The daemon's pending writes (finished runs, crash counters, wanted states) in one transaction."""
        if not (runs or crashes or wanted):
            return
        with self.db.transaction() as cur:
            for task, n in crashes.items():
                if run(cur, "set_crashes", task=task, crashes=n, node=self.node).fetchone() is None:
                    log.warning("crash counter of task %s (%d, node %s) refused: another node holds the task's "
                                "lease", task, n, self.node)
            for task, w in wanted.items():
                run(cur, "set_wanted", task=task, wanted=w.value)
            self._record_runs(cur, runs)

    def _record_runs(self, cur: psycopg.Cursor, runs: list[Run]) -> None:
        if not runs:
            return
        columns = {f: [getattr(r, f) for r in runs] for f in RUN_FIELDS}
        for f in ("started", "ended"):  # one array type: an int among the floats is refused as a mixed list
            columns[f] = [float(t) for t in columns[f]]
        written = run(cur, "insert_runs_fenced", **columns).fetchall()
        kept = {(task, generation) for task, _, generation in written}
        for r in runs:
            if (r.task, r.generation) not in kept:
                log.warning("run of task %s (lease generation %s, node %s) refused: another node has taken the "
                            "task over since", r.task, r.generation, r.node)
        counts: dict[str, list[int]] = {}
        for task, outcome, _ in written:
            n = counts.setdefault(task, [0, 0])
            n[0] += 1
            n[1] += outcome not in CLEAN
        if counts:  # in the tasks' order: two writers lock the rows in the same order
            tasks = sorted(counts)
            run(cur, "count_runs", task=tasks, runs=[counts[t][0] for t in tasks], failures=[counts[t][1] for t in tasks])

    def task(self, task: str) -> TaskRecord:
        with self.db.transaction() as cur:
            row = run(cur, "task_record", task=task).fetchone()
            last = run(cur, "history_nodes", task=task, limit=1).fetchone()
        last_run = Run(*last) if last else None
        if row is None:
            return TaskRecord(task, None, 0, 0, 0, last_run)
        return TaskRecord(task, Wanted(row[0]) if row[0] else None, row[1], row[2], row[3], last_run)

    def tasks(self, names: Sequence[str]) -> dict[str, TaskRecord]:
        """`task()` of many tasks in one statement (a round trip per task made the start of 10,000 slow)."""
        with self.db.transaction() as cur:
            rows = run(cur, "task_records", names=list(names)).fetchall()
        return {row[0]: TaskRecord(row[0], Wanted(row[1]) if row[1] else None, row[2] or 0, row[3] or 0, row[4] or 0,
                                   Run(*row[5:]) if row[5] is not None else None) for row in rows}

    def history(self, task: str, limit: int = 20) -> list[Run]:
        with self.db.transaction() as cur:
            return [Run(*r) for r in run(cur, "history_nodes", task=task, limit=limit).fetchall()]

    def purge_history(self, keep_ok: int, keep_failed: int, max_age_ok: float, max_age_failed: float) -> int:
        """Retention set separately for successful and failed runs, by count and by age (the database's clock)."""
        n = 0
        with self.db.transaction() as cur:
            for ok, keep, age in ((True, keep_ok, max_age_ok), (False, keep_failed, max_age_failed)):
                n += run(cur, "purge_runs_by_age", clean=CLEAN, ok=ok, age=age).rowcount
                n += run(cur, "purge_runs_by_count", clean=CLEAN, ok=ok, keep=keep).rowcount
        return n

    def retention_turn(self, every: float) -> bool:
        """Whether this node runs the history retention now: one node of the cluster per `every`
        seconds (a mark in kv, by the database's clock). Every node used to run it every 5
        minutes, and each pass sorts the whole history (~1.2 s of the server's CPU at a million
        runs)."""
        with self.db.transaction() as cur:
            return run(cur, "take_history_purge", every=every).fetchone() is not None

    def get_value(self, key: str) -> str | None:
        with self.db.transaction() as cur:
            row = run(cur, "get_value", key=key).fetchone()
        return row[0] if row else None

    def set_value(self, key: str, value: str | None) -> None:
        with self.db.transaction() as cur:
            if value is None:
                run(cur, "delete_value", key=key)
            else:
                run(cur, "set_value", key=key, value=value)

    def close(self) -> None:
        self.db.close()
