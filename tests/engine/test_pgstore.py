"""The PostgreSQL store through the real CLI and daemon: schema migration and its check at
start, a daemon running tasks and jobs on it, and a password that shows nowhere."""

from __future__ import annotations

import json
import sys

import pytest

from schedulerd.pgstore.migrate import LATEST
from tests.pgserver import PASSWORD, PgServer

PY = sys.executable


def store_section(server: PgServer, db: str, password: str = "env:SCHEDULERD_TEST_PGPASS") -> str:
    return f"""
[store]
url = "{server.url(db, query='sslmode=disable&application_name=schedulerd-test')}"
password = "{password}"
"""


@pytest.fixture
def pg_site(site, pg_server, monkeypatch):
    """The scratch site; its CLI and daemon get the password from the environment (env:VAR)."""
    monkeypatch.setenv("SCHEDULERD_TEST_PGPASS", PASSWORD)
    return site


def catalog(server: PgServer, db: str) -> list[tuple]:
    return server.sql("SELECT c.relname, c.relkind, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull "
                      "FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                      "LEFT JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped "
                      "WHERE n.nspname = 'public' ORDER BY 1, 3", db)


def test_store_migrate_creates_the_schema_then_is_idempotent(pg_site, pg_server) -> None:
    db = pg_server.database(template="template0")
    pg_site.write(store_section(pg_server, db))
    r = pg_site.console("job:list")
    assert r.returncode == 2 and "no schedulerd schema yet: run `bin/console store:migrate`" in r.stderr
    r = pg_site.console("store:migrate")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == (f"postgresql://schedulerd@127.0.0.1:{pg_server.port}/{db}: "
                                f"schema migrated from version 0 to {LATEST}")
    r = pg_site.console("store:migrate")
    assert r.returncode == 0 and r.stdout.strip().endswith(f"schema version {LATEST}, up to date"), r.stderr
    assert pg_site.console("job:list").returncode == 0
    # schema.sql, applied whole to an empty database, gives what the migrations gave
    from importlib.resources import files

    whole = pg_server.database(template="template0")
    pg_server.sql(files("schedulerd.pgstore").joinpath("schema.sql").read_text(), whole)
    assert catalog(pg_server, whole) == catalog(pg_server, db) != []
    indexes = "SELECT indexname, indexdef FROM pg_indexes WHERE schemaname = 'public' ORDER BY 1"
    assert pg_server.sql(indexes, whole) == pg_server.sql(indexes, db)  # partial indexes' predicates too


def test_a_newer_schema_is_refused_by_the_cli_and_the_daemon(pg_site, pg_server, pg_database) -> None:
    pg_site.write(store_section(pg_server, pg_database) + f"""
[tasks.tick]
type = "command"
period = "1s"
argv = ["{PY}", "-c", "print('tick')"]
""")
    pg_server.sql("INSERT INTO schema_version (version) VALUES (99)", pg_database)
    for args in (["job:list"], ["task:history", "tick"], ["store:migrate"],
                 ["job:add", "command", "--payload", '{"argv": ["true"]}']):
        r = pg_site.console(*args)
        assert r.returncode == 2, (args, r.stderr)
        assert f"has schema version 99, newer than this schedulerd knows ({LATEST})" in r.stderr, (args, r.stderr)
    r = pg_site.console("scheduler:start")
    assert r.returncode == 1 and "the daemon exited at start (status 2)" in r.stderr
    assert "schedulerd cannot start: the store at" in pg_site.log()
    assert f"newer than this schedulerd knows ({LATEST}): run the schedulerd version that migrated it" in pg_site.log()
    assert pg_site.pid() is None or not pg_site.console("scheduler:state", "--short").returncode == 10


def test_daemon_on_postgresql_runs_tasks_and_jobs(pg_site, pg_server, pg_database, tmp_path) -> None:
    out = tmp_path / "ticks"
    pg_site.write(store_section(pg_server, pg_database) + f"""
[tasks.tick]
type = "command"
period = "1s"
argv = ["{PY}", "-c", "open({str(out)!r}, 'a').write('tick\\\\n')"]

[jobs.types.command]
max_attempts = 2
retry_delay = "100ms"

[queues.default]
workers = 2
""")
    pg_site.console("scheduler:start", check=True)
    ids = [int(pg_site.console("job:add", "command", "--payload", json.dumps({"argv": ["true"]}), check=True).stdout)
           for _ in range(3)]
    bad = int(pg_site.console("job:add", "command", "--payload", json.dumps({"argv": ["false"]}), check=True).stdout)
    chained = int(pg_site.console("job:add", "command", "--payload", json.dumps({"argv": ["true"]}),
                                  "--after", str(ids[0]), check=True).stdout)

    def states() -> dict[int, str]:
        return {j["id"]: j["state"] for j in pg_site.json("job:list")}  # type: ignore[union-attr]

    pg_site.wait_for(lambda: states() == {**{i: "finished" for i in (*ids, chained)}, bad: "failed"}, 30, "jobs done")
    pg_site.wait_for(lambda: len(pg_site.json("task:history", "tick")) >= 2, 30, "two iterations of tick")
    history = pg_site.json("task:history", "tick")
    assert {r["outcome"] for r in history} == {"ok"} and out.read_text().count("tick") >= 2
    # the rows are in PostgreSQL, not in SQLite files under state_dir
    assert pg_server.sql("SELECT count(*) FROM jobs", pg_database) == [(5,)]
    assert pg_server.sql("SELECT count(*) >= 2 FROM runs WHERE task = 'tick'", pg_database) == [(True,)]
    assert not (pg_site.var / "state" / "jobs.db").exists() and not (pg_site.var / "state" / "schedulerd.db").exists()
    pg_site.console("scheduler:stop", check=True)
    r = pg_site.console("task:history", "tick", "--json")  # the daemon down: the CLI reads the store
    assert r.returncode == 0 and json.loads(r.stdout), r.stderr
    assert PASSWORD not in pg_site.log()


def test_the_password_shows_nowhere(pg_site, pg_server, pg_database, tmp_path) -> None:
    pg_site.write(store_section(pg_server, pg_database))
    r = pg_site.console("config:check", "--json")
    assert r.returncode == 0 and PASSWORD not in r.stdout + r.stderr
    assert json.loads(r.stdout)["store"]["password"] == "********"
    # a wrong password (from a file): the server's refusal, without the password
    wrong = "Wr0ng-pass-Zq7"
    secret_file = tmp_path / "pgpass"
    secret_file.write_text(wrong + "\n")
    pg_site.write(store_section(pg_server, pg_database, password=f"file:{secret_file}"))
    r = pg_site.console("job:list")
    assert r.returncode == 1 and 'password authentication failed for user "schedulerd"' in r.stderr, r.stderr
    assert wrong not in r.stderr + r.stdout and "sslmode" not in r.stderr
    # the daemon keeps trying (said once in scheduler.log), the password in no line
    r = pg_site.console("scheduler:start", "--wait", "3")
    assert r.returncode == 1 and "did not answer" in r.stderr
    log = pg_site.log()
    assert "checking the store's schema: the store failed" in log and "password authentication failed" in log
    assert wrong not in log and PASSWORD not in log
    # a password inside the URL is refused, naming the key, without echoing it
    url = pg_server.url(pg_database).replace("schedulerd@", f"schedulerd:{PASSWORD}@")
    pg_site.config.write_text(f'[scheduler]\nsocket = "{pg_site.socket}"\n\n[store]\nurl = "{url}"\n')
    for args in (["config:check"], ["job:list"]):
        r = pg_site.console(*args)
        assert r.returncode == 2 and "store.url: holds a password" in r.stderr, r.stderr
        assert PASSWORD not in r.stderr + r.stdout


@pytest.mark.parametrize(("table", "error"), [
    ('url = "mysql://u@h/db"', "store.url: expected a URL starting with postgresql://"),
    ('url = "postgresql://u@h/db?password=Hunter2x"', "store.url: holds a password"),
    ('password = "Hunter2x"', "store.password: is only used with store.url"),
    ('url = "postgresql://u@h/db"\nlease = "0s"', "store.lease: expected a duration above zero"),
    ('url = "postgresql://u@h/db"\npassword = "env:NO_SUCH_VAR_PG"', "environment variable NO_SUCH_VAR_PG is not set"),
    ('urls = "postgresql://u@h/db"', "store.urls: unknown setting (known: lease, password, store_retry, url); did you mean url?"),
])
def test_store_settings_are_checked_at_load(tmp_path, table: str, error: str) -> None:
    from schedulerd.config import load
    from schedulerd.settings import ConfigError

    f = tmp_path / "s.toml"
    f.write_text(f"[store]\n{table}\n")
    with pytest.raises(ConfigError, match=None) as e:
        load(f)
    assert error in str(e.value) and "Hunter2x" not in str(e.value)


def test_store_settings_default_to_sqlite_and_keep_libpq_parameters(tmp_path) -> None:
    from schedulerd.config import load

    f = tmp_path / "s.toml"
    f.write_text("")
    assert load(f).store.url is None
    f.write_text('[store]\nurl = "postgresql://u@h:6543/db?sslmode=verify-full&sslrootcert=/etc/ca.pem"\n'
                 'password = "Hunter2x"\nlease = "30s"\n')
    store = load(f).store
    assert store.url == "postgresql://u@h:6543/db?sslmode=verify-full&sslrootcert=/etc/ca.pem"
    assert (store.lease, store.store_retry, repr(store.password)) == (30.0, 5.0, "Secret('********')")
    assert "Hunter2x" in load(f).secrets()


def round_trips(trace: str) -> int:
    """Requests the client sent, in a libpq trace: each simple Query or extended-protocol Sync
    waits for the server's answer."""
    return sum(1 for line in trace.splitlines() if line.split("\t")[:3:2] in (["F", "Query"], ["F", "Sync"]))


def test_a_claim_is_one_round_trip_and_a_settled_batch_a_few(pg_server, pg_database, tmp_path) -> None:
    """A node's store work per no-op job is its claim and its settle: a claim of several jobs is one
    statement (no BEGIN, no COMMIT, no second read, no check of a quiet pooled connection), and
    a batch of finished attempts is one UPDATE, whatever its size (libpq's own trace counts)."""
    import time

    from psycopg import pq

    from schedulerd.jobstore import Outcome
    from schedulerd.pgstore.jobstore import PgJobStore
    from tests.pgserver import store_settings

    store = PgJobStore(store_settings(pg_server, pg_database), max_size=1)
    try:
        ids = [store.add("noop", "default", {"n": i}) for i in range(30)]
        path = tmp_path / "trace"
        with open(path, "w") as out:
            with store.db.pool.connection() as conn:  # the pool's one connection
                conn.pgconn.trace(out.fileno())
                conn.pgconn.set_trace_flags(pq.Trace.SUPPRESS_TIMESTAMPS)
            claimed = store.claim_many("default", "n1", 20)
            claim_trips = round_trips(path.read_text())
            store.settle_many([Outcome(j.id, "finished", time.time(), f"done {j.id}", None, None, (), node="n1")
                               for j in claimed])
            settle_trips = round_trips(path.read_text()) - claim_trips
            with store.db.pool.connection() as conn:
                conn.pgconn.untrace()
        assert [j.id for j in claimed] == ids[:20] and {j.state.value for j in claimed} == {"running"}
        assert claimed[0].payload == {"n": 0} and claimed[0].attempts == 1 and claimed[0].node == "n1"
        assert claim_trips == 1, path.read_text()
        assert settle_trips <= 4, path.read_text()  # BEGIN, the UPDATE, the queues to wake, COMMIT
        done = store.list(state="finished")
        assert sorted(j.id for j in done) == ids[:20] and {j.summary for j in done} == {f"done {i}" for i in ids[:20]}
    finally:
        store.close()
