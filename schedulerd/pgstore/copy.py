"""`bin/console store:copy`: the embedded SQLite stores (state_dir/schedulerd.db and jobs.db)
into the PostgreSQL store of `[store] url`, in one transaction, ids kept (chains stay chains,
a pipeline run's parts keep their jobs).

A target that already holds tasks, runs, values, jobs, queues or pipeline runs is refused
(NotEmpty) unless `force`, which empties those tables first. Times are seconds since the epoch
in SQLite and timestamptz here (the pipeline tables keep seconds on both). Run it with the daemon
stopped (a job it claims meanwhile would be copied as running, and recovered as interrupted at
the first start on PostgreSQL).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from ..stores import StoreSettings
from . import connect

TABLES = ("tasks", "runs", "kv", "jobs", "job_deps", "job_logs", "queues", "pipeline_runs", "pipeline_steps",
          "pipeline_parts")
RUN_COLUMNS = ("id", "pipeline", "trigger", "state", "step", "steps", "input", "created", "finished", "error", "due")
STEP_COLUMNS = ("run", "step", "name", "state", "items_in", "items_out", "parts", "started", "finished", "error",
                "output", "part_items")
PART_COLUMNS = ("run", "step", "part", "job", "output", "job_state", "job_error")


class NotEmpty(Exception):
    """The PostgreSQL store already holds state; the message says what and how to overwrite it."""


@dataclass(frozen=True)
class Copied:
    counts: dict[str, int]


def _rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    if not path.exists():
        return []
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    except sqlite3.OperationalError as e:
        if "no such table" in str(e):
            return []
        raise
    finally:
        conn.close()


def copy(settings: StoreSettings, state_dir: Path, force: bool) -> Copied:
    state, jobs = state_dir / "schedulerd.db", state_dir / "jobs.db"
    with connect(settings, "store:copy") as conn, conn.transaction(), conn.cursor() as cur:
        present = {t: cur.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # type: ignore[index]
        held = {t: n for t, n in present.items() if n}
        if held and not force:
            what = ", ".join(f"{n} {t}" for t, n in held.items())
            raise NotEmpty(f"the PostgreSQL store is not empty ({what}): store:copy --force replaces them")
        if held:
            cur.execute("TRUNCATE " + ", ".join(TABLES) + " RESTART IDENTITY")
        return Copied(_copy_state(cur, state) | _copy_jobs(cur, jobs) | _copy_pipelines(cur, jobs))


def _columns(path: Path, table: str) -> set[str]:
    return {r[1] for r in _rows(path, f"PRAGMA table_info({table})")}


def _insert(cur: psycopg.Cursor, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
    cur.executemany(f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join(['%s'] * len(columns))})", rows)


def _copy_pipelines(cur: psycopg.Cursor, path: Path) -> dict[str, int]:
    """The pipeline runs, their steps and parts (the parts' jobs are the jobs copied with their
    ids). Times are seconds since the epoch on both sides; a jobs.db made before runs had `due`
    has none (NULL: not a scheduled run's), one made before steps had `part_items` gets it as
    its upgrade would (1 for a step of more than one part: a parallel one), and parts from before
    they kept their deleted job's end have none."""
    have = _columns(path, "pipeline_runs")
    if not have:  # a jobs.db from before pipelines
        return {"pipeline_runs": 0, "pipeline_steps": 0, "pipeline_parts": 0}
    runs = _rows(path, f"SELECT {', '.join(c if c in have else 'NULL' for c in RUN_COLUMNS)} "
                       "FROM pipeline_runs ORDER BY id")
    _insert(cur, "pipeline_runs", RUN_COLUMNS, runs)
    fill = {"part_items": "CASE WHEN parts > 1 THEN 1 END"}
    step_columns = _columns(path, "pipeline_steps")
    steps = _rows(path, f"SELECT {', '.join(c if c in step_columns else fill[c] for c in STEP_COLUMNS)} "
                        "FROM pipeline_steps "
                        "WHERE run IN (SELECT id FROM pipeline_runs) ORDER BY run, step")
    _insert(cur, "pipeline_steps", STEP_COLUMNS, steps)
    part_columns = _columns(path, "pipeline_parts")
    parts = _rows(path, f"SELECT {', '.join(c if c in part_columns else 'NULL' for c in PART_COLUMNS)} "
                        "FROM pipeline_parts "
                        "WHERE (run, step) IN (SELECT run, step FROM pipeline_steps) ORDER BY run, step, part")
    _insert(cur, "pipeline_parts", PART_COLUMNS, parts)
    cur.execute("SELECT setval(pg_get_serial_sequence('pipeline_runs', 'id'), coalesce(max(id), 0) + 1, false) "
                "FROM pipeline_runs")
    return {"pipeline_runs": len(runs), "pipeline_steps": len(steps), "pipeline_parts": len(parts)}


def _copy_state(cur: psycopg.Cursor, path: Path) -> dict[str, int]:
    tasks = _rows(path, "SELECT name, wanted, crashes, runs, failures FROM tasks")
    cur.executemany("INSERT INTO tasks (name, wanted, crashes, runs, failures) VALUES (%s, %s, %s, %s, %s)", tasks)
    runs = _rows(path, "SELECT id, task, started, ended, outcome, error, summary, source FROM runs ORDER BY id")
    cur.executemany("INSERT INTO runs (id, task, started, ended, outcome, error, summary, source) VALUES "
                    "(%s, %s, to_timestamp(%s), to_timestamp(%s), %s, %s, %s, %s)", runs)
    kv = _rows(path, "SELECT key, value FROM kv WHERE value IS NOT NULL")
    cur.executemany("INSERT INTO kv (key, value) VALUES (%s, %s)", kv)
    cur.execute("SELECT setval(pg_get_serial_sequence('runs', 'id'), coalesce(max(id), 0) + 1, false) FROM runs")
    return {"tasks": len(tasks), "runs": len(runs), "kv": len(kv)}


def _copy_jobs(cur: psycopg.Cursor, path: Path) -> dict[str, int]:
    import json

    jobs = _rows(path, "SELECT id, type, queue, payload, title, priority, attempts, max_attempts, next_attempt_at, "
                       "state, done, total, summary, error, created, started, finished, node FROM jobs ORDER BY id")
    cur.executemany(
        "INSERT INTO jobs (id, type, queue, payload, title, priority, attempts, max_attempts, next_attempt_at, state, "
        "done, total, summary, error, created, started, finished, node) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, "
        "to_timestamp(%s), %s, %s, %s, %s, %s, to_timestamp(%s), to_timestamp(%s), to_timestamp(%s), %s)",
        [(*r[:3], Jsonb(json.loads(r[3])), *r[4:]) for r in jobs])
    deps = _rows(path, "SELECT job, dep FROM job_deps WHERE job IN (SELECT id FROM jobs)")
    cur.executemany("INSERT INTO job_deps (job, dep) VALUES (%s, %s)", deps)
    logs = _rows(path, "SELECT job, ts, level, line FROM job_logs WHERE job IN (SELECT id FROM jobs) ORDER BY rowid")
    cur.executemany("INSERT INTO job_logs (job, ts, level, line) VALUES (%s, %s, %s, %s)", logs)
    queues = _rows(path, "SELECT name, paused FROM queues")
    cur.executemany("INSERT INTO queues (name, paused) VALUES (%s, %s)", [(n, bool(p)) for n, p in queues])
    cur.execute("SELECT setval(pg_get_serial_sequence('jobs', 'id'), coalesce(max(id), 0) + 1, false) FROM jobs")
    return {"jobs": len(jobs), "job_deps": len(deps), "job_logs": len(logs), "queues": len(queues)}
