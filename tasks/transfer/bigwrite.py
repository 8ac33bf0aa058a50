"""Where a big download's bytes go: past the page cache (O_DIRECT), in a thread of their own.

Written through the page cache, a 512 MB download cost more CPU than its TLS
(fresh pages first touched on a VM, then the kernel's writeback on the same two
cores) and left the whole file to flush before its rename. O_DIRECT hands
aligned buffers to the disk as they fill, while the next ones are received:
the sync before the rename only flushes the device's cache. A filesystem that
refuses O_DIRECT (tmpfs before Linux 6.6, some network filesystems) gets the
page cache with writeback started every 8 MB instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import errno
import fcntl
import mmap
import os
import queue
import threading
from typing import Any, BinaryIO

import anyio

ALIGN = 4096  # O_DIRECT offsets, lengths and buffer addresses: a multiple of the block size
BUFFER = 4 * 1024 * 1024
BUFFERS = 3  # one filling, two on their way to the disk
BIG = 8 * 1024 * 1024  # more than this left to fetch: written by a DirectWriter (or EarlyWriteback)


def _load_sync_file_range() -> Any:
    try:
        fn = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True).sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn


_sync_file_range = _load_sync_file_range()
SYNC_FILE_RANGE_WRITE = 2
O_DIRECT = getattr(os, "O_DIRECT", 0)


def sink(f: BinaryIO, path: os.PathLike[str] | str, offset: int, size: int | None) -> tuple[Any, int]:
    """What to hand the download of `path` (open as `f` at `offset`), and the offset to fetch from.

    A DirectWriter may move a resumed download back to the block boundary below `offset`
    (its file is cut there). `finish` the writer once the download ends, even on error.
    """
    if size is None or size - offset <= BIG:
        return f, offset
    w = DirectWriter.open(path, offset)
    if w is not None:
        return w, w.start
    return EarlyWriteback(f, offset), offset


async def finish(dest: Any) -> None:
    """Everything handed to `dest` (from `sink`) is in its file."""
    if isinstance(dest, DirectWriter):
        await anyio.to_thread.run_sync(dest.close)


class EarlyWriteback:
    """A temp file that asks the kernel to start writing back every 8 MB as it is filled.

    Only a start (SYNC_FILE_RANGE_WRITE waits for nothing): the final sync of a big
    file then finds most of it on disk, and dirty pages never pile up to the point
    where a write stalls the event loop.
    """

    def __init__(self, f: BinaryIO, start: int):
        self.f = f
        self._done = start  # bytes already handed to writeback
        self._at = start

    def write(self, data: bytes) -> int:
        n = self.f.write(data)
        self._at += n
        if self._at - self._done >= BIG and _sync_file_range is not None:
            self.f.flush()
            _sync_file_range(self.f.fileno(), self._done, self._at - self._done, SYNC_FILE_RANGE_WRITE)
            self._done = self._at
        return n

    def __getattr__(self, name: str) -> Any:  # seek, truncate, flush...: the file's own
        return getattr(self.f, name)


def _pwrite_all(fd: int, view: memoryview, pos: int) -> None:
    while view:
        n = os.pwrite(fd, view, pos)
        view, pos = view[n:], pos + n


class DirectWriter:
    """Copies what it is given into page-aligned buffers; a thread writes the full ones with O_DIRECT.

    `write` may be called from any one thread at a time (the event loop or a
    transfer thread); it blocks only when all buffers wait for the disk. A disk
    error (full, quota) is raised by the next `write` or by `close`.
    """

    def __init__(self, fd: int, start: int):
        self.start = start
        self._fd = fd
        self._pos = start  # file offset of the filling buffer's first byte
        self._buffers = [mmap.mmap(-1, BUFFER) for _ in range(BUFFERS)]
        self._free: queue.SimpleQueue[mmap.mmap] = queue.SimpleQueue()
        for b in self._buffers[1:]:
            self._free.put(b)
        self._buf = self._buffers[0]
        self._fill = 0
        self._todo: queue.SimpleQueue[tuple[mmap.mmap, int] | None] = queue.SimpleQueue()
        self._error: OSError | None = None
        self._direct = True
        self.direct_writes = 0  # buffers that went around the page cache
        self._thread = threading.Thread(target=self._drain, name="schedulerd-direct-write", daemon=True)
        self._thread.start()
        self._closed = False

    @classmethod
    def open(cls, path: os.PathLike[str] | str, offset: int) -> DirectWriter | None:
        """A writer for the existing file `path`, cut back to the block boundary at or below `offset`;
        None where O_DIRECT is refused."""
        if not O_DIRECT:
            return None
        try:
            fd = os.open(path, os.O_WRONLY | O_DIRECT | os.O_CLOEXEC)
        except OSError:
            return None
        start = offset - offset % ALIGN
        try:
            if start != offset:
                os.ftruncate(fd, start)
            return cls(fd, start)
        except BaseException:
            os.close(fd)
            raise

    def write(self, data: Any) -> int:
        if self._error is not None:
            raise self._error
        with memoryview(data) as view:
            n = len(view)
            at = 0
            while at < n:
                k = min(n - at, BUFFER - self._fill)
                self._buf[self._fill:self._fill + k] = view[at:at + k]
                self._fill += k
                at += k
                if self._fill == BUFFER:
                    self._todo.put((self._buf, self._pos))
                    self._pos += BUFFER
                    self._buf = self._free.get()  # the writer always gives buffers back, even failing
                    self._fill = 0
                    if self._error is not None:
                        raise self._error
        return n

    def _drain(self) -> None:
        while (item := self._todo.get()) is not None:
            buf, pos = item
            try:
                if self._error is None:
                    self._pwrite(buf, BUFFER, pos)
            except OSError as e:
                self._error = e
            finally:
                self._free.put(buf)

    def _pwrite(self, buf: mmap.mmap, n: int, pos: int) -> None:
        with memoryview(buf) as whole, whole[:n] as view:
            try:
                _pwrite_all(self._fd, view, pos)
                self.direct_writes += self._direct
            except OSError as e:  # alignment this device does not take: the page cache, then
                if e.errno != errno.EINVAL or not self._direct:
                    raise
                self._buffered()
                _pwrite_all(self._fd, view, pos)

    def _buffered(self) -> None:
        self._direct = False
        fcntl.fcntl(self._fd, fcntl.F_SETFL, fcntl.fcntl(self._fd, fcntl.F_GETFL) & ~O_DIRECT)

    def close(self) -> None:
        """Waits for the full buffers, then writes the last one (its unaligned tail through the page cache)."""
        if self._closed:
            return
        self._closed = True
        self._todo.put(None)
        self._thread.join()
        try:
            if self._error is not None:
                raise self._error
            aligned = self._fill - self._fill % ALIGN
            if aligned:
                self._pwrite(self._buf, aligned, self._pos)
            if self._fill > aligned:
                if self._direct:
                    self._buffered()
                with memoryview(self._buf) as whole, whole[aligned:self._fill] as tail:
                    _pwrite_all(self._fd, tail, self._pos + aligned)
        finally:
            os.close(self._fd)
            for b in self._buffers:
                with contextlib.suppress(BufferError):
                    b.close()
