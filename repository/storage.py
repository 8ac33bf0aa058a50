"""The storage folder of a databox: documents written atomically, hashed while written.

Documents live at `storage/YYYY/MM/DD/<token>.<ext>`: unique names (never
overwritten), few files per folder, and a name that says nothing about the
original (kept in the record). Temporary files go to `storage/.tmp/` on the same
filesystem so the final rename is atomic.
"""

from __future__ import annotations

import functools
import hashlib
import mimetypes
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from schedulerd.durable import SYNCFS, fsync_dir  # noqa: F401  (fsync_dir is part of this module's API)

CHUNK = 1 << 20
TMP = ".tmp"

_SNIFF: tuple[tuple[bytes, int, str], ...] = (  # (magic, offset, type); offsets are all 0
    (b"\xff\xd8\xff", 0, "image/jpeg"),
    (b"\x89PNG\r\n\x1a\n", 0, "image/png"),
    (b"GIF87a", 0, "image/gif"),
    (b"GIF89a", 0, "image/gif"),
    (b"%PDF-", 0, "application/pdf"),
    (b"II*\x00", 0, "image/tiff"),
    (b"MM\x00*", 0, "image/tiff"),
    (b"8BPS", 0, "image/vnd.adobe.photoshop"),
    (b"PK\x03\x04", 0, "application/zip"),
    (b"\x1aE\xdf\xa3", 0, "video/webm"),
    (b"OggS", 0, "application/ogg"),
    (b"ID3", 0, "audio/mpeg"),
    (b"fLaC", 0, "audio/flac"),
)


class StorageError(OSError):
    """Writing to the storage folder failed: the environment's fault, not the document's."""


@dataclass(frozen=True)
class Digest:
    sha256: str
    size: int
    head: bytes  # first bytes, for the MIME sniff


_BY_FIRST: dict[int, tuple[tuple[bytes, str], ...]] = {}
for _magic, _offset, _mime in _SNIFF:
    _BY_FIRST[_magic[0]] = _BY_FIRST.get(_magic[0], ()) + ((_magic, _mime),)
_CONTAINERS = ("application/zip", "image/tiff")  # the extension says more (docx, dng, ...)


def _sniff(head: bytes) -> str | None:
    for magic, mime in _BY_FIRST.get(head[0], ()) if head else ():
        if head.startswith(magic):
            return mime
    return None


def guess_mime(name: str, head: bytes) -> str:
    """From the first bytes when they are conclusive, else from the name's extension."""
    sniffed = _sniff(head)
    if sniffed and sniffed not in _CONTAINERS:
        return sniffed
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "image/webp"
    if head[:4] == b"RIFF" and head[8:12] == b"WAVE":
        return "audio/wav"
    if head[4:8] == b"ftyp":
        brand = head[8:12]
        if brand in (b"heic", b"heix", b"mif1"):
            return "image/heic"
        if brand.startswith(b"qt"):
            return "video/quicktime"
        return "video/mp4"
    guessed = _by_extension(os.path.splitext(name)[1])
    return guessed or sniffed or "application/octet-stream"


@functools.lru_cache(maxsize=512)
def _by_extension(ext: str) -> str | None:
    """Cached on the extension as written (`.JPG`): once per kind of file, not per file."""
    return mimetypes.guess_type("x" + ext.lower(), strict=False)[0] if ext else None


_SAFE_EXT = re.compile(r"\.[a-z0-9]{1,10}")


def safe_extension(name: str) -> str:
    """`photo.JPG` -> `.jpg`; odd extensions are dropped, never copied into storage names."""
    return _safe_extension(os.path.splitext(name)[1])


@functools.lru_cache(maxsize=512)
def _safe_extension(ext: str) -> str:
    ext = ext.lower()
    return ext if _SAFE_EXT.fullmatch(ext) else ""


def hash_fd(fd: int, expected: int = -1) -> Digest:
    """Hash an open file from offset 0 to its end. With the `expected` size, a small file
    takes one read: a short read of a regular file is its end."""
    if 0 <= expected < CHUNK:  # the common small file: one read, no loop
        try:
            data = os.pread(fd, expected + 1, 0)
        except OSError as e:
            raise SourceError(e.errno, f"cannot read: {e.strerror}") from None
        if len(data) <= expected:
            return Digest(hashlib.sha256(data).hexdigest(), len(data), data[:64])
        # it grew since its stat: read it all below (the caller sees the size differ)
    first = CHUNK if expected < 0 or expected >= CHUNK else expected + 1
    return _digest(_chunks(fd, first, "cannot read", stop_short=True))


_syncfs = SYNCFS


def sync_filesystem(path: Path | str) -> None:
    """Make everything written on `path`'s filesystem durable: one syncfs(2) for a whole batch."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if _syncfs is not None and _syncfs(fd) == 0:
            return
        os.sync()
    finally:
        os.close(fd)


class DocumentStore:
    """The documents of one databox under `root`."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._root_str = str(self.root)
        self._made: set[str] = set()
        self._day = ""
        self._day_until = 0.0

    # --- names ---------------------------------------------------------------------------

    def new_name(self, original_name: str, token: str, when: datetime | None = None) -> str:
        day = f"{when:%Y/%m/%d}" if when else self._today()
        return f"{day}/{token}{safe_extension(original_name)}"

    def _today(self) -> str:
        now = time.time()
        if now >= self._day_until:
            d = datetime.now(UTC)
            self._day = f"{d:%Y/%m/%d}"
            self._day_until = now + 1.0  # re-read at most once a second
        return self._day

    def path(self, rel: str) -> Path:
        return self.root / rel

    def path_str(self, rel: str) -> str:
        return f"{self._root_str}/{rel}"

    def tmp_path(self, token: str) -> Path:
        return self.root / TMP / token

    def relative(self, path: Path | str) -> str | None:
        """`path` relative to the storage root, or None when it is outside."""
        try:
            return Path(path).resolve().relative_to(self.root.resolve()).as_posix()
        except ValueError:
            return None

    def ensure_dir(self, rel_dir: str) -> str:
        """Create `root/rel_dir` (and parents) once per process."""
        d = f"{self._root_str}/{rel_dir}" if rel_dir else self._root_str
        if rel_dir not in self._made:
            try:
                os.makedirs(d, exist_ok=True)
            except OSError as e:
                raise StorageError(e.errno, f"cannot create storage folder {d}: {e.strerror}") from None
            self._made.add(rel_dir)
        return d

    # --- writing -----------------------------------------------------------------------

    def copy_in(self, src_fd: int, rel: str, token: str, *, fsync: bool = True) -> Digest:
        """Copy an open source into `rel` through a temp file: hashed in the same pass."""
        self.ensure_dir(TMP)
        self.ensure_dir(os.path.dirname(rel))
        tmp = f"{self._root_str}/{TMP}/{token}"
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
        except OSError as e:
            raise StorageError(e.errno, f"cannot write in storage {os.path.dirname(tmp)}: {e.strerror}") from None
        try:
            try:
                digest = _copy(src_fd, out)
                if fsync:
                    os.fsync(out)
            finally:
                os.close(out)
            final = self.path_str(rel)
            os.rename(tmp, final)
            if fsync:
                fsync_dir(os.path.dirname(final))
        except (StorageError, SourceError):
            _unlink_quiet(tmp)
            raise
        except OSError as e:
            _unlink_quiet(tmp)
            raise StorageError(e.errno, f"cannot write document {rel} in storage: {e.strerror}") from None
        return digest

    def remove(self, rel: str) -> None:
        _unlink_quiet(self.path_str(rel))

    def sync(self) -> None:
        """Flush every document written since the last sync (and their folder entries)."""
        try:
            sync_filesystem(self.root)
        except OSError as e:
            raise StorageError(e.errno, f"cannot sync storage {self.root}: {e.strerror}") from None

    def clean_tmp(self, max_age: float = 86400.0) -> int:
        """Remove temp files left by a crash long ago (younger ones may still be written)."""
        d = self.root / TMP
        n = 0
        try:
            entries = list(os.scandir(d))
        except OSError:
            return 0
        limit = time.time() - max_age
        for e in entries:
            try:
                if e.is_file(follow_symlinks=False) and e.stat(follow_symlinks=False).st_mtime < limit:
                    os.unlink(e.path)
                    n += 1
            except OSError:
                pass
        return n


class SourceError(OSError):
    """Reading the source failed: the document's fault, not the storage's."""


def _chunks(fd: int, first: int, what: str, *, stop_short: bool) -> Iterator[bytes]:
    """A file's bytes from offset 0: a first read of `first` bytes, then CHUNK at a time.
    With stop_short, a short read ends it (a regular file's end) without one more read."""
    offset, want = 0, first
    while True:
        try:
            chunk = os.pread(fd, want, offset)
        except OSError as e:
            raise SourceError(e.errno, f"{what}: {e.strerror}") from None
        if not chunk:
            return
        yield chunk
        offset += len(chunk)
        if stop_short and len(chunk) < want:
            return
        want = CHUNK


def _digest(chunks: Iterable[bytes], out_fd: int | None = None) -> Digest:
    """sha256, size and head of the chunks, each also written to `out_fd` when given."""
    h = hashlib.sha256()
    size = 0
    head = b""
    for chunk in chunks:
        if not head:
            head = chunk[:64]
        h.update(chunk)
        size += len(chunk)
        if out_fd is not None:
            _write_all(out_fd, chunk)
    return Digest(h.hexdigest(), size, head)


def _write_all(out_fd: int, chunk: bytes) -> None:
    view = memoryview(chunk)
    while view:
        try:
            n = os.write(out_fd, view)
        except OSError as e:
            raise StorageError(e.errno, f"cannot write in storage: {e.strerror}") from None
        view = view[n:]


def _copy(src_fd: int, out_fd: int) -> Digest:
    return _digest(_chunks(src_fd, CHUNK, "cannot read the source", stop_short=False), out_fd)


def _unlink_quiet(path: Path | str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except OSError:
        pass
