"""Pipeline runs, kept in the job store's database (jobs.db, or the PostgreSQL store).

A run has one row per step started; a step that runs a job type has one part per job (one part
holding every item, or one per item with `parallel`), and the part's jobs are inserted in the
same transaction as the step row: a step is started whole or not at all, and its items are then
retried, recovered after a kill -9 and cancelled as the durable job queue does for any job. A
part whose job returned items other than its input keeps them (`output`); the step's output is
every part's, in order. A part keeps the state and error its job had when the job was deleted
(`job_state`, `job_error`: a trigger on jobs), so a purged job still says how its part ended.
The same SQL runs on both databases (`?` becomes `%s` on PostgreSQL).
"""

from __future__ import annotations

import enum
import json
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .plugin import Item
from .store import DEFAULT_BUSY_TIMEOUT, SqliteFile
from .stores import StoreSettings

if TYPE_CHECKING:  # psycopg is imported only with a PostgreSQL store
    import psycopg

    from .pgstore import Database


class RunState(enum.Enum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


class StepState(enum.Enum):
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"


SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS pipeline_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, pipeline TEXT NOT NULL, trigger TEXT NOT NULL, state TEXT NOT NULL,
    step INTEGER NOT NULL DEFAULT 0, steps TEXT NOT NULL, input TEXT NOT NULL, created REAL NOT NULL,
    finished REAL, error TEXT, due REAL);
CREATE INDEX IF NOT EXISTS pipeline_runs_state ON pipeline_runs(state);
CREATE TABLE IF NOT EXISTS pipeline_steps (
    run INTEGER NOT NULL, step INTEGER NOT NULL, name TEXT NOT NULL, state TEXT NOT NULL, items_in INTEGER NOT NULL,
    items_out INTEGER, parts INTEGER NOT NULL DEFAULT 0, started REAL NOT NULL, finished REAL, error TEXT,
    output TEXT, part_items INTEGER, PRIMARY KEY (run, step));
CREATE TABLE IF NOT EXISTS pipeline_parts (
    run INTEGER NOT NULL, step INTEGER NOT NULL, part INTEGER NOT NULL, job INTEGER NOT NULL, output TEXT,
    job_state TEXT, job_error TEXT, PRIMARY KEY (run, step, part));
CREATE INDEX IF NOT EXISTS pipeline_parts_job ON pipeline_parts(job);
"""

# a jobs.db made before pipeline_runs had `due` gets it (_SqlitePipelines); then its unique key
SQLITE_DUE_INDEX = "CREATE UNIQUE INDEX IF NOT EXISTS pipeline_runs_due ON pipeline_runs(pipeline, due)"
# a deleted job's state and error stay with its part (the retention or job:purge may delete a part's
# done job before the driver looked at it); PostgreSQL: migration 0008
SQLITE_PART_TRIGGER = ("CREATE TRIGGER IF NOT EXISTS pipeline_parts_job_deleted AFTER DELETE ON jobs BEGIN "
                       "UPDATE pipeline_parts SET job_state=OLD.state, job_error=OLD.error WHERE job=OLD.id; END")
# the current step's parts by state: a part whose job is gone has the state its job had then, and
# is `deleted` unless that was an end (none recorded: its job went before parts kept it). Each
# part's job is looked up by id: as a join, PostgreSQL's plan depended on its statistics and
# could merge-join over the jobs' primary key from the first job (2.5-3 ms a look at 100,000
# jobs, 0.04 ms by id), and a driver looks every 0.2 s
PART_STATES = ("SELECT coalesce((SELECT j.state FROM jobs j WHERE j.id=p.job), CASE WHEN p.job_state IN "
               "('finished','failed','cancelled') THEN p.job_state ELSE 'deleted' END), count(*) "
               "FROM pipeline_parts p WHERE p.run=? AND p.step=? GROUP BY 1")
# the first part that fails its step: its job failed or was cancelled, or went before finishing
PART_FAILED = ("SELECT p.part, p.job, j.id IS NULL, coalesce(j.state, p.job_state), coalesce(j.error, p.job_error) "
               "FROM pipeline_parts p LEFT JOIN jobs j ON j.id=p.job WHERE p.run=? AND p.step=? AND "
               "(j.state IN ('failed','cancelled') OR (j.id IS NULL AND coalesce(p.job_state, '') <> 'finished')) "
               "ORDER BY p.part LIMIT 1")
# a scheduled run's due time is a unique key with its pipeline: a run for a due time that has one
# is not made (another node of the cluster made it); other runs have no due time (NULLs never conflict)
INSERT_RUN = ("INSERT INTO pipeline_runs(pipeline, trigger, state, step, steps, input, created, due) "
              "VALUES (?,?,?,0,?,?,?,?) ON CONFLICT DO NOTHING RETURNING id")
# a step's row, unless it has one (a node that started it, maybe at the same moment: on PostgreSQL
# the insert waits for that node's transaction, then does nothing) or its run moved on or ended
# (SQLite: an INSERT ... SELECT with ON CONFLICT needs the WHERE it has here)
START_STEP = ("INSERT INTO pipeline_steps(run, step, name, state, items_in, parts, part_items, started) "
              "SELECT ?,?,?,?,?,?,?,? "
              "WHERE EXISTS (SELECT 1 FROM pipeline_runs WHERE id=? AND step=? AND state=?) "
              "ON CONFLICT DO NOTHING RETURNING step")
SQLITE_INSERT_JOB = ("INSERT INTO jobs(type, queue, payload, title, max_attempts, next_attempt_at, state, created) "
                     "VALUES (?,?,?,?,?,?,'waiting',?) RETURNING id")
# every part's job and its pipeline_parts row in one statement (the job's payload says its part)
PG_INSERT_PARTS = ("WITH j AS (INSERT INTO jobs (type, queue, payload, title, max_attempts) "
                   "SELECT * FROM unnest(?::text[], ?::text[], ?::jsonb[], ?::text[], ?::int[]) RETURNING id, payload) "
                   "INSERT INTO pipeline_parts (run, step, part, job) SELECT ?, ?, (payload->>'part')::int, id FROM j")


@dataclass(frozen=True)
class PartJob:
    """A job to insert with a step: (type, queue, payload, title, max_attempts)."""

    type: str
    queue: str
    payload: dict[str, Any]
    title: str
    max_attempts: int


@dataclass(frozen=True)
class StepRow:
    step: int
    name: str
    state: StepState
    items_in: int
    items_out: int | None
    parts: int
    started: float
    finished: float | None
    error: str | None

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "state": self.state.value}


@dataclass(frozen=True)
class RunRow:
    id: int
    pipeline: str
    trigger: str
    state: RunState
    step: int
    steps: tuple[str, ...]
    created: float
    finished: float | None
    error: str | None
    due: float | None  # a scheduled run's due time

    def to_json(self) -> dict[str, Any]:
        return {**vars(self), "state": self.state.value, "steps": list(self.steps)}


def dump(items: Sequence[Item]) -> str:
    return dump_json([i.to_json() for i in items])


def dump_json(data: Any) -> str:
    return json.dumps(data, separators=(",", ":"))


def load_items(text: str) -> list[Item]:
    return [Item.from_json(d) for d in json.loads(text)]


class _Pg:
    """A psycopg cursor seen as sqlite3's connection: `execute(sql with ?, params)`."""

    def __init__(self, cur: psycopg.Cursor[Any]):
        self.cur = cur

    def execute(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        return self.cur.execute(sql.replace("?", "%s"), tuple(params))


# a transaction of either back-end: both run `execute(sql with ?, params)`, whose result has
# fetchone, fetchall and rowcount
Transaction = sqlite3.Connection | _Pg


class PipelineStore:
    def __init__(self, sqlite: SqliteFile | None = None, pg: Database | None = None):
        self._sqlite, self._pg = sqlite, pg

    @contextmanager
    def transaction(self) -> Iterator[Transaction]:
        if self._pg is not None:
            with self._pg.transaction() as cur:
                yield _Pg(cur)
        else:
            assert self._sqlite is not None
            with self._sqlite.transaction() as c:
                yield c

    def close(self) -> None:
        (self._pg or self._sqlite).close()  # type: ignore[union-attr]

    # --- runs ------------------------------------------------------------------------------
    def create_run(self, pipeline: str, trigger: str, steps: Sequence[str], items: Sequence[Item]) -> int:
        rid = self._insert_run(pipeline, trigger, steps, items, None)
        assert rid is not None  # without a due time there is no key to meet
        return rid

    def create_scheduled_run(self, pipeline: str, steps: Sequence[str], items: Sequence[Item],
                             due: float) -> int | None:
        """The run for the schedule's due time `due` (rounded to the millisecond); None when the
        pipeline has a run for it already (made by another node, or before a restart)."""
        return self._insert_run(pipeline, "schedule", steps, items, round(due, 3))

    def _insert_run(self, pipeline: str, trigger: str, steps: Sequence[str], items: Sequence[Item],
                    due: float | None) -> int | None:
        with self.transaction() as c:
            row = c.execute(INSERT_RUN, (pipeline, trigger, RunState.RUNNING.value, json.dumps(list(steps)),
                                         dump(items), time.time(), due)).fetchone()
        return None if row is None else int(row[0])

    def _run(self, row: Sequence[Any]) -> RunRow:
        rid, pipeline, trigger, state, step, steps, created, finished, error, due = row
        return RunRow(int(rid), pipeline, trigger, RunState(state), int(step), tuple(json.loads(steps)),
                      float(created), finished, error, due)

    RUN_COLUMNS = "id, pipeline, trigger, state, step, steps, created, finished, error, due"

    def runs(self, state: RunState | None = None, limit: int = 100) -> list[RunRow]:
        where, params = ("WHERE state=?", [state.value]) if state else ("", [])
        with self.transaction() as c:
            rows = c.execute(f"SELECT {self.RUN_COLUMNS} FROM pipeline_runs {where} ORDER BY id DESC LIMIT ?",
                             (*params, limit)).fetchall()
        return [self._run(r) for r in rows]

    def run(self, run_id: int) -> RunRow | None:
        with self.transaction() as c:
            row = c.execute(f"SELECT {self.RUN_COLUMNS} FROM pipeline_runs WHERE id=?", (run_id,)).fetchone()
        return None if row is None else self._run(row)

    def steps(self, run_id: int) -> list[StepRow]:
        with self.transaction() as c:
            rows = c.execute("SELECT step, name, state, items_in, items_out, parts, started, finished, error "
                             "FROM pipeline_steps WHERE run=? ORDER BY step", (run_id,)).fetchall()
        return [StepRow(r[0], r[1], StepState(r[2]), *r[3:]) for r in rows]

    def last_due(self, pipeline: str) -> float | None:
        """The latest due time (seconds since the epoch) a run of the pipeline was made for."""
        with self.transaction() as c:
            row = c.execute("SELECT max(due) FROM pipeline_runs WHERE pipeline=?", (pipeline,)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    def end_run(self, run_id: int, state: RunState, error: str | None = None) -> None:
        with self.transaction() as c:
            c.execute("UPDATE pipeline_runs SET state=?, finished=?, error=? WHERE id=? AND state=?",
                      (state.value, time.time(), error, run_id, RunState.RUNNING.value))

    # --- steps -----------------------------------------------------------------------------
    def step_input(self, run: RunRow) -> list[Item]:
        """The run's input for its first step, else the previous step's output."""
        with self.transaction() as c:
            text = self._input_text(c, run)
        return load_items(text)

    @staticmethod
    def _input_text(c: Transaction, run: RunRow) -> str:
        if run.step == 0:
            row = c.execute("SELECT input FROM pipeline_runs WHERE id=?", (run.id,)).fetchone()
        else:
            row = c.execute("SELECT output FROM pipeline_steps WHERE run=? AND step=?", (run.id, run.step - 1)).fetchone()
        return row[0] if row and row[0] else "[]"

    def finish_step(self, run: RunRow, name: str, items_in: int, output: Sequence[Item] | str, *,
                    started: bool) -> bool:
        """The step is done with `output` (items, or their stored JSON; started now if not
        `started`); the run moves on. False when another node moved the run first."""
        now = time.time()
        text = output if isinstance(output, str) else dump(output)
        count = len(json.loads(text)) if isinstance(output, str) else len(output)
        with self.transaction() as c:
            moved = c.execute("UPDATE pipeline_runs SET step=step+1 WHERE id=? AND step=? AND state=?",
                              (run.id, run.step, RunState.RUNNING.value)).rowcount
            if not moved:
                return False
            if started:
                c.execute("UPDATE pipeline_steps SET state=?, items_out=?, finished=?, output=? WHERE run=? AND step=?",
                          (StepState.FINISHED.value, count, now, text, run.id, run.step))
            else:
                c.execute("INSERT INTO pipeline_steps(run, step, name, state, items_in, items_out, parts, started, "
                          "finished, output) VALUES (?,?,?,?,?,?,0,?,?,?)",
                          (run.id, run.step, name, StepState.FINISHED.value, items_in, count, now, now, text))
            return True

    def start_step(self, run: RunRow, name: str, items_in: int, jobs: Sequence[PartJob],
                   part_items: int | None) -> bool:
        """The step's row, its parts and their jobs, in one transaction: part k holds the input
        items k*part_items .. (k+1)*part_items - 1 (1: a `parallel` step), or every item when
        part_items is None, which the step's output is read with. False when the step has
        its row (another node of the cluster started it, even at the same moment: the insert waits
        for the other transaction and does nothing) or the run is no longer running at this step.
        The rows go in with one statement each (executemany, or one on PostgreSQL), not one per item."""
        now = time.time()
        with self.transaction() as c:
            if c.execute(START_STEP, (run.id, run.step, name, StepState.RUNNING.value, items_in, len(jobs),
                                      part_items, now, run.id, run.step, RunState.RUNNING.value)).fetchone() is None:
                return False
            if not jobs:
                return True
            if isinstance(c, _Pg):
                self._insert_parts_pg(c, run, jobs, now)
            else:
                self._insert_parts_sqlite(c, run, jobs, now)
            return True

    @staticmethod
    def _insert_parts_sqlite(c: sqlite3.Connection, run: RunRow, jobs: Sequence[PartJob], now: float) -> None:
        c.executemany(SQLITE_INSERT_JOB, [(j.type, j.queue, json.dumps(j.payload, separators=(",", ":")), j.title,
                                           j.max_attempts, now, now) for j in jobs])
        # AUTOINCREMENT gives each new row the largest id the table ever had + 1, and this
        # transaction holds the write lock: the jobs just inserted have the ids last-n+1 .. last
        last = int(c.execute("SELECT last_insert_rowid()").fetchone()[0])
        first = last - len(jobs) + 1
        c.executemany("INSERT INTO pipeline_parts(run, step, part, job) VALUES (?,?,?,?)",
                      [(run.id, run.step, k, first + k) for k in range(len(jobs))])

    @staticmethod
    def _insert_parts_pg(c: _Pg, run: RunRow, jobs: Sequence[PartJob], now: float) -> None:
        cols: list[list[Any]] = [[], [], [], [], []]
        for j in jobs:
            for col, v in zip(cols, (j.type, j.queue, json.dumps(j.payload, separators=(",", ":")), j.title,
                                     j.max_attempts), strict=True):
                col.append(v)
        c.execute(PG_INSERT_PARTS, (*cols, run.id, run.step))
        c.execute("SELECT pg_notify('schedulerd_jobs', ?)", (jobs[0].queue,))

    def part_states(self, run: RunRow) -> tuple[dict[str, int], str | None]:
        """The current step's jobs by state, and the error of the first part that fails the step:
        its job failed or was cancelled, or was deleted before it ended. A part whose job is gone
        (the retention or job:purge deletes done jobs, maybe before the driver looked) has the
        state and error its job had then (pipeline_parts.job_state, written as the job is deleted):
        only a finished one counts as finished."""
        with self.transaction() as c:
            counts = {r[0]: int(r[1]) for r in c.execute(PART_STATES, (run.id, run.step)).fetchall()}
            if not (counts.get("failed") or counts.get("cancelled") or counts.get("deleted")):
                return counts, None
            row = c.execute(PART_FAILED, (run.id, run.step)).fetchone()
        if row is None:  # retried (job:retry) since the count, on PostgreSQL
            return counts, None
        part, job, gone, state, error = row
        if gone and state is None:
            return counts, f"part {part}'s job {job} was deleted before its end was recorded"
        if gone and state not in ("failed", "cancelled"):
            return counts, f"part {part}'s job {job} was deleted while {state}"
        return counts, f"job {job} {state}: {error or ''}".rstrip(": ")

    def step_output(self, run: RunRow) -> str:
        """Every part's output in order, as stored JSON: what its job returned, else its input
        items, the parts mapped to the items as they were built (the step row's `part_items`, not
        the step's `parallel` setting now: a reload or another node may have changed it). Read
        from the step's input and the parts' outputs, never from the jobs (the retention may have
        purged them); when no part returned other items, the input's text as it is."""
        with self.transaction() as c:
            changed = c.execute("SELECT part, output FROM pipeline_parts WHERE run=? AND step=? AND output IS NOT NULL "
                                "ORDER BY part", (run.id, run.step)).fetchall()
            size = c.execute("SELECT part_items FROM pipeline_steps WHERE run=? AND step=?",
                             (run.id, run.step)).fetchone()
            text = self._input_text(c, run)
        if not changed:
            return text
        outputs = {int(part): json.loads(output) for part, output in changed}
        items = json.loads(text)
        n = int(size[0]) if size and size[0] else max(len(items), 1)  # None: one part holds every item
        parts = [items[k:k + n] for k in range(0, len(items), n)] or [[]]
        return dump_json([x for k, part in enumerate(parts) for x in outputs.get(k, part)])

    def fail_step(self, run: RunRow, error: str) -> None:
        now = time.time()
        with self.transaction() as c:
            c.execute("UPDATE pipeline_steps SET state=?, finished=?, error=? WHERE run=? AND step=?",
                      (StepState.FAILED.value, now, error, run.id, run.step))
            c.execute("UPDATE pipeline_runs SET state=?, finished=?, error=? WHERE id=? AND state=?",
                      (RunState.FAILED.value, now, f"step {run.step} ({run.steps[run.step]}): {error}", run.id,
                       RunState.RUNNING.value))

    def set_part_output(self, run_id: int, step: int, part: int, items: Sequence[Item]) -> None:
        with self.transaction() as c:
            c.execute("UPDATE pipeline_parts SET output=? WHERE run=? AND step=? AND part=?",
                      (dump(items), run_id, step, part))


class _SqlitePipelines(SqliteFile):
    """jobs.db's pipeline tables; one made by an older schedulerd gets the columns added since
    (PostgreSQL: migrations 0004, 0007, 0008), a write only the first time."""

    SCHEMA = SQLITE_SCHEMA
    # (table, column, its type, what fills it in the rows there are: a step started before
    # part_items with more than one part was a parallel one)
    ADDED = (("pipeline_runs", "due", "REAL", None),
             ("pipeline_steps", "part_items", "INTEGER", "UPDATE pipeline_steps SET part_items = 1 WHERE parts > 1"),
             ("pipeline_parts", "job_state", "TEXT", None), ("pipeline_parts", "job_error", "TEXT", None))
    MADE = {"pipeline_runs_due": SQLITE_DUE_INDEX, "pipeline_parts_job_deleted": SQLITE_PART_TRIGGER}

    def __init__(self, path: Path, busy_timeout: float = DEFAULT_BUSY_TIMEOUT):
        super().__init__(path, busy_timeout)
        with self._lock:
            missing = [a for a in self.ADDED if a[1] not in self._columns(self._conn, a[0])]
            made = {r[0] for r in self._conn.execute("SELECT name FROM sqlite_master WHERE type IN ('index','trigger')")}
        if set(self.MADE) <= made and not missing:
            return
        with self.transaction() as c:
            for table, column, kind, fill in self.ADDED:
                if column not in self._columns(c, table):
                    c.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                    if fill:
                        c.execute(fill)
            for sql in self.MADE.values():
                c.execute(sql)

    @staticmethod
    def _columns(c: sqlite3.Connection, table: str) -> set[str]:
        return {r[1] for r in c.execute(f"PRAGMA table_info({table})")}


def open_pipeline_store(state_dir: Path, store: StoreSettings,
                        busy_timeout: float = DEFAULT_BUSY_TIMEOUT) -> PipelineStore:
    """On the job store's database: jobs.db under state_dir, or the PostgreSQL store."""
    if store.url is not None:
        from .pgstore import Database

        return PipelineStore(pg=Database(store, "pipelines", 2))
    from .jobstore import SqliteJobStore

    SqliteJobStore(state_dir / "jobs.db", busy_timeout).close()  # the jobs table first (a new state_dir)
    return PipelineStore(sqlite=_SqlitePipelines(state_dir / "jobs.db", busy_timeout))
