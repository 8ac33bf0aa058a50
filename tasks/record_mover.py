"""Task type `record_mover`: Phraseanet's RecordMover rules (expiry, status-bit workflows).

Each active rule is one set-based statement in one transaction: records matching its
`from` conditions (ANDed) are moved / get status bits set or cleared (`update`), or are
deleted with their documents (`delete`, the files only after the commit). Records already
in the target state are not matched, so a second pass changes nothing. Every changed id
is logged, and `record.updated` / `record.deleted` are emitted once per rule.

`preview` runs the same statements in a transaction that is rolled back: what it shows
is exactly what a run at the same moment would do. The last rule of a databox is not applied
but only read (its WHERE as a SELECT: the same ids, no rows written), unless it deletes
stories' children.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, ClassVar, Literal, NoReturn, TypeVar

import anyio

from repository import ALL_BITS as ALL
from repository import (
    FIELD_NAME_RE,
    NO_MASK,
    StatusMask,
    collection_names,
    collections_required,
    database_errors,
    format_mask,
    now_iso,
    parse_mask,
)
from schedulerd import settings as s
from schedulerd.plugin import Context, TaskLog, TaskType
from schedulerd.settings import ConfigError

if TYPE_CHECKING:
    from repository import Databox

T = TypeVar("T")

PREVIEW_IDS = 10
IDS_PER_LOG_LINE = 500
COMPARE_SQL = {"<": "<", ">": ">", "<=": "<=", ">=": ">=", "=": "=", "!=": "<>"}

# --- settings ------------------------------------------------------------------------


def mask(value: Any, path: str) -> StatusMask:
    """A status mask like `"x1x0"` (rightmost is bit 0; x: any / keep)."""
    try:
        return parse_mask(value, "status mask")
    except ValueError as e:
        raise ConfigError(path, str(e).removeprefix("status mask: ")) from None


def text_value(value: object, path: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int, float)):
        raise ConfigError(path, f"expected a string or a number, got {value!r}")
    return str(value)


def field_name(value: object, path: str) -> str:
    if not isinstance(value, str) or not FIELD_NAME_RE.match(value):
        raise ConfigError(path, f"bad field name {value!r}: starts with a letter, then letters, digits, _ . : -")
    return value


def one_or_many(cls: type[T]) -> Callable[[object, str], tuple[T, ...]]:
    """A table, or a list of tables: several conditions of one kind are ANDed."""

    def convert(value: object, path: str) -> tuple[T, ...]:
        if isinstance(value, Mapping):
            return (s.build(cls, value, path),)
        if isinstance(value, (list, tuple)):
            return tuple(s.build(cls, v, f"{path}[{i}]") if isinstance(v, Mapping)
                         else _not_table(v, f"{path}[{i}]") for i, v in enumerate(value))
        raise ConfigError(path, f"expected a table or a list of tables, got {value!r}")

    return convert


def _not_table(value: object, path: str) -> NoReturn:
    raise ConfigError(path, f"expected a table, got {value!r}")


@dataclasses.dataclass(frozen=True)
class DateCondition:
    """The field's date is before/after now + delta_days (a date without time is midnight UTC)."""

    field: Annotated[str, field_name]
    direction: Literal["before", "after"]
    delta_days: int = 0


@dataclasses.dataclass(frozen=True)
class TextCondition:
    """The field's value compared with `value` (as numbers when the field is declared a number)."""

    field: Annotated[str, field_name]
    value: Annotated[str, text_value]
    compare: Literal["<", ">", "<=", ">=", "=", "!="] = "="


@dataclasses.dataclass(frozen=True)
class Condition:
    type: Literal["record", "story"] | None = None
    collection: tuple[str, ...] = ()
    not_collection: tuple[str, ...] = ()
    status: Annotated[StatusMask, mask] = NO_MASK
    date: Annotated[tuple[DateCondition, ...], one_or_many(DateCondition)] = ()
    text: Annotated[tuple[TextCondition, ...], one_or_many(TextCondition)] = ()

    @property
    def empty(self) -> bool:
        return not (self.type or self.collection or self.not_collection or not self.status.empty
                    or self.date or self.text)


@dataclasses.dataclass(frozen=True)
class Target:
    collection: str | None = None
    status: Annotated[StatusMask, mask] = NO_MASK

    def check(self) -> None:
        if self.collection is None and self.status.empty:
            raise ConfigError("", "give a collection and/or a status mask to set")


@dataclasses.dataclass(frozen=True)
class Rule:
    name: str
    databox: str
    from_: Condition = dataclasses.field(metadata={s.TOML_KEY: "from"})  # `from` is a Python keyword
    action: Literal["update", "delete"] = "update"
    active: bool = True
    to: Target | None = None
    delete_children: bool = False

    def check(self) -> None:
        if not self.name.strip():
            raise ConfigError("name", "a rule needs a name")
        if self.action == "update" and self.to is None:
            raise ConfigError("to", 'missing: an "update" rule needs a `to` (collection and/or status)')
        if self.action == "delete" and self.to is not None:
            raise ConfigError("to", 'a "delete" rule takes no `to`')
        if self.delete_children and self.action != "delete":
            raise ConfigError("delete_children", 'only for action = "delete"')
        if self.action == "delete" and self.from_.empty:
            raise ConfigError("from", "a delete rule needs at least one condition (it would delete every record)")


def rule(value: object, path: str) -> Rule:
    """One rule table (its key `from` is the field `from_`)."""
    if not isinstance(value, Mapping):
        raise ConfigError(path, f"expected a table, got {value!r}")
    return s.build(Rule, value, path)


def rules(value: object, path: str) -> tuple[Rule, ...]:
    if not isinstance(value, (list, tuple)):
        raise ConfigError(path, "expected a list of rule tables ([[tasks.NAME.rules]])")
    return tuple(rule(v, f"{path}[{i}]") for i, v in enumerate(value))


@dataclasses.dataclass(frozen=True)
class Settings:
    rules: Annotated[tuple[Rule, ...], rules]

    def check(self) -> None:
        if not self.rules:
            raise ConfigError("rules", "give at least one rule")
        seen: set[str] = set()
        for i, r in enumerate(self.rules):
            if r.name in seen:
                raise ConfigError(f"rules[{i}].name", f"duplicate rule name {r.name!r}")
            seen.add(r.name)


RecordMoverSettings = Settings  # (in RecordMover's body, `Settings` is the ClassVar)


# --- checking rules against the config and the databox ---------------------------------


def check_rule(r: Rule, config: Any, where: Callable[[str], str]) -> None:
    """Raise ConfigError at `where(key)` for an unknown databox, field or collection."""
    databoxes = getattr(config, "databoxes", {}) or {}
    if r.databox not in databoxes:
        known = ", ".join(sorted(databoxes)) or "none configured"
        raise ConfigError(where("databox"), f"unknown databox {r.databox!r} (known: {known})")
    dbs = databoxes[r.databox]
    declared: Mapping[str, str] = getattr(dbs, "field_types", {}) or {}

    def field_kind(key: str, name: str) -> str:
        if declared and name not in declared:
            raise ConfigError(where(key), f"unknown field {name!r} in databox {r.databox} "
                                          f"(known: {', '.join(sorted(declared))})")
        return declared.get(name, "text")

    c = r.from_
    for j, d in enumerate(c.date):
        key = "from.date" + (f"[{j}]" if len(c.date) > 1 else "") + ".field"
        kind = field_kind(key, d.field)
        if declared and kind != "date":
            raise ConfigError(where(key), f"field {d.field!r} is declared {kind}, not date")
    for j, t in enumerate(c.text):
        base = "from.text" + (f"[{j}]" if len(c.text) > 1 else "")
        if field_kind(base + ".field", t.field) == "number":
            try:
                float(t.value)
            except ValueError:
                raise ConfigError(where(base + ".value"), f"field {t.field!r} is a number, got {t.value!r}") from None
    names = collection_names(dbs) if collections_required() else None
    if names is None:
        return  # the databox is not created yet (the run will name what is missing), or collection:create runs
    refs = [(f"from.collection[{j}]", n) for j, n in enumerate(c.collection)]
    refs += [(f"from.not_collection[{j}]", n) for j, n in enumerate(c.not_collection)]
    if r.to is not None and r.to.collection is not None:
        refs.append(("to.collection", r.to.collection))
    for key, name in refs:
        if name not in names:
            raise ConfigError(where(key), f"unknown collection {name!r} in databox {r.databox} "
                                          f"(known: {', '.join(sorted(names)) or 'none'})")


# --- SQL -----------------------------------------------------------------------------


def _utc(now: datetime) -> datetime:
    return now.astimezone(UTC) if now.tzinfo else now.replace(tzinfo=UTC)


def threshold(d: DateCondition, now: datetime) -> str:
    """now + delta_days, as SQLite time text (UTC)."""
    return (_utc(now) + timedelta(days=d.delta_days)).strftime("%Y-%m-%d %H:%M:%S.%f")


def day_bound(d: DateCondition, now: datetime) -> str:
    """The threshold's day moved 2 days outwards, as ISO text: every date-shaped text whose instant
    passes the threshold also passes this bound as text (repository.bulk `date_bound`)."""
    day = (_utc(now) + timedelta(days=d.delta_days)).date()
    return (day + timedelta(days=2 if d.direction == "before" else -2)).isoformat()


class RuleError(Exception):
    """A rule cannot run now (a collection it names is gone): the message names the rule."""


def _collection_ids(conn: Any, r: Rule, names: Iterable[str]) -> list[int]:
    ids = []
    for n in names:
        row = conn.execute("SELECT id FROM collections WHERE name = ?", (n,)).fetchone()
        if row is None:
            raise RuleError(f"rule {r.name!r}: unknown collection {n!r} in databox {r.databox}")
        ids.append(row[0])
    return ids


def where_clause(db: Databox, r: Rule, now: datetime) -> tuple[str, list[object]]:
    """The rule's `from` (and, for update, "not already in the target state") on `records r`,
    in the databox's dialect (its date and number comparisons: repository.bulk)."""
    conn = db.connection
    declared: Mapping[str, str] = getattr(db.settings, "field_types", {}) or {}
    parts: list[str] = []
    params: list[object] = []
    c = r.from_
    if c.type:
        parts.append("r.type = ?")
        params.append(c.type)
    if c.collection:
        ids = _collection_ids(conn, r, c.collection)
        parts.append(f"r.collection_id IN ({','.join('?' * len(ids))})")
        params += ids
    if c.not_collection:
        ids = _collection_ids(conn, r, c.not_collection)
        parts.append(f"r.collection_id NOT IN ({','.join('?' * len(ids))})")
        params += ids
    if not c.status.empty:
        parts.append("(r.status & ?) = ?")
        params += [c.status.mask, c.status.value]
    for d in c.date:
        op = "<" if d.direction == "before" else ">"
        bound = db.dialect("date_bound", value="f.value", op=op)  # an index range first (PostgreSQL)
        parts.append("r.id IN (SELECT f.record_id FROM fields f WHERE f.name = ? "
                     f"AND {bound}{db.dialect('date_compare', value='f.value', op=op)})")
        params += [d.field, *([day_bound(d, now)] if bound else []), threshold(d, now)]
    for t in c.text:
        op = COMPARE_SQL[t.compare]
        if declared.get(t.field) == "number":
            number = db.dialect("number", value="f.value")
            parts.append(f"r.id IN (SELECT f.record_id FROM fields f WHERE f.name = ? AND {number} {op} ?)")
            params += [t.field, float(t.value)]
        else:
            parts.append(f"r.id IN (SELECT f.record_id FROM fields f WHERE f.name = ? AND f.value {op} ?)")
            params += [t.field, t.value]
    if r.action == "update" and r.to is not None:
        target: list[str] = []
        if r.to.collection is not None:
            target.append("r.collection_id = ?")
            params.append(_collection_ids(conn, r, [r.to.collection])[0])
        if not r.to.status.empty:
            target.append("(r.status & ?) = ?")
            params += [r.to.status.mask, r.to.status.value]
        parts.append(f"NOT ({' AND '.join(target)})")
    return " AND ".join(parts) or "TRUE", params


def matching_ids(db: Databox, r: Rule, now: datetime) -> list[int]:
    """The ids `apply_rule` would change now, sorted, read without changing anything (the same
    WHERE): exact for an update rule and for a delete rule without `delete_children`."""
    where, params = where_clause(db, r, now)
    return sorted(db.column(f"SELECT r.id FROM records r WHERE {where}", params))


def apply_rule(db: Databox, r: Rule, now: datetime) -> list[int]:
    """Run one rule inside the caller's `db.transaction()`; the changed (or deleted) ids, sorted."""
    where, params = where_clause(db, r, now)
    if r.action == "delete":
        ids = db.column(f"SELECT r.id FROM records r WHERE {where}", params)
        return sorted(db.delete_records(ids, delete_children=r.delete_children)) if ids else []
    assert r.to is not None
    coll = None if r.to.collection is None else _collection_ids(db.connection, r, [r.to.collection])[0]
    keep = ALL & ~r.to.status.mask
    ids = db.column(  # plain values: a rule may return 100,000s of ids
        "UPDATE records SET collection_id = coalesce(?, collection_id), status = ((status & ?) | ?), updated = ? "
        f"WHERE id IN (SELECT r.id FROM records r WHERE {where}) RETURNING id",
        [coll, keep, r.to.status.value, now_iso(), *params],
    )
    return sorted(ids)


# --- words ---------------------------------------------------------------------------


def _names(names: Sequence[str]) -> str:
    return ", ".join(repr(n) for n in names)


def _bits(m: StatusMask) -> str:
    on = [str(i) for i in range(32) if m.mask >> i & 1 and m.value >> i & 1]
    off = [str(i) for i in range(32) if m.mask >> i & 1 and not m.value >> i & 1]
    return "; ".join(filter(None, [f"bit {', '.join(on)} set" if on else "", f"bit {', '.join(off)} clear" if off else ""]))


def describe_condition(r: Rule, now: datetime) -> str:
    c = r.from_
    words = []
    if c.type:
        words.append(f"{c.type}s")
    if c.collection:
        words.append(f"in collection {_names(c.collection)}")
    if c.not_collection:
        words.append(f"not in collection {_names(c.not_collection)}")
    if not c.status.empty:
        words.append(f"status {format_mask(c.status)} ({_bits(c.status)})")
    for d in c.date:
        sign = "+" if d.delta_days >= 0 else "-"
        words.append(f"{d.field} {d.direction} now {sign} {abs(d.delta_days)} days ({threshold(d, now)[:16]} UTC)")
    for t in c.text:
        words.append(f"{t.field} {t.compare} {t.value!r}")
    return "records " + (" and ".join(words) if words else "(every record)") + f" in databox {r.databox}"


def describe_action(r: Rule) -> str:
    if r.action == "delete":
        return "delete them and their documents" + (" (and the records of matched stories)" if r.delete_children else "")
    assert r.to is not None
    what = []
    if r.to.collection is not None:
        what.append(f"move them to collection {r.to.collection!r}")
    if not r.to.status.empty:
        what.append(f"set status {format_mask(r.to.status)} ({_bits(r.to.status)})")
    return " and ".join(what) + " (skipping those already there)"


def id_ranges(ids: Sequence[int]) -> str:
    """`1-4, 7, 9-10`: every id, compactly."""
    out: list[str] = []
    start = prev = None
    for i in ids:
        if start is None:
            start = prev = i
        elif i == prev + 1:  # type: ignore[operator]
            prev = i
        else:
            out.append(f"{start}" if start == prev else f"{start}-{prev}")
            start = prev = i
    if start is not None:
        out.append(f"{start}" if start == prev else f"{start}-{prev}")
    return ", ".join(out)


# --- the task ------------------------------------------------------------------------


@dataclasses.dataclass
class Outcome:
    rule: Rule
    ids: list[int] = dataclasses.field(default_factory=list)
    error: str | None = None
    waiting: str | None = None  # its databox does not exist yet: nothing to do, not a failure


class _Rollback(Exception):
    pass


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RecordMover(TaskType):
    type_name: ClassVar[str] = "record_mover"
    Settings: ClassVar[type] = Settings
    emits: ClassVar[tuple[str, ...]] = ("record.updated", "record.deleted")
    default_period: ClassVar[float] = 3600.0

    settings: RecordMoverSettings

    def __init__(self, settings: RecordMoverSettings):
        super().__init__(settings)
        self.clock: Callable[[], datetime] = _utcnow  # tests freeze time here

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self.settings.rules

    def where(self, key: str, index: int) -> str:
        """The settings key path of a rule's `key`, for config errors."""
        return f"rules[{index}].{key}"

    def check(self, config: Any) -> None:
        for i, r in enumerate(self.rules):
            check_rule(r, config, functools.partial(self.where, index=i))

    # --- databoxes -------------------------------------------------------------------
    @staticmethod
    def _open(config: Any, name: str) -> Databox:
        """The databox `name`, open; RuleError when it cannot be, DataboxMissing when it
        does not exist yet."""
        from repository import DataboxError, DataboxMissing, open_databox

        databoxes = getattr(config, "databoxes", {}) or {}
        if name not in databoxes:
            raise RuleError(f"unknown databox {name!r}")
        try:
            db = open_databox(databoxes[name], create=False)
        except DataboxMissing:
            raise
        except DataboxError as e:
            raise RuleError(str(e)) from None
        # This connection lives for one pass. A rule over many records builds large
        # transient tables (the matched ids, the RETURNING rows, delete's _doomed list):
        # on SQLite in memory they cost no temp-file I/O (about 0.2 s of a 2 s pass in
        # bench/bench_record_mover.py). Set on a fresh connection, it discards nothing.
        try:
            db.bulk_session()
        except database_errors() as e:
            db.close()
            raise RuleError(f"databox {name}: {e}") from None
        return db

    def _each(self, config: Any, work: Callable[[Databox, list[Rule]], list[Outcome]]) -> list[Outcome]:
        """Run `work(db, rules)` per databox, rules kept in their configured order."""
        from repository import DataboxMissing, awaited

        order: list[str] = []
        for r in self.rules:
            if r.databox not in order:
                order.append(r.databox)
        outcomes: dict[Rule, Outcome] = {}
        for name in order:
            rs = [r for r in self.rules if r.databox == name]
            try:
                db = self._open(config, name)
            except RuleError as e:
                outcomes.update({r: Outcome(r, error=str(e)) for r in rs})
                continue
            except DataboxMissing:
                outcomes.update({r: Outcome(r, waiting=awaited(name, config.databoxes[name])) for r in rs})
                continue
            try:
                outcomes.update({o.rule: o for o in work(db, rs)})
            finally:
                db.close()
        return [outcomes[r] for r in self.rules]

    # --- run -------------------------------------------------------------------------
    def run_sync(self, config: Any, log: TaskLog, now: datetime) -> list[Outcome]:
        errors: tuple[type[Exception], ...] = (RuleError, *database_errors())

        def work(db: Databox, rs: list[Rule]) -> list[Outcome]:
            out = []
            for r in rs:
                o = Outcome(r)
                if not r.active:
                    out.append(o)
                    continue
                try:
                    with db.transaction():
                        o.ids = apply_rule(db, r, now)
                except errors as e:
                    o.error = str(e) if isinstance(e, RuleError) else f"rule {r.name!r}: {str(e).strip()}"
                    log.error("%s", o.error)
                else:
                    verb = "deleted" if r.action == "delete" else "updated"
                    if o.ids:
                        log.info("rule %r: %s %d records (%s)", r.name, verb, len(o.ids), describe_action(r))
                        for k in range(0, len(o.ids), IDS_PER_LOG_LINE):
                            log.info("rule %r: %s ids %s", r.name, verb, id_ranges(o.ids[k : k + IDS_PER_LOG_LINE]))
                    else:
                        log.debug("rule %r: nothing to change", r.name)
                out.append(o)
            return out

        return self._each(config, work)

    @staticmethod
    async def _queue_jobs(ctx: Context, databox: str, event: str, ids: list[int]) -> None:
        from repository import record_jobs

        for type_name, payloads in record_jobs(databox, ctx.config.databoxes[databox], event, ids):
            try:
                await ctx.add_jobs(type_name, payloads)  # one write for a rule's records
            except RuntimeError:  # no job queue in this process (a test context)
                return

    async def run_once(self, ctx: Context) -> str | None:
        now = self.clock()
        outcomes = await anyio.to_thread.run_sync(self.run_sync, ctx.config, ctx.log, now)
        for o in outcomes:  # after the commits: listeners see the new state
            if o.ids:
                event = "record.deleted" if o.rule.action == "delete" else "record.updated"
                ctx.emit(event, databox=o.rule.databox, ids=o.ids, rule=o.rule.name, task=ctx.name)
                if event == "record.deleted":  # deleteRecord + webhook by default ([databoxes.NAME.on])
                    await self._queue_jobs(ctx, o.rule.databox, event, o.ids)
        waiting = ", ".join(dict.fromkeys(o.waiting for o in outcomes if o.waiting))
        if waiting:
            ctx.wait_for(waiting)
        summary = "; ".join(
            f"{o.rule.name}: " + ("inactive" if not o.rule.active else "failed" if o.error else
                                  f"waiting for {o.waiting}" if o.waiting else
                                  f"{len(o.ids)} {'deleted' if o.rule.action == 'delete' else 'updated'}")
            for o in outcomes)
        errors = [o.error for o in outcomes if o.error]
        if errors:
            raise RuleError("; ".join(errors) + f" ({summary})")
        return summary

    # --- preview ---------------------------------------------------------------------
    def preview(self, config: Any, now: datetime | None = None) -> list[dict[str, Any]]:
        """Per rule: condition and action in words, how many records a run now would change,
        and the first ids. Runs the rules in a transaction that is always rolled back."""
        now = now or self.clock()

        def work(db: Databox, rs: list[Rule]) -> list[Outcome]:
            out = [Outcome(r) for r in rs]
            active = [o for o in out if o.rule.active]
            try:
                with db.transaction():
                    for o in active:
                        # a rule is applied (then rolled back) only when a later rule may see what it
                        # changed; the last one's ids are only read: a fraction of the cost, the same ids
                        read_only = o is active[-1] and not o.rule.delete_children
                        try:
                            with db.transaction():  # nested: joins the outer one
                                o.ids = matching_ids(db, o.rule, now) if read_only else apply_rule(db, o.rule, now)
                        except RuleError as e:
                            o.error = str(e)
                    raise _Rollback
            except _Rollback:
                pass
            return out

        result = []
        for o in self._each(config, work):
            r = o.rule
            result.append({
                "rule": r.name, "databox": r.databox, "action": r.action, "active": r.active,
                "condition": describe_condition(r, now), "then": describe_action(r),
                "count": len(o.ids), "first_ids": o.ids[:PREVIEW_IDS],
                "error": o.error or (f"{o.waiting}: nothing to preview yet" if o.waiting else None),
            })
        return result
