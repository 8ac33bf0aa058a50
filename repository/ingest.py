"""Crash-safe ingest of hotfolder files into a databox, journaled batch by batch.

For every batch, in this order:

1. the journal (SQLite, durable commit) lists each file with a fresh token and the
   storage name its document will get;
2. each source is opened without following symlinks, checked unchanged, hashed;
   its document is either the source itself, renamed into storage ("move": same
   filesystem, nobody else links to it, no copy kept) or a copy ("copy");
3. one syncfs makes the documents durable;
4. one databox transaction inserts the records, each carrying its token;
5. sources still in the hotfolder (copy mode) and captions are moved to
   `<hotfolder>_archived` or removed;
6. the journal entries are dropped.

`recover()` runs before anything else: a token found in the databox means the
record was committed, so step 5 is finished; a token not found means it was not,
so a moved document goes back to the hotfolder and a copy is deleted. Either
way a `kill -9` at any instant leaves each file in the hotfolder, archived once,
or in `_error` — never lost, never twice.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import errno
import json
import logging
import os
import sqlite3
import stat as st
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Literal

from schedulerd.plugin import TaskLog

from .databox import Databox, display_name
from .fields import now_iso
from .hotfolder import _FILE_FLAGS, FileStat, Tree, split
from .model import NewRecord
from .storage import SourceError, StorageError, guess_mime, hash_fd

Duplicates = Literal["allow", "skip", "error"]
PARALLEL_MIN_SIZE = 4 << 20  # files at least this big are hashed by several threads
_DIR_OPEN = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
_NOATIME = getattr(os, "O_NOATIME", 0)  # reading a source need not dirty its inode (owner or root only)
_WORKERS = min(4, os.cpu_count() or 1)

# Crash injection for tests: SCHEDULERD_CRASH_AT="point[:n]" kills the process with
# SIGKILL the n-th time (default 1st) execution reaches `point`.
_CRASH_AT = os.environ.get("SCHEDULERD_CRASH_AT", "")
_crash_counts: dict[str, int] = {}


def crashpoint(name: str) -> None:
    if not _CRASH_AT:
        return
    point, _, nth = _CRASH_AT.partition(":")
    if point != name:
        return
    _crash_counts[name] = _crash_counts.get(name, 0) + 1
    if _crash_counts[name] >= int(nth or 1):
        os.kill(os.getpid(), 9)


# --- the journal ------------------------------------------------------------------


class Journal:
    """Pending ingest batches and files left in place after an error, in one SQLite file.

    A batch is one row (its entries as JSON: file names keep their odd bytes as
    surrogate escapes), so journaling 1,000 files costs one small durable commit."""

    Entry = tuple[str, str, int, "str | None", "int | None", str, str]  # token, src, ino, caption, cap_ino, doc, mode

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False, timeout=10)
        self._conn.execute("PRAGMA journal_mode = WAL")
        self._conn.execute("PRAGMA synchronous = FULL")
        self._conn.executescript(
            """
            CREATE TABLE IF NOT EXISTS batches (
                id      INTEGER PRIMARY KEY,
                entries TEXT NOT NULL,
                created REAL NOT NULL
            );
            CREATE TABLE IF NOT EXISTS failed (
                src      BLOB PRIMARY KEY,
                ino      INTEGER NOT NULL,
                size     INTEGER NOT NULL,
                mtime_ns INTEGER NOT NULL,
                reason   TEXT NOT NULL,
                at       REAL NOT NULL
            );
            """
        )

    def close(self) -> None:
        self._conn.close()

    def add(self, entries: Sequence[Journal.Entry]) -> int:
        """Durably record a batch before touching any of its files; returns its id."""
        cur = self._conn.execute("INSERT INTO batches(entries, created) VALUES (?, ?)",
                                 (json.dumps(entries, separators=(",", ":")), time.time()))
        if cur.lastrowid is None:  # (an INSERT sets it: never seen)
            raise sqlite3.DatabaseError(f"journal {self.path}: the batch got no id")
        return cur.lastrowid

    def pending(self) -> list[tuple[int, list[Journal.Entry]]]:
        return [(bid, [tuple(e) for e in json.loads(text)])
                for bid, text in self._conn.execute("SELECT id, entries FROM batches ORDER BY id")]

    def done(self, batch_ids: Sequence[int]) -> None:
        """Forget finished batches; losing this commit only makes recovery redo a no-op."""
        if not batch_ids:
            return
        c = self._conn
        c.execute("PRAGMA synchronous = NORMAL")
        try:
            c.executemany("DELETE FROM batches WHERE id = ?", [(b,) for b in batch_ids])
        finally:
            c.execute("PRAGMA synchronous = FULL")

    def count(self) -> int:
        n: int = self._conn.execute("SELECT count(*) FROM batches").fetchone()[0]
        return n

    # failed files, left in place (move_error = false): not retried while unchanged

    def failed_keys(self) -> dict[str, tuple[int, int, int]]:
        return {os.fsdecode(s): (i, z, m) for s, i, z, m in self._conn.execute("SELECT src, ino, size, mtime_ns FROM failed")}

    def add_failed(self, rel: str, fs: FileStat, reason: str) -> None:
        self._conn.execute(
            "INSERT OR REPLACE INTO failed(src, ino, size, mtime_ns, reason, at) VALUES (?,?,?,?,?,?)",
            (os.fsencode(rel), fs.ino, fs.size, fs.mtime_ns, reason, time.time()),
        )

    def drop_failed(self, rels: Sequence[str]) -> None:
        if rels:
            self._conn.executemany("DELETE FROM failed WHERE src = ?", [(os.fsencode(r),) for r in rels])


# --- units of work ------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Unit:
    """One document to archive (with its caption sidecar, if any)."""

    rel: str
    stat: FileStat
    collection_id: int
    status: int
    fields: Mapping[str, str] = dataclasses.field(default_factory=dict)
    caption: str | None = None
    caption_stat: FileStat | None = None


@dataclasses.dataclass
class BatchResult:
    created: list[tuple[int, str]] = dataclasses.field(default_factory=list)  # (record id, source path)
    skipped: list[tuple[str, int]] = dataclasses.field(default_factory=list)  # (source, duplicate of record)
    errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)  # (source, why)
    changed: list[str] = dataclasses.field(default_factory=list)  # changed or vanished under us: left as is


@dataclasses.dataclass(slots=True)
class _Work:
    unit: Unit
    token: str
    doc: str
    mode: str
    sha256: str = ""
    size: int = 0
    mime: str = ""
    stored: bool = False  # a document file exists in storage for it


class Ingestor:
    """Archives units into a databox; sources and captions end archived, in error, or untouched."""

    def __init__(
        self,
        db: Databox,
        hot: Tree,
        journal: Journal,
        *,
        archived: Tree | None,
        error: Tree | None,
        duplicates: Duplicates = "allow",
        log: TaskLog | None = None,
        on_failed: Callable[[str, str, str | None], None] | None = None,
    ):
        self.db = db
        self.hot = hot
        self.journal = journal
        self.archived = archived
        self.error = error
        self.duplicates = duplicates
        self.log = log or logging.getLogger("schedulerd.archive")
        self.on_failed = on_failed
        self._storage_dev: int | None = None
        self._doc_fds: dict[str, int] = {}  # storage folder -> fd, for the life of one batch
        self._noatime = _NOATIME  # dropped for the rest of a batch at the first file we do not own

    # --- helpers ---------------------------------------------------------------------

    def can_move(self, fs: FileStat) -> bool:
        """A document can be the source itself: no copy to keep, nobody else links to it,
        and it lives on the storage's filesystem (a sub-folder may be another mount)."""
        if self.archived is not None or fs.nlink != 1:
            return False
        if self._storage_dev is None:
            self._storage_dev = os.stat(self.db.store.ensure_dir("")).st_dev
        return fs.dev == self._storage_dev

    def _same_file(self, rel: str, ino: int | None) -> bool:
        try:
            s = self.hot.lstat(rel)
        except OSError:
            return False
        return st.S_ISREG(s.st_mode) and (ino is None or s.st_ino == ino)

    def finish_source(self, rel: str, ino: int | None) -> None:
        """An archived file leaves the hotfolder: to `_archived` (same sub-path) or deleted."""
        if not self._same_file(rel, ino):
            return
        if self.archived is None:
            self.hot.unlink(rel)
            return
        try:
            self.hot.move_to(rel, self.archived, rel)
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            self._copy_across(rel, self.archived)
            self.hot.unlink(rel)

    def _copy_across(self, rel: str, other: Tree) -> str:
        target = other.free_name(rel)
        src = self.hot.open_file(rel)
        try:
            d, n = split(target)
            dfd = other.dir_fd(d, create=True)
            tmp = f".{n}.part"
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644, dir_fd=dfd)
            try:
                while chunk := os.read(src, 1 << 20):
                    os.write(out, chunk)
                os.fsync(out)
            finally:
                os.close(out)
            os.rename(tmp, n, src_dir_fd=dfd, dst_dir_fd=dfd)
        finally:
            os.close(src)
        return target

    def fail(self, rel: str, reason: str, *, caption: str | None = None, stat: FileStat | None = None) -> str | None:
        """A file that cannot be archived: into `_error` with `.error.txt`, or left and remembered.

        Returns where it went (None when left in place or gone)."""
        if self.error is None:
            if stat is None:
                try:
                    stat = FileStat.of(self.hot.lstat(rel))
                except OSError:
                    return None
            self.journal.add_failed(rel, stat, reason)
            if self.on_failed:
                self.on_failed(rel, reason, None)
            return None
        try:
            self.hot.lstat(rel)
        except FileNotFoundError:
            return None
        target = self.error.free_name(rel)
        text = f"{display_name(rel)}\n{now_iso()}\n{reason}\n"
        self.error.write_atomic(target + ".error.txt", text.encode("utf-8", "backslashreplace"))
        d, n = split(rel)
        td, tn = split(target)
        try:
            os.rename(n, tn, src_dir_fd=self.hot.dir_fd(d), dst_dir_fd=self.error.dir_fd(td, create=True))
        except FileNotFoundError:  # gone meanwhile: nothing to report
            with contextlib.suppress(OSError):
                self.error.unlink(target + ".error.txt")
            return None
        except OSError as e:
            if e.errno != errno.EXDEV:
                raise
            self._copy_across(rel, self.error)
            self.hot.unlink(rel)
        if caption and self._same_file(caption, None):
            try:
                self.hot.move_to(caption, self.error, caption)
            except OSError as e:
                self.log.warning("cannot move caption %s to the error folder: %s", display_name(caption), e.strerror)
        if self.on_failed:
            self.on_failed(rel, reason, target)
        return target

    # --- recovery --------------------------------------------------------------------

    def recover(self) -> tuple[int, int]:
        """Finish or undo whatever a crash interrupted; returns (finished, undone)."""
        batches = self.journal.pending()
        if not batches:
            return (0, 0)
        committed = self.db.committed_tokens([e[0] for _, entries in batches for e in entries])
        finished = undone = 0
        for _, entries in batches:
            for token, src, ino, caption, cap_ino, doc, mode in entries:
                if token in committed:
                    if mode == "copy":
                        self.finish_source(src, ino)
                    if caption:
                        self.finish_source(caption, cap_ino)
                    finished += 1
                elif mode == "move":
                    path = self.db.store.path_str(doc)
                    try:
                        s = os.stat(path, follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if s.st_ino == ino:
                        d, n = split(self.hot.free_name(src))
                        os.rename(path, n, dst_dir_fd=self.hot.dir_fd(d, create=True))
                        undone += 1
                else:
                    self.db.store.remove(doc)
                    self.db.store.remove(f".tmp/{token}")
                    undone += 1
        self.journal.done([bid for bid, _ in batches])
        if finished or undone:
            self.log.info("recovered an interrupted ingest: %d finished, %d undone", finished, undone)
        return (finished, undone)

    # --- one batch -------------------------------------------------------------------

    def ingest(self, units: Sequence[Unit]) -> BatchResult:
        """Archive `units` (one journal entry each, one transaction); StorageError aborts the
        batch with nothing half-done: sources stay where they were."""
        res = BatchResult()
        prefix = os.urandom(10).hex()  # + a counter: unique tokens without a syscall each
        work = [
            _Work(u, tok, self.db.store.new_name(split(u.rel)[1], tok), "move" if self.can_move(u.stat) else "copy")
            for i, u in enumerate(units)
            for tok in (f"{prefix}{i:05x}",)
        ]
        if not work:
            return res
        self._noatime = _NOATIME
        batch_id = self.journal.add([(w.token, w.unit.rel, w.unit.stat.ino, w.unit.caption,
                                      w.unit.caption_stat.ino if w.unit.caption_stat else None, w.doc, w.mode)
                                     for w in work])
        crashpoint("journaled")
        try:
            self._ingest(work, res)
        except BaseException:
            self._undo(work)
            raise
        finally:
            self._close_doc_dirs()
        self.journal.done([batch_id])
        return res

    def _doc_dir(self, rel_dir: str) -> int:
        """An fd on a storage folder: documents are renamed and checked relative to it
        (no path walk from / for each of thousands of files)."""
        fd = self._doc_fds.get(rel_dir)
        if fd is None:
            path = self.db.store.ensure_dir(rel_dir)
            try:
                fd = os.open(path, _DIR_OPEN)
            except OSError as e:
                raise StorageError(e.errno, f"cannot open storage folder {path}: {e.strerror}") from None
            self._doc_fds[rel_dir] = fd
        return fd

    def _close_doc_dirs(self) -> None:
        fds, self._doc_fds = self._doc_fds, {}
        for fd in fds.values():
            os.close(fd)

    def _undo(self, work: Sequence[_Work]) -> None:
        """Nothing was committed: put everything back as it was, then forget the batch."""
        try:
            self.recover()
        except Exception as e:  # the journal still holds the batch: the next pass retries
            self.log.error("cannot undo the interrupted batch yet: %s", e)

    def _ingest(self, work: list[_Work], res: BatchResult) -> None:
        """Archive one batch, step by step (crash points between: tests/tasks/test_archive.py): read and
        hash, set duplicates aside, store the documents and commit their records, then let the
        sources leave the hotfolder."""
        hashed, failed = self._hash_all(work, res)
        crashpoint("hashed")
        keep, skip, twins = self._set_duplicates_aside(hashed)
        failed += twins
        keep = self._store_and_commit(keep, res)
        crashpoint("committed")
        self._after_commit(keep, skip, failed, res)
        crashpoint("before_done")

    def _hash_all(self, work: list[_Work], res: BatchResult) -> tuple[list[_Work], list[tuple[_Work, str]]]:
        """Read (copy mode: copy into storage) and hash every unit: those read whole, and those
        that cannot be read with why; the ones that changed since the scan go to `res.changed`."""
        failed: list[tuple[_Work, str]] = []
        hashed: list[_Work] = []
        for w, why in zip(work, self._read_all(work), strict=True):
            if why == "changed":
                res.changed.append(w.unit.rel)
            elif why:
                failed.append((w, why))
            else:
                hashed.append(w)
        return hashed, failed

    def _known_sha256(self, hashed: list[_Work]) -> dict[tuple[int, str], int]:
        """(collection id, sha256) -> the lowest record id with it, for the batch's checksums."""
        by_coll: dict[int, list[str]] = {}
        for w in hashed:
            by_coll.setdefault(w.unit.collection_id, []).append(w.sha256)
        dups: dict[tuple[int, str], int] = {}
        for cid, shas in by_coll.items():
            for sha, rid in self.db.find_by_sha256(cid, shas).items():
                dups[(cid, sha)] = rid
        return dups

    def _set_duplicates_aside(
        self, hashed: list[_Work],
    ) -> tuple[list[_Work], list[tuple[_Work, int]], list[tuple[_Work, str]]]:
        """With `duplicates` skip or error, the units whose content is in their collection
        already (or earlier in this batch) leave the batch (a copy in storage is removed):
        returns those to archive, those to skip (with the record they duplicate, 0: one of
        this batch) and those that are errors (with why)."""
        if self.duplicates == "allow":
            return hashed, [], []
        dups = self._known_sha256(hashed) if hashed else {}
        keep: list[_Work] = []
        skip: list[tuple[_Work, int]] = []
        failed: list[tuple[_Work, str]] = []
        seen: dict[tuple[int, str], _Work] = {}
        for w in hashed:
            key = (w.unit.collection_id, w.sha256)
            other = dups.get(key)
            if other is None and key in seen:
                other = 0  # a twin in this very batch
            if other is None:
                seen[key] = w
                keep.append(w)
                continue
            if w.stored:
                self.db.store.remove(w.doc)
                w.stored = False
            if self.duplicates == "skip":
                skip.append((w, other))
            else:
                twin = f"record {other}" if other else f"{display_name(seen[key].unit.rel)} (same batch)"
                failed.append((w, f"duplicate of {twin}: same sha256 {w.sha256} in this collection"))
        return keep, skip, failed

    def _store_and_commit(self, keep: list[_Work], res: BatchResult) -> list[_Work]:
        """Move-mode sources go into storage now (those that changed meanwhile stay, in
        `res.changed`); storage is synced, then the records are inserted in one transaction
        (`res.created`). Returns the units archived."""
        for w in keep:
            if w.mode == "move" and not self._move_in(w):
                res.changed.append(w.unit.rel)
        keep = [w for w in keep if w.stored]
        crashpoint("stored")
        if keep:
            self.db.store.sync()
        crashpoint("synced")
        if keep:
            ids = self.db.insert_ingested([
                NewRecord(w.unit.collection_id, n if n.isascii() else display_name(n) or "", w.doc, w.size,
                          w.sha256, w.mime, w.unit.status, dict(w.unit.fields), w.token)
                for w in keep
                for n in (w.unit.rel.rpartition("/")[2],)
            ])
            res.created = [(rid, w.unit.rel) for rid, w in zip(ids, keep, strict=True)]
        return keep

    def _after_commit(self, keep: list[_Work], skip: list[tuple[_Work, int]], failed: list[tuple[_Work, str]],
                      res: BatchResult) -> None:
        """Sources and captions leave the hotfolder: the archived ones and the skipped
        duplicates (removed, or kept in the archived folder), the failed ones to the error folder."""
        for w in keep:
            if w.mode == "copy":
                self.finish_source(w.unit.rel, w.unit.stat.ino)
            if w.unit.caption:
                self.finish_source(w.unit.caption, w.unit.caption_stat.ino if w.unit.caption_stat else None)
            crashpoint("finished")
        for w, other in skip:
            self.finish_source(w.unit.rel, w.unit.stat.ino)
            if w.unit.caption:
                self.finish_source(w.unit.caption, w.unit.caption_stat.ino if w.unit.caption_stat else None)
            res.skipped.append((w.unit.rel, other))
        for w, why in failed:
            self.fail(w.unit.rel, why, caption=w.unit.caption, stat=w.unit.stat)
            res.errors.append((w.unit.rel, why))

    def _read_all(self, work: list[_Work]) -> list[str | None]:
        """`_read` every unit; big files are hashed by a few threads at once (hashlib and the
        syscalls release the GIL), small ones in this thread (threads would only add cost)."""
        whys: list[str | None] = [None] * len(work)
        big: list[tuple[int, tuple[int, os.stat_result]]] = []  # (index in work, what _open gave)
        try:
            for i, w in enumerate(work):
                opened = self._open(w)
                if isinstance(opened, str):
                    whys[i] = opened
                elif w.unit.stat.size >= PARALLEL_MIN_SIZE and _WORKERS > 1:
                    big.append((i, opened))
                else:
                    whys[i] = self._digest(w, *opened)
        except BaseException:
            for _, (fd, _) in big:
                os.close(fd)
            raise
        if big:
            with concurrent.futures.ThreadPoolExecutor(_WORKERS, thread_name_prefix="archive-hash") as pool:
                done = pool.map(lambda item: self._digest(work[item[0]], *item[1]), big)
                for (i, _), why in zip(big, done, strict=True):
                    whys[i] = why
        return whys

    def _open(self, w: _Work) -> tuple[int, os.stat_result] | str:
        """An fd on the unit's source, never through a symlink, and its stat (the Tree's fd
        cache is only used from this thread)."""
        d, _, n = w.unit.rel.rpartition("/")
        try:
            try:
                fd = os.open(n, _FILE_FLAGS | self._noatime, dir_fd=self.hot.dir_fd(d))
            except PermissionError as e:
                if not self._noatime or e.errno != errno.EPERM:
                    raise
                self._noatime = 0  # O_NOATIME on a file owned by someone else: EPERM
                fd = os.open(n, _FILE_FLAGS, dir_fd=self.hot.dir_fd(d))
        except FileNotFoundError:
            return "changed"
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.EINVAL, errno.ENOTDIR):
                return "changed"  # replaced by a symlink or something else since the scan
            return f"cannot read: {e.strerror}"
        try:
            b = os.fstat(fd)
        except OSError as e:
            os.close(fd)
            return f"cannot read: {e.strerror}"
        if not st.S_ISREG(b.st_mode):
            os.close(fd)
            return "changed"  # a FIFO, a device... swapped in since the scan
        return fd, b

    def _digest(self, w: _Work, fd: int, b: os.stat_result) -> str | None:
        """Check unchanged, hash (copy mode: copy as well), close. Returns why not, or None."""
        fs = w.unit.stat
        try:
            if (b.st_ino, b.st_size, b.st_mtime_ns, b.st_ctime_ns) != fs.key:
                return "changed"
            if w.mode == "copy":
                digest = self.db.store.copy_in(fd, w.doc, w.token, fsync=False)
                w.stored = True
                a = os.fstat(fd)
            else:
                digest = hash_fd(fd, b.st_size)
                # a moved document is stat'ed again once renamed (ino, size, mtime: see _move_in),
                # later than a check here could be; one is still needed when it may not be moved
                a = b if self.duplicates == "allow" else os.fstat(fd)
        except SourceError as e:
            return f"cannot read: {e.strerror}"
        finally:
            os.close(fd)
        if a.st_size != b.st_size or a.st_mtime_ns != b.st_mtime_ns or digest.size != b.st_size:
            if w.stored:
                self.db.store.remove(w.doc)
                w.stored = False
            return "changed"
        w.sha256, w.size = digest.sha256, digest.size
        w.mime = guess_mime(split(w.unit.rel)[1], digest.head)
        return None

    def _move_in(self, w: _Work) -> bool:
        """Rename the source into storage, then check the renamed file is the one hashed:
        same inode, size and mtime. False when it changed or vanished (left in the hotfolder)."""
        d, _, n = w.unit.rel.rpartition("/")
        dd, _, dn = w.doc.rpartition("/")
        dfd = self._doc_dir(dd)
        try:
            os.rename(n, dn, src_dir_fd=self.hot.dir_fd(d), dst_dir_fd=dfd)
        except FileNotFoundError:
            return False
        except OSError as e:
            if e.errno == errno.EXDEV:  # another mount after all (bind mounts): copy from now on
                self._storage_dev = -1
                return False
            raise StorageError(e.errno, f"cannot move {display_name(w.unit.rel)} into storage "
                                        f"{self.db.store.path_str(dd)}: {e.strerror}") from None
        w.stored = True
        s = os.stat(dn, dir_fd=dfd, follow_symlinks=False)
        if s.st_ino != w.unit.stat.ino or s.st_size != w.size or s.st_mtime_ns != w.unit.stat.mtime_ns:
            # changed or replaced between the hash and the rename: put it back untouched
            hd, hn = split(self.hot.free_name(w.unit.rel))
            os.rename(dn, hn, src_dir_fd=dfd, dst_dir_fd=self.hot.dir_fd(hd, create=True))
            w.stored = False
            return False
        mode = st.S_IMODE(s.st_mode)
        if mode & 0o022:  # a document writable by others (a share's 0666) must not stay so
            try:
                os.chmod(dn, mode & ~0o022, dir_fd=dfd)
            except OSError:
                pass
        return True
