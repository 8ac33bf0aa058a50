"""Planning one pass of the archive task: which ready files of a scan become records (with
their collection, status and caption fields), which go to the error folder, which wait."""

from __future__ import annotations

import dataclasses
import fnmatch
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from repository import Collection, FileStat, Rules, Scan, Unit, UnknownCollection

    from .settings import Settings
    from .task import Open

EMPTY_COLDS = 10  # a 0-byte file waits this many times `cold` to grow, then goes to _error

Error = tuple[str, str, str | None]  # (path, why, its caption's path): a file for the error folder


@dataclasses.dataclass
class Plan:
    """What one pass does with the files it scanned."""

    units: list[Unit] = dataclasses.field(default_factory=list)  # to archive
    errors: list[Error] = dataclasses.field(default_factory=list)
    waiting: list[str] = dataclasses.field(default_factory=list)  # ready, but their caption is not
    empty: list[str] = dataclasses.field(default_factory=list)  # 0 bytes: wait until they grow
    problems: dict[str, str] = dataclasses.field(default_factory=dict)  # what stops the whole hotfolder


class Refused(Exception):
    """A file the plan sends to the error folder, and why."""


class Planner:
    """One pass's planning: which ready files become records (with their collection, status and
    caption fields), which are errors, which wait (see `Plan`)."""

    def __init__(self, settings: Settings, o: Open, scan: Scan, ready: list[str],
                 seen: dict[str, tuple[int, float]]):
        from repository import parse_mask

        self.s, self.o, self.scan, self.seen = settings, o, scan, seen
        self.ready = set(ready)
        self.base_status = parse_mask(self.s.status, "status").apply(0)
        self.colls: dict[str, Collection | UnknownCollection] = {}
        self.result = Plan()
        self.now = time.monotonic()

    def plan(self) -> Plan:
        """Plan every folder, files in name order (record ids follow names); a root collection
        that does not exist stops the whole hotfolder."""
        from repository import split

        failed = self._failed_before()
        rules = self.scan.rules
        root = self._collection(rules[""].collection or self.s.collection) if "" in rules else None
        if isinstance(root, Exception):
            src = rules[""].collection_from or "the task setting collection"
            self.result.problems["collection"] = f"{root} (set in {src}): nothing archived"
            return self.result
        by_dir: dict[str, list[str]] = {}  # folder -> its files' paths (the scan's own strings)
        for rel in self.scan.files:
            by_dir.setdefault(split(rel)[0], []).append(rel)
        for d in sorted(by_dir):
            self._folder(d, sorted(by_dir[d]), root, failed)
        return self.result

    def _failed_before(self) -> dict[str, tuple[int, int, int]]:
        """Files that failed before and were left in place (no error folder), by their stat
        key; forgets those gone from the tree."""
        failed = self.o.journal.failed_keys() if not self.s.move_error else {}
        if failed:
            self.o.journal.drop_failed([r for r in failed if r not in self.scan.files])
        return failed

    def _collection(self, ref: str) -> Collection | UnknownCollection:
        """The collection a name or id refers to, or why there is none (looked up once a pass)."""
        from repository import UnknownCollection

        if ref not in self.colls:
            try:
                self.colls[ref] = self.o.db.collection(ref)
            except UnknownCollection as e:
                self.colls[ref] = e
        return self.colls[ref]

    def _folder(self, d: str, rels: list[str], root: Collection | None,
                failed: dict[str, tuple[int, int, int]]) -> None:
        """Plan one folder's files; a caption goes with its document, not on its own."""
        cut = len(d) + 1 if d else 0
        caption_of = pair_captions({rel[cut:] for rel in rels}, self.s.captions)
        claimed = set(caption_of.values())
        rules = self.scan.rules.get(d)
        for rel in rels:
            name = rel[cut:]
            if name in claimed:
                continue  # a caption, archived with its document
            cap = caption_of.get(name)
            cap_rel = (f"{d}/{cap}" if d else cap) if cap else None
            fs = self.scan.files[rel]
            if rel in failed and failed[rel] == (fs.ino, fs.size, fs.mtime_ns):
                continue  # failed before, unchanged since: reported once, not retried
            if rel not in self.ready or (cap_rel and cap_rel not in self.ready):
                if rel in self.ready:
                    self.result.waiting.append(rel)
                continue
            try:
                unit = self._unit(rel, name, fs, rules, root, cap, cap_rel)
            except Refused as e:
                self.result.errors.append((rel, str(e), cap_rel))
                continue
            if unit is not None:
                self.result.units.append(unit)

    def _unit(self, rel: str, name: str, fs: FileStat, rules: Rules | None, root: Collection | None,
              cap: str | None, cap_rel: str | None) -> Unit | None:
        """The unit to archive for a ready file (None: empty, it waits to grow); raises
        Refused when it goes to the error folder."""
        from repository import Unit

        if fs.size == 0:
            self._empty(rel)
            return None
        self._screen(name)
        coll = root
        if rules and rules.collection:
            found = self._collection(rules.collection)
            if isinstance(found, Exception):
                raise Refused(f"{found} (set in {rules.collection_from})")
            coll = found
        assert coll is not None  # (files are scanned under a root with its .phrasea.xml rules)
        status = self.base_status
        for m in rules.status if rules else ():
            status = m.apply(status)
        fields: dict[str, str] = {}
        if cap and cap_rel:
            fields, status = self._caption(cap, cap_rel, status)
        cap_stat = self.scan.files.get(cap_rel) if cap_rel else None
        return Unit(rel, fs, coll.id, status, fields, cap_rel, cap_stat)

    def _empty(self, rel: str) -> None:
        """A 0-byte file waits EMPTY_COLDS x cold to grow (its writer may only have created it),
        then is an error."""
        unchanged = self.now - self.seen[rel][1] if rel in self.seen else 0.0
        if unchanged >= self.s.cold * EMPTY_COLDS:
            raise Refused(f"empty file (0 bytes) for {unchanged:.0f}s ({EMPTY_COLDS} x cold): not archived")
        self.result.empty.append(rel)

    def _screen(self, name: str) -> None:
        """Raises Refused when the name matches a `refuse` pattern or no `accept` one."""
        lower = name.lower()
        refused = next((p for p in self.s.refuse if fnmatch.fnmatchcase(lower, p.lower())), None)
        if refused:
            raise Refused(f"refused by mask {refused!r}")
        if "*" not in self.s.accept and not any(fnmatch.fnmatchcase(lower, p.lower()) for p in self.s.accept):
            raise Refused(f"not accepted by masks {list(self.s.accept)}")

    def _caption(self, cap: str, cap_rel: str, status: int) -> tuple[dict[str, str], int]:
        """The fields a caption file sets, and the status with its mask applied; raises
        Refused when it cannot be read or parsed."""
        from repository import CAPTION_MAX_BYTES, CaptionError, parse_caption

        try:
            caption = parse_caption(self.o.hot.read_small(cap_rel, CAPTION_MAX_BYTES), cap,
                                    self.o.db.settings.field_types)
        except (CaptionError, ValueError) as e:
            raise Refused(f"bad caption {cap}: {e}") from None
        except OSError as e:
            raise Refused(f"cannot read caption {cap}: {e.strerror}") from None
        if caption.status is not None:
            status = caption.status.apply(status)
        return dict(caption.fields), status


def pair_captions(names: set[str], patterns: tuple[str, ...]) -> dict[str, str]:
    """Document name -> its caption's name, both in `names`: the first pattern
    ("{stem}.xml", "{name}.json") that names another file of the folder."""
    caption_of: dict[str, str] = {}
    for n in names:
        stem = n.rsplit(".", 1)[0] if "." in n[1:] else n
        for pat in patterns:
            c = pat.replace("{stem}", stem).replace("{name}", n)
            if c != n and c in names:
                caption_of[n] = c
                break
    return caption_of
