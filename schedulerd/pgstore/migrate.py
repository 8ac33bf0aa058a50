"""Create or migrate the schema (`bin/console store:migrate`) and check it at start.

The migrations after the database's version run in order (all of them on an empty database),
in one transaction under an advisory lock: two migrators at once wait for each other, and a
failed migration leaves the schema as it was. schema.sql is the result, whole, for readers (a
test checks that both give the same tables).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib.resources import files

import psycopg

from ..stores import SchemaMismatch, StoreSettings
from . import connect, describe, run

LOCK_KEY = 0x5C4ED01D  # pg_advisory_xact_lock key of store:migrate
_FILE = re.compile(r"^(\d{4})_\w+\.sql$")


def migrations() -> dict[int, str]:
    """{version: SQL} of migrations/NNNN_*.sql, numbered 1, 2, ... without gaps."""
    found = {}
    for f in files(__package__).joinpath("migrations").iterdir():
        m = _FILE.match(f.name)
        if m:
            found[int(m.group(1))] = f.read_text(encoding="utf-8")
    assert sorted(found) == list(range(1, len(found) + 1)), f"migrations are not numbered 1..n: {sorted(found)}"
    return found


LATEST = len(migrations())  # the schema version this program knows


def version(conn: psycopg.Connection) -> int:
    """The schema's version; 0 for a database without schedulerd's tables."""
    with conn.cursor() as cur:
        if not run(cur, "schema_table").fetchone()[0]:  # type: ignore[index]
            return 0
        return int(run(cur, "schema_version").fetchone()[0])  # type: ignore[index]


def mismatch(found: int, url: str) -> SchemaMismatch | None:
    where = f"the store at {describe(url)}"
    if found == 0:
        return SchemaMismatch(f"{where} has no schedulerd schema yet: run `bin/console store:migrate`")
    if found < LATEST:
        return SchemaMismatch(f"{where} has schema version {found}, this schedulerd needs {LATEST}: "
                              "run `bin/console store:migrate`")
    if found > LATEST:
        return SchemaMismatch(f"{where} has schema version {found}, newer than this schedulerd knows ({LATEST}): "
                              "run the schedulerd version that migrated it, or upgrade this one")
    return None


def check(settings: StoreSettings) -> None:
    assert settings.url is not None
    with connect(settings) as conn:
        found = version(conn)
    error = mismatch(found, settings.url)
    if error is not None:
        raise error


@dataclass(frozen=True)
class Migrated:
    before: int
    after: int


def migrate(settings: StoreSettings) -> Migrated:
    """Bring the schema to LATEST; idempotent. A newer schema is refused, untouched."""
    assert settings.url is not None
    with connect(settings, "store:migrate") as conn, conn.transaction(), conn.cursor() as cur:
        run(cur, "migration_lock", key=LOCK_KEY)
        before = version(conn)
        if before > LATEST:
            error = mismatch(before, settings.url)
            assert error is not None
            raise error
        for n, sql in sorted(migrations().items()):
            if n > before:
                cur.execute(sql)
                run(cur, "record_version", version=n)
    return Migrated(before, LATEST)
