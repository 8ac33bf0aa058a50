"""The shipped full-text indexer (`bin/indexer`): an SQLite FTS5 index of one databox's records.

It speaks phraseanet_indexer's command line (`-h -P -b -u -p --socket
--default-character-set -o ...`) and its control socket (`Q` quits), so the `indexer`
task supervises it exactly like the real one. `-b` names the databox: a configured
databox name (resolved with `--databox-path`, which the task passes, or through the
schedulerd config) or the path of its SQLite file. The index lives beside the databox
in `<databox file>.fts` unless `--index` says otherwise; `record:search` reads it.

Change detection is cheap: `PRAGMA data_version` tells when another connection has
committed to the databox; only then are new records (id above the highest indexed),
records whose `updated` moved past the watermark, and deletions looked for. A full
reconciliation runs every `--full-every` seconds as a safety net.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .settings import DataboxSettings

INDEX_SUFFIX = ".fts"
INDEX_VERSION = "1"
OVERLAP = timedelta(minutes=1)  # re-look at records updated this long before the watermark (clock steps)
DEFAULT_SOCKET_TIMEOUT = 30.0
CHARSETS = ("utf8", "utf8mb4", "utf-8")
MAX_FAILURES = 5  # passes failing in a row before the process gives up (exit 1)


def index_path_for(databox_path: Path | str) -> Path:
    """Where the index of a databox lives by default: `<databox file>.fts`."""
    p = Path(databox_path)
    return p.with_name(p.name + INDEX_SUFFIX)


def tokenizer(stem: bool) -> str:
    return "porter unicode61 remove_diacritics 2" if stem else "unicode61 remove_diacritics 2"


class FulltextError(Exception):
    """The index cannot be built or read: the message says which file and why."""


@dataclass
class PassResult:
    indexed: int = 0
    removed: int = 0
    seconds: float = 0.0
    full: bool = False


def _connect(path: Path, *, timeout: float = 10.0) -> sqlite3.Connection:
    conn = sqlite3.connect(str(path), timeout=timeout, isolation_level=None, check_same_thread=False)
    conn.execute(f"PRAGMA busy_timeout = {int(timeout * 1000)}")
    return conn


class Index:
    """The FTS5 index file, with the databox attached (read only in practice) as `db`."""

    def __init__(self, databox: Path, index: Path, *, stem: bool = False, batch: int = 1000):
        self.databox = Path(databox)
        self.path = Path(index)
        self.stem = stem
        self.batch = batch
        self.conn: sqlite3.Connection | None = None
        self._data_version: int | None = None
        self._last_full: float | None = None  # a full reconciliation is due at the first pass
        self.last_pass: PassResult | None = None
        self.count = 0
        self.watermark = ""

    # --- opening ---------------------------------------------------------------------
    def open(self) -> None:
        if not self.databox.is_file():
            raise FulltextError(f"no databox file at {self.databox}")
        try:
            conn = _connect(self.path)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")  # the index can always be rebuilt
            # mode=rw: never create a databox that is not there; the indexer only reads it
            uri = "file:" + _uri_path(self.databox) + "?mode=rw"
            conn.execute("ATTACH DATABASE ? AS db", (uri,))
            self.conn = conn
            self._schema()
        except sqlite3.DatabaseError as e:
            raise FulltextError(f"cannot open the index {self.path} of databox {self.databox}: {e}") from None

    def _schema(self) -> None:
        c = self.conn
        assert c is not None
        if not c.execute("SELECT 1 FROM db.sqlite_master WHERE type = 'table' AND name = 'records'").fetchone():
            raise FulltextError(f"{self.databox} is not a databox (no records table)")
        c.execute("BEGIN")  # deferred: IMMEDIATE would also take the attached databox's write lock
        try:
            c.execute("CREATE TABLE IF NOT EXISTS main.meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            meta = dict(c.execute("SELECT key, value FROM main.meta").fetchall())
            want = {"version": INDEX_VERSION, "tokenizer": tokenizer(self.stem)}
            if any(meta.get(k) != v for k, v in want.items()):
                # new index, or built with another tokenizer: start over
                c.execute("DROP TABLE IF EXISTS main.fts")
                c.execute("DROP TABLE IF EXISTS main.docs")
                c.execute("DELETE FROM main.meta")
                c.executemany("INSERT INTO main.meta(key, value) VALUES (?, ?)", list(want.items()))
            c.execute("CREATE TABLE IF NOT EXISTS main.docs (record_id INTEGER PRIMARY KEY, updated TEXT NOT NULL)")
            c.execute(
                "CREATE VIRTUAL TABLE IF NOT EXISTS main.fts USING fts5(name, collection, fields, "
                f"tokenize = '{tokenizer(self.stem)}')"
            )
            c.execute("INSERT OR REPLACE INTO main.meta(key, value) VALUES ('databox', ?)", (str(self.databox),))
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise

    def close(self) -> None:
        if self.conn is not None:
            self.conn.close()
            self.conn = None

    # --- state ---------------------------------------------------------------------
    def _meta(self, key: str, default: str = "") -> str:
        assert self.conn is not None
        row = self.conn.execute("SELECT value FROM main.meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def changed(self) -> bool:
        """True when another connection committed to the databox since the last call."""
        assert self.conn is not None
        v: int = self.conn.execute("PRAGMA db.data_version").fetchone()[0]
        changed = v != self._data_version
        self._data_version = v
        return changed

    def status(self) -> dict[str, Any]:
        """From memory only: safe to call while a pass runs in another thread."""
        last = self.last_pass
        return {
            "databox": str(self.databox),
            "index": str(self.path),
            "indexed": self.count,
            "watermark": self.watermark,
            "last_pass": None if last is None else {"indexed": last.indexed, "removed": last.removed,
                                                     "seconds": round(last.seconds, 3), "full": last.full},
        }

    # --- indexing ------------------------------------------------------------------
    def run_pass(self, *, full: bool = False, should_stop: Callable[[], bool] = lambda: False) -> PassResult:
        """Index what changed; commits per batch so a stop request waits for one batch only."""
        assert self.conn is not None
        c = self.conn
        t0 = time.monotonic()
        now_names = {str(k): v for k, v in c.execute("SELECT id, name FROM db.collections").fetchall()}
        collections_now = json.dumps(now_names, sort_keys=True)
        before = json.loads(self._meta("collections") or "{}")
        # a renamed collection changes the text of its records
        renamed = [int(k) for k, v in now_names.items() if k in before and before[k] != v]
        full = full or not before
        res = PassResult(full=full)
        watermark = self._meta("watermark")
        max_id = int(self._meta("max_id", "0") or 0)
        unindexed = ("SELECT r.id FROM db.records r LEFT JOIN main.docs d ON d.record_id = r.id "
                     "WHERE ({}) AND (d.record_id IS NULL OR d.updated IS NOT r.updated) ORDER BY r.id")
        top_updated, top_id = watermark, max_id
        pending: list[int] = []
        interrupted = False

        def index(ids: list[int]) -> None:
            nonlocal top_updated, top_id, interrupted
            for k in range(0, len(ids), self.batch):
                if should_stop():
                    interrupted = True
                    return
                part = ids[k : k + self.batch]
                top_updated = max(top_updated, self._index_batch(part))
                top_id = max(top_id, part[-1])
                res.indexed += len(part)

        if full:
            pending = [r[0] for r in c.execute(unindexed.format("1"))]
        else:
            # new records first (a primary-key range: fast), so they are searchable at once
            index([r[0] for r in c.execute(unindexed.format("r.id > ?"), (max_id,))])
            # then records changed since the watermark (minus an overlap for late commits)
            since = _minus(watermark, OVERLAP)
            candidates = [r[0] for r in c.execute("SELECT id FROM db.records WHERE updated > ? AND id <= ?",
                                                  (since, max_id))]
            for k in range(0, len(candidates), self.batch):
                part = json.dumps(candidates[k : k + self.batch])
                pending += [r[0] for r in c.execute(unindexed.format("r.id IN (SELECT value FROM json_each(?))"),
                                                    (part,))]
        if renamed:
            pending = sorted(set(pending).union(r[0] for r in c.execute(
                "SELECT id FROM db.records WHERE collection_id IN (SELECT value FROM json_each(?))",
                (json.dumps(renamed),))))
        if not interrupted:
            index(pending)
        if not interrupted:  # move the watermarks on
            res.removed = self._remove_deleted(full)
            c.execute("BEGIN")
            try:
                c.executemany("INSERT OR REPLACE INTO main.meta(key, value) VALUES (?, ?)",
                              [("max_id", str(top_id)), ("watermark", top_updated), ("collections", collections_now)])
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
            if full:
                self._last_full = time.monotonic()
        self.count = c.execute("SELECT count(*) FROM main.docs").fetchone()[0]
        self.watermark = top_updated
        res.seconds = time.monotonic() - t0
        self.last_pass = res
        return res

    def _index_batch(self, ids: Sequence[int]) -> str:
        """(Re)index `ids` in one transaction; returns the highest `updated` seen."""
        assert self.conn is not None
        c = self.conn
        rows = c.execute(
            "SELECT r.id, r.updated, r.original_name, c.name, "
            "(SELECT group_concat(f.name || ': ' || f.value, char(10)) FROM db.fields f WHERE f.record_id = r.id) "
            f"{self._document_text} "
            "FROM db.records r LEFT JOIN db.collections c ON c.id = r.collection_id "
            "WHERE r.id IN (SELECT value FROM json_each(?))",
            (json.dumps(list(ids)),),
        ).fetchall()
        top = ""
        c.execute("BEGIN")
        try:
            c.execute("DELETE FROM main.fts WHERE rowid IN (SELECT value FROM json_each(?))", (json.dumps(list(ids)),))
            c.execute("DELETE FROM main.docs WHERE record_id IN (SELECT value FROM json_each(?))", (json.dumps(list(ids)),))
            c.executemany("INSERT INTO main.fts(rowid, name, collection, fields) VALUES (?, ?, ?, ?)",
                          [(r[0], r[2] or "", r[3] or "", "\n".join(filter(None, r[4:6]))) for r in rows])
            c.executemany("INSERT INTO main.docs(record_id, updated) VALUES (?, ?)", [(r[0], r[1]) for r in rows])
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        for r in rows:  # only real times move the watermark: one odd value must not hide later changes
            if r[1] and r[1] > top and _is_time(r[1]):
                top = r[1]
        return top

    @property
    def _document_text(self) -> str:
        """The select-list item giving a record's document text (NULL in a databox without the table)."""
        assert self.conn is not None
        has = self.conn.execute("SELECT 1 FROM db.sqlite_master WHERE type = 'table' AND name = 'document_text'").fetchone()
        return ", (SELECT t.text FROM db.document_text t WHERE t.record_id = r.id)" if has else ", NULL"

    def reindex(self, ids: Sequence[int]) -> int:
        """(Re)index these records now, and drop those of them the databox no longer has."""
        assert self.conn is not None
        for k in range(0, len(ids), self.batch):
            self._index_batch(ids[k : k + self.batch])
        return self.forget_missing(ids)

    def forget_missing(self, ids: Sequence[int]) -> int:
        """Drop from the index those of `ids` the databox no longer has (deleted records)."""
        assert self.conn is not None
        c = self.conn
        gone = [i for (i,) in c.execute("SELECT value FROM json_each(?) WHERE value NOT IN (SELECT id FROM db.records)",
                                        (json.dumps(list(ids)),))]
        if gone:
            c.execute("BEGIN")
            try:
                c.execute("DELETE FROM main.fts WHERE rowid IN (SELECT value FROM json_each(?))", (json.dumps(gone),))
                c.execute("DELETE FROM main.docs WHERE record_id IN (SELECT value FROM json_each(?))", (json.dumps(gone),))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise
        return len(gone)

    def _remove_deleted(self, full: bool) -> int:
        """Drop records gone from the databox; cheap count comparison first."""
        assert self.conn is not None
        c = self.conn
        if not full:
            n_db = c.execute("SELECT count(*) FROM db.records").fetchone()[0]
            n_ix = c.execute("SELECT count(*) FROM main.docs").fetchone()[0]
            if n_db == n_ix:
                return 0
        c.execute("BEGIN")
        try:
            gone = "SELECT record_id FROM main.docs WHERE record_id NOT IN (SELECT id FROM db.records)"
            c.execute(f"DELETE FROM main.fts WHERE rowid IN ({gone})")
            n = c.execute(f"DELETE FROM main.docs WHERE record_id IN ({gone})").rowcount
            c.execute("COMMIT")
        except BaseException:
            c.execute("ROLLBACK")
            raise
        return n

    def due_full(self, every: float) -> bool:
        if self._last_full is None:
            return True
        return every > 0 and time.monotonic() - self._last_full >= every


def open_index(databox: str | Path | DataboxSettings) -> Index:
    """The databox's index, opened with the tokenizer it was built with (so that no stemming
    setting of the caller's rebuilds it): for one-off (re)indexing by jobs. `databox` is its
    SQLite file or its DataboxSettings (a PostgreSQL databox's rows: repository.postgres.PgIndex)."""
    if not isinstance(databox, (str, Path)):
        if databox.url is not None:
            from .postgres import PgIndex

            return PgIndex(databox)  # type: ignore[return-value]  # (PgIndex offers what jobs use of an Index)
        if databox.path is None:
            raise FulltextError("the databox has neither a path nor a url")
        databox = databox.path
    databox = Path(databox)
    path = index_path_for(databox)
    stem = False
    if path.is_file():
        conn = _connect(path)
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'tokenizer'").fetchone()
        except sqlite3.DatabaseError:
            row = None
        finally:
            conn.close()
        stem = row is not None and row[0] == tokenizer(True)
    index = Index(databox, path, stem=stem)
    index.open()
    return index


def _uri_path(p: Path) -> str:
    from urllib.parse import quote

    return quote(str(p.resolve()))


def _is_time(stamp: str) -> bool:
    try:
        datetime.fromisoformat(stamp)
        return True
    except ValueError:
        return False


def _minus(stamp: str, delta: timedelta) -> str:
    """An ISO time `delta` earlier, in the same text form; '' (everything) when unparsable."""
    if not stamp:
        return ""
    try:
        return (datetime.fromisoformat(stamp) - delta).isoformat(timespec="microseconds")
    except ValueError:
        return ""


# --- searching ------------------------------------------------------------------------


@dataclass(frozen=True)
class Hit:
    record_id: int
    name: str
    collection: str
    snippet: str
    rank: float


def fts_query(text: str) -> str:
    """User words to an FTS5 query: every word must match (AND); `word*` is a prefix.

    Each word is quoted, so punctuation in file names (`IMG_0001.jpg`) is never FTS5 syntax.
    """
    terms = []
    for word in text.split():
        prefix = word.endswith("*")
        word = word.rstrip("*")
        if not word:
            continue
        terms.append('"' + word.replace('"', '""') + '"' + ("*" if prefix else ""))
    if not terms:
        raise ValueError("empty query")
    return " AND ".join(terms)


def search_databox(settings: Any, index: Path | None, query: str, *, limit: int = 20, raw: bool = False) -> list[Hit]:
    """Search one databox: its FTS5 index file (SQLite), or its own rows (PostgreSQL: the same
    query syntax, the same records; `raw` FTS5 syntax only on SQLite)."""
    if settings is None or settings.url is None:
        assert index is not None
        return search(index, query, limit=limit, raw=raw)
    if raw:
        raise ValueError("--raw passes FTS5 syntax: only for a SQLite databox (this one is on PostgreSQL)")
    from .postgres import search as pg_search

    try:
        return [Hit(*row) for row in pg_search(settings, query, limit=limit)]
    except ValueError:
        raise
    except Exception as e:  # psycopg's errors: the database did not answer
        raise FulltextError(f"cannot search databox {settings.where}: {str(e).strip()}") from None


def search(index: Path, query: str, *, limit: int = 20, raw: bool = False) -> list[Hit]:
    """Best matches first (bm25); `raw` passes FTS5 query syntax through unchanged."""
    if not Path(index).is_file():
        raise FulltextError(f"no full-text index at {index}: is the indexer task running?")
    match = query if raw else fts_query(query)
    conn = sqlite3.connect("file:" + _uri_path(Path(index)) + "?mode=ro", uri=True, timeout=10)
    try:
        rows = conn.execute(
            "SELECT rowid, name, collection, snippet(fts, -1, '[', ']', '...', 12), bm25(fts) "
            "FROM fts WHERE fts MATCH ? ORDER BY bm25(fts), rowid LIMIT ?",
            (match, int(limit)),
        ).fetchall()
    except sqlite3.OperationalError as e:
        if "fts5" in str(e) or "syntax" in str(e) or "no such column" in str(e):
            raise ValueError(f"bad query {query!r}: {e}") from None
        raise FulltextError(f"cannot read the index {index}: {e}") from None
    finally:
        conn.close()
    return [Hit(r[0], r[1], r[2], r[3], r[4]) for r in rows]


# --- the process ----------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="indexer", add_help=False,
        description="Full-text indexer of a schedulerd databox (phraseanet_indexer's command line).",
    )
    p.add_argument("--help", action="help", help="show this help and exit")
    p.add_argument("-h", "--host", default="127.0.0.1", help="accepted for compatibility (SQLite needs no host)")
    p.add_argument("-P", "--port", type=int, default=3306, help="accepted for compatibility")
    p.add_argument("-b", "--base", required=True, help="databox name (see --databox-path) or its SQLite file")
    p.add_argument("-u", "--user", default="root", help="accepted for compatibility")
    p.add_argument("-p", "--password", default="", help="accepted for compatibility; never printed")
    p.add_argument("-s", "--socket", type=int, default=None, help="control port on 127.0.0.1 (Q quits)")
    p.add_argument("--default-character-set", default="utf8", help="only utf8 is supported")
    p.add_argument("-o", "--old", action="store_true", help="accepted for compatibility")
    p.add_argument("-n", "--nolog", action="store_true", help="accepted for compatibility (output goes to stdout)")
    p.add_argument("-d", "--debug", type=int, default=0, help="debug mask: non-zero prints every pass")
    p.add_argument("-c", "--clng", default=None, help="accepted for compatibility")
    p.add_argument("--stem", default=None, help="any value: English (porter) stemming")
    p.add_argument("--sort-empty", choices=("A", "Z"), default=None, help="accepted for compatibility")
    p.add_argument("--run", action="store_true", help="accepted for compatibility")
    p.add_argument("--databox-path", type=Path, default=None, help="the SQLite file of databox -b")
    p.add_argument("--config", type=Path, default=None, help="schedulerd config to resolve a databox name")
    p.add_argument("--index", type=Path, default=None, help="index file (default: <databox file>.fts)")
    p.add_argument("--interval", type=float, default=0.5, help="seconds between change checks")
    p.add_argument("--full-every", type=float, default=600.0, help="seconds between full reconciliations (0: never)")
    p.add_argument("--batch", type=int, default=1000, help="records per index transaction")
    return p


def resolve_databox(base: str, databox_path: Path | None, config: Path | None) -> Path:
    """`-b`: a path when it has a slash or names a file, else a databox name."""
    if databox_path is not None:
        return databox_path
    if os.sep in base or Path(base).is_file():
        return Path(base)
    from schedulerd.config import load
    from schedulerd.settings import ConfigError

    from .settings import DataboxSettings

    try:
        cfg = load(config)
    except ConfigError as e:
        raise FulltextError(f"cannot resolve databox {base!r}: {e}") from None
    box = cfg.databoxes.get(base)
    if box is None:
        known = ", ".join(sorted(cfg.databoxes)) or "none"
        raise FulltextError(f"unknown databox {base!r} (known: {known}); pass --databox-path or a file path")
    if not isinstance(box, DataboxSettings):  # (the section `databoxes` is repository's own)
        raise FulltextError(f"databox {base!r}: its settings are {type(box).__name__}, not DataboxSettings")
    if box.url is not None or box.path is None:
        raise FulltextError(f"databox {base!r} is on PostgreSQL: its full-text rows are kept on write "
                            "(record:search reads them), no indexer is needed")
    return Path(box.path)


_muted: set[int] = set()


def say(text: str, *, err: bool = False) -> None:
    """One output line; a closed pipe (the supervisor was killed) mutes it instead of killing us:
    the orphan keeps serving until the next supervisor stops it with Q."""
    stream = sys.stderr if err else sys.stdout
    if stream.fileno() in _muted:
        return
    try:
        print(text, file=stream, flush=True)
    except BrokenPipeError:
        _muted.add(stream.fileno())
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, stream.fileno())  # later flushes go nowhere instead of failing
        os.close(devnull)


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.default_character_set.lower() not in CHARSETS:
        print(f"indexer: --default-character-set={args.default_character_set}: only utf8 is supported", file=sys.stderr)
        return 2
    if args.socket is not None and not 1 <= args.socket <= 65535:
        print(f"indexer: --socket={args.socket}: expected a port from 1 to 65535", file=sys.stderr)
        return 2
    if args.batch < 1 or args.interval <= 0:
        print("indexer: --batch and --interval must be positive", file=sys.stderr)
        return 2
    try:
        databox = resolve_databox(args.base, args.databox_path, args.config)
        index = Index(databox, args.index or index_path_for(databox), stem=bool(args.stem), batch=args.batch)
        index.open()
    except FulltextError as e:
        print(f"indexer: {e}", file=sys.stderr)
        return 2
    import anyio

    try:
        return anyio.run(_serve, index, args)
    finally:
        index.close()


async def _serve(index: Index, args: argparse.Namespace) -> int:
    return await _Server(index, args).serve()


class _Server:
    """The indexer process at work: a pass whenever the databox changed (or a full one is due,
    or R asked), until SIGTERM, SIGINT or Q on the control socket; exit status as `main`'s."""

    def __init__(self, index: Index, args: argparse.Namespace):
        import anyio

        self.index, self.args = index, args
        self.stop = anyio.Event()
        self.poke = anyio.Event()  # set: pass now (R, or stopping); replaced by each pass
        self.stopping = False  # read by a running pass, from its thread

    def request_stop(self) -> None:
        self.stopping = True
        self.stop.set()
        self.poke.set()

    async def serve(self) -> int:
        """Listen, then run passes until stopped: 0, 1 after MAX_FAILURES failed passes in a
        row, 2 when the control port is taken."""
        import anyio

        # handlers in place before anything listens: a SIGTERM sent as soon as the port answers must
        # be a clean stop, not the default action (seen under load: killed, status -15)
        with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as received:
            listener = None
            where = ""
            if self.args.socket is not None:  # bound before anything else: a busy port is a failed start (exit 2)
                try:
                    listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=self.args.socket)
                except OSError as e:
                    print(f"indexer: cannot listen on 127.0.0.1:{self.args.socket}: {e.strerror or e}", file=sys.stderr)
                    return 2
                where = f", control socket 127.0.0.1:{self.args.socket}"
            async with anyio.create_task_group() as tg:
                tg.start_soon(self.signals, received)
                if listener is not None:
                    tg.start_soon(listener.serve, self.control)
                say(f"indexer started (pid {os.getpid()}): databox {self.index.databox}, index {self.index.path}{where}")
                failed = await self.passes()
                tg.cancel_scope.cancel()
            if failed:
                return 1
            say("indexer stopped")
            return 0

    async def passes(self) -> bool:
        """Index whenever there is something to, every `--interval` at most; True when
        MAX_FAILURES passes failed in a row (locked or busy: persistent, exit to be restarted)."""
        import anyio

        failures = 0
        while not self.stop.is_set():
            try:
                if await self.pass_if_due():
                    failures = 0
            except sqlite3.OperationalError as e:  # locked or busy: try again
                failures += 1
                say(f"indexer: pass failed ({failures}/{MAX_FAILURES}): {e}", err=True)
                if failures >= MAX_FAILURES:
                    return True
            with anyio.move_on_after(self.args.interval):
                await self.poke.wait()
        return False

    async def pass_if_due(self) -> bool:
        """One pass when a full one is due, the databox changed or one was asked for; says what
        it did when it did something (or with --debug). Returns whether a pass ran."""
        import anyio

        index = self.index
        full = index.due_full(self.args.full_every)
        if not (full or await anyio.to_thread.run_sync(index.changed) or self.poke.is_set()):
            return False
        self.poke = anyio.Event()
        res = await anyio.to_thread.run_sync(
            functools.partial(index.run_pass, full=full, should_stop=lambda: self.stopping))
        if res.indexed or res.removed or self.args.debug:
            say(f"{'full pass' if res.full else 'pass'}: indexed {res.indexed}, removed {res.removed}, "
                f"total {index.count} in {res.seconds:.3f}s")
        return True

    async def signals(self, received: Any) -> None:
        async for sig in received:
            say(f"{signal.Signals(sig).name}: stopping")
            self.request_stop()
            return

    async def control(self, stream: Any) -> None:
        """One control connection: a command a line, until Q, the end of the stream, 4 KiB
        without a newline, or DEFAULT_SOCKET_TIMEOUT seconds of silence."""
        async with stream:
            buf = b""
            while not self.stop.is_set():
                chunk = await _receive(stream)
                if chunk is None:
                    return
                buf += chunk
                if len(buf) > 4096:
                    return
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if not await self.answer(stream, line.strip().decode("ascii", "replace").upper()):
                        return

    async def answer(self, stream: Any, cmd: str) -> bool:
        """Answer Q (quit), S (status) or R (index now); False ends the connection."""
        import anyio

        try:
            if cmd == "Q":
                say("Q received on the control socket: stopping")
                await stream.send(b"bye\r\n")
                self.request_stop()
                return False
            if cmd == "S":
                await stream.send(json.dumps(self.index.status()).encode() + b"\r\n")
            elif cmd == "R":
                self.poke.set()
                await stream.send(b"ok\r\n")
            elif cmd:
                await stream.send(b"unknown command (Q quit, S status, R index now)\r\n")
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            return False
        return True


async def _receive(stream: Any) -> bytes | None:
    """The next bytes of a control connection; None when it ended or stayed silent too long."""
    import anyio

    with anyio.move_on_after(DEFAULT_SOCKET_TIMEOUT):
        try:
            chunk: bytes = await stream.receive(1024)
            return chunk
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return None
    return None


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
