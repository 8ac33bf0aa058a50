"""A hotfolder seen from inside: walked and acted on without ever following a symlink.

Every path below the root is opened component by component with O_NOFOLLOW
from directory fds, so a symlink planted in the tree (or swapped in while we
work) can neither make us read a file outside the hotfolder nor touch one.
File names stay `str` with surrogate escapes: odd bytes round-trip unchanged.
"""

from __future__ import annotations

import dataclasses
import errno
import os
import stat as st
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from .phrasea_xml import NAME as PHRASEA_XML
from .phrasea_xml import FolderConfig, XmlError, parse_phrasea_xml
from .status import StatusMask

MAX_DEPTH = 64
IGNORED = frozenset({"thumbs.db", "desktop.ini", "par-system"})
_DEVS: dict[int, int] = {}
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def ignored(name: str) -> bool:
    """Hidden files, `.phrasea.xml` and OS litter are never documents."""
    return name.startswith(".") or name.lower() in IGNORED


def split(rel: str) -> tuple[str, str]:
    """`a/b/c.jpg` -> (`a/b`, `c.jpg`); top level -> (``, name)."""
    d, _, n = rel.rpartition("/")
    return d, n


def join(d: str, name: str) -> str:
    return f"{d}/{name}" if d else name


@dataclasses.dataclass(frozen=True, slots=True)
class FileStat:
    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int
    nlink: int
    dev: int = 0

    @classmethod
    def of(cls, s: os.stat_result) -> FileStat:
        mtime, ctime = s.st_mtime_ns, s.st_ctime_ns
        # share int objects where values repeat: 100,000 waiting files stay small
        return cls(s.st_ino, s.st_size, mtime, mtime if ctime == mtime else ctime, s.st_nlink,
                   _DEVS.setdefault(s.st_dev, s.st_dev))

    @property
    def key(self) -> tuple[int, int, int, int]:
        """What must stay the same for a file to count as unchanged."""
        return (self.ino, self.size, self.mtime_ns, self.ctime_ns)


class Tree:
    """A directory tree addressed by relative paths, resolved without following symlinks.

    Directory fds are cached (bounded) for the life of one pass; `reset()` drops them
    so a folder renamed between passes is looked up afresh. Not for concurrent use.
    """

    def __init__(self, root: Path, *, max_fds: int = 64):
        self.root = Path(root)
        self._fds: OrderedDict[str, int] = OrderedDict()
        self._max = max_fds

    def reset(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()

    close = reset

    def exists(self) -> bool:
        return self.root.is_dir()

    def dir_fd(self, rel_dir: str, *, create: bool = False) -> int:
        """An fd on `rel_dir` ("" = root); symlinked components raise OSError(ELOOP/ENOTDIR)."""
        fd = self._fds.get(rel_dir)
        if fd is not None:
            self._fds.move_to_end(rel_dir)
            return fd
        if rel_dir == "":
            if create:
                self.root.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        else:
            parent, name = split(rel_dir)
            pfd = self.dir_fd(parent, create=create)
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
            except FileNotFoundError:
                if not create:
                    raise
                try:
                    os.mkdir(name, 0o755, dir_fd=pfd)
                except FileExistsError:
                    pass
                fd = os.open(name, _DIR_FLAGS, dir_fd=pfd)
        self._fds[rel_dir] = fd
        while len(self._fds) > self._max:
            _, old = self._fds.popitem(last=False)
            os.close(old)
        return fd

    def forget(self, rel_dir: str) -> None:
        for k in [k for k in self._fds if k == rel_dir or k.startswith(rel_dir + "/")]:
            os.close(self._fds.pop(k))

    def lstat(self, rel: str) -> os.stat_result:
        d, n = split(rel)
        return os.stat(n, dir_fd=self.dir_fd(d), follow_symlinks=False)

    def open_file(self, rel: str) -> int:
        """Open a regular file for reading; never a symlink, never blocking on a FIFO."""
        d, n = split(rel)
        fd = os.open(n, _FILE_FLAGS, dir_fd=self.dir_fd(d))
        if not st.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise OSError(errno.EINVAL, "not a regular file")
        return fd

    def read_small(self, rel: str, limit: int) -> bytes:
        fd = self.open_file(rel)
        try:
            data = os.read(fd, limit + 1)
        finally:
            os.close(fd)
        if len(data) > limit:
            raise ValueError(f"larger than {limit} bytes")
        return data

    def unlink(self, rel: str) -> None:
        d, n = split(rel)
        os.unlink(n, dir_fd=self.dir_fd(d))

    def rmdir(self, rel_dir: str) -> None:
        parent, n = split(rel_dir)
        self.forget(rel_dir)
        os.rmdir(n, dir_fd=self.dir_fd(parent))

    def write_atomic(self, rel: str, data: bytes) -> None:
        """temp + fsync + rename, in the file's own folder."""
        d, n = split(rel)
        dfd = self.dir_fd(d, create=True)
        tmp = f".{n}.tmp{os.getpid()}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=dfd)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, n, src_dir_fd=dfd, dst_dir_fd=dfd)
        os.fsync(dfd)

    def free_name(self, rel: str) -> str:
        """`rel`, or `name (2).ext`, `name (3).ext`... when it is taken: nothing is overwritten."""
        d, n = split(rel)
        dfd = self.dir_fd(d, create=True)
        stem, dot, ext = n.rpartition(".")
        if not stem or not dot:
            stem, ext, dot = n, "", ""
        candidate, i = n, 1
        while True:
            try:
                os.stat(candidate, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                return join(d, candidate)
            i += 1
            candidate = f"{stem} ({i}){dot}{ext}"

    def move_to(self, rel: str, other: Tree, other_rel: str) -> str:
        """Rename `rel` into `other` (same filesystem), never overwriting: returns the name used."""
        d, n = split(rel)
        target = other.free_name(other_rel)
        td, tn = split(target)
        os.rename(n, tn, src_dir_fd=self.dir_fd(d), dst_dir_fd=other.dir_fd(td, create=True))
        return target

    def walk_dirs_up(self, rel: str) -> Iterator[str]:
        """`a/b/c.jpg` -> `a/b`, `a` (never the root)."""
        d, _ = split(rel)
        while d:
            yield d
            d, _ = split(d)


# --- scanning -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Rules:
    """The effective `.phrasea.xml` settings of one folder (inherited down the tree)."""

    collection: str | None  # a name or an id, None = the task's own
    collection_from: str  # the .phrasea.xml that set it ("" = the task settings)
    status: tuple[StatusMask, ...] = ()


@dataclasses.dataclass
class Scan:
    files: dict[str, FileStat] = dataclasses.field(default_factory=dict)
    rules: dict[str, Rules] = dataclasses.field(default_factory=dict)  # folder -> rules
    skipped: dict[str, str] = dataclasses.field(default_factory=dict)  # folder -> why its subtree was skipped
    broken: dict[str, str] = dataclasses.field(default_factory=dict)  # folder -> what is wrong in its .phrasea.xml
    unlock: dict[str, str] = dataclasses.field(default_factory=dict)  # folder -> UNLOCK file present
    magic: dict[str, str] = dataclasses.field(default_factory=dict)  # folder -> magic file name (not a document)
    odd: dict[str, str] = dataclasses.field(default_factory=dict)  # path -> why it is left alone
    root_xml: bool = True


class Scanner:
    """Walks a Tree; caches parsed `.phrasea.xml` files by (inode, size, mtime)."""

    def __init__(self, tree: Tree):
        self.tree = tree
        self._xml: dict[str, tuple[tuple[int, int, int], FolderConfig | str]] = {}

    def _folder_config(self, dfd: int, rel_dir: str) -> FolderConfig | str | None:
        """The folder's `.phrasea.xml`: parsed, or an error text, or None when absent."""
        try:
            fd = os.open(PHRASEA_XML, _FILE_FLAGS, dir_fd=dfd)
        except FileNotFoundError:
            self._xml.pop(rel_dir, None)
            return None
        except OSError as e:
            return f"cannot read {join(rel_dir, PHRASEA_XML)}: {e.strerror}"
        try:
            s = os.fstat(fd)
            key = (s.st_ino, s.st_size, s.st_mtime_ns)
            hit = self._xml.get(rel_dir)
            if hit and hit[0] == key:
                return hit[1]
            if not st.S_ISREG(s.st_mode):
                result: FolderConfig | str = f"{join(rel_dir, PHRASEA_XML)}: not a regular file"
            elif s.st_size > 64 * 1024:
                result = f"{join(rel_dir, PHRASEA_XML)}: larger than 64 KiB"
            else:
                try:
                    result = parse_phrasea_xml(os.read(fd, 64 * 1024 + 1))
                except XmlError as e:
                    result = f"{join(rel_dir, PHRASEA_XML)}: {e}"
                except OSError as e:
                    result = f"cannot read {join(rel_dir, PHRASEA_XML)}: {e.strerror}"
            self._xml[rel_dir] = (key, result)
            return result
        finally:
            os.close(fd)

    def scan(self) -> Scan:
        out = Scan()
        self.tree.reset()
        root_fd = self.tree.dir_fd("")
        out.root_xml = _exists(root_fd, PHRASEA_XML)
        self._walk("", root_fd, Rules(None, ""), 0, out)
        return out

    def _walk(self, rel_dir: str, dfd: int, inherited: Rules, depth: int, out: Scan) -> None:
        conf = self._folder_config(dfd, rel_dir)
        rules = inherited
        if isinstance(conf, str):
            out.broken[rel_dir] = conf
            return
        if conf is not None:
            if conf.magic_name:
                out.magic[rel_dir] = conf.magic_name
                present = _exists(dfd, conf.magic_name)
                if conf.magic_method == "LOCK" and present:
                    out.skipped[rel_dir] = f"locked by {join(rel_dir, conf.magic_name)}"
                    return
                if conf.magic_method == "UNLOCK":
                    if not present:
                        out.skipped[rel_dir] = f"waiting for {join(rel_dir, conf.magic_name)}"
                        return
                    out.unlock[rel_dir] = conf.magic_name
            src = join(rel_dir, PHRASEA_XML)
            rules = Rules(
                conf.collection if conf.collection is not None else inherited.collection,
                src if conf.collection is not None else inherited.collection_from,
                inherited.status + ((conf.status,) if conf.status is not None else ()),
            )
        out.rules[rel_dir] = rules
        magic = out.magic.get(rel_dir)
        subdirs: list[str] = []
        try:
            with os.scandir(dfd) as it:
                for e in it:
                    name = e.name
                    if ignored(name) or name == magic:
                        continue
                    rel = join(rel_dir, name)
                    try:
                        if e.is_symlink():
                            out.odd[rel] = "a symbolic link (not followed)"
                        elif e.is_dir(follow_symlinks=False):
                            subdirs.append(name)
                        elif e.is_file(follow_symlinks=False):
                            out.files[rel] = FileStat.of(e.stat(follow_symlinks=False))
                        else:
                            out.odd[rel] = "not a regular file"
                    except FileNotFoundError:
                        continue
        except OSError as e:
            out.broken[rel_dir] = f"cannot list {rel_dir or '.'}: {e.strerror}"
            return
        if depth >= MAX_DEPTH and subdirs:
            out.broken[rel_dir] = f"folders nested deeper than {MAX_DEPTH} levels are not archived"
            return
        for name in subdirs:
            rel = join(rel_dir, name)
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=dfd)
            except FileNotFoundError:
                continue
            except OSError as e:
                out.broken[rel] = f"cannot open folder {rel}: {e.strerror}"
                continue
            try:
                self._walk(rel, fd, rules, depth + 1, out)
            finally:
                os.close(fd)


def _exists(dfd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
        return True
    except FileNotFoundError:
        return False
    except OSError:
        return False
