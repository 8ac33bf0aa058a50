"""When is the next run: cron expressions and ISO-8601 repeating intervals, as pure functions.

A task (or a pipeline's `schedule` trigger) says `schedule = "0 3 * * *"` (cron, read in
`[scheduler] timezone`) or `schedule = "R/2026-01-01T03:00:00Z/PT6H"` (a repeating interval as
Pydio writes it; `R5/...` runs five times in all). Times are seconds since the epoch; nothing
here reads the clock, so the tests give any instant (arq's `next_cron` habit).

Daylight saving time, for a cron expression (wall-clock times in the zone):
- a wall time that does not exist (spring, 02:30 in Europe/Paris) runs once at the first instant
  after the gap (03:00 local), as cronie does;
- a wall time that happens twice (autumn) runs once, at its first occurrence; only an expression
  whose hour field is `*` (hourly or more often) also runs in the repeated hour.
An interval counts real seconds from its start (P1D is 86400 s), so it has no DST case.
"""

from __future__ import annotations

import functools
import math
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, tzinfo
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

UTC = UTC
MAX_SHIFT = 3 * 3600.0  # seconds: more than any zone's DST change; bounds the search near one


class Schedule(Protocol):
    @property
    def expression(self) -> str:
        """The schedule as written in the config."""

    def next_after(self, t: float) -> float | None:
        """The first start strictly after `t`; None when the schedule has no more (`R5/...`)."""


# --- time zones --------------------------------------------------------------------


def zone(name: str | None) -> tzinfo:
    """`[scheduler] timezone`: an IANA name (`Europe/Paris`), or None for the system's zone
    (TZ, else /etc/localtime, else UTC). ValueError names what is wrong."""
    if name is None:
        return system_zone()
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r} (an IANA name like \"Europe/Paris\" or \"UTC\")") from None


def system_zone() -> tzinfo:
    """TZ, else /etc/localtime, else UTC. Looked up again at most once a second, and the file read
    again only when it changed: a task's snapshot asks, and the console's tasks page takes 1,000."""
    now = time.monotonic()
    if now - _system.checked_at >= 1.0:
        _system.zone, _system.checked_at = _look_up_system_zone(), now
    return _system.zone


def _look_up_system_zone() -> tzinfo:
    import os

    tz = os.environ.get("TZ", "").lstrip(":")
    if tz:
        try:
            return ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError):
            pass
    try:
        st = os.stat("/etc/localtime")
    except OSError:
        return UTC
    return _localtime((st.st_dev, st.st_ino, st.st_mtime_ns, st.st_size))


class _SystemZone:
    checked_at = -math.inf  # monotonic
    zone: tzinfo = UTC


_system = _SystemZone()


@functools.lru_cache(maxsize=4)
def _localtime(version: tuple[int, int, int, int]) -> tzinfo:
    """/etc/localtime as a zone; `version` (the file's identity and time) keys the cache."""
    try:
        with open("/etc/localtime", "rb") as f:
            return ZoneInfo.from_file(f, key="localtime")
    except (OSError, ValueError):
        return UTC


def local_text(t: float, tz: tzinfo) -> str:
    """`2026-03-29 03:00:00 CEST`: an instant on the wall clock of `tz`."""
    return datetime.fromtimestamp(t, tz).strftime("%Y-%m-%d %H:%M:%S %Z").rstrip()


# --- cron ----------------------------------------------------------------------------


def next_cron(expression: str, tz: tzinfo, after: float) -> float:
    """The first instant strictly after `after` that the cron expression names in `tz`."""
    from croniter import croniter

    start = datetime.fromtimestamp(after - MAX_SHIFT, tz).replace(tzinfo=None)
    it = croniter(expression, start)
    repeat_hour = it.expanded[1] == ["*"]
    near_change = tz.utcoffset(datetime.fromtimestamp(after - MAX_SHIFT, tz)) != \
        tz.utcoffset(datetime.fromtimestamp(after + 2 * MAX_SHIFT, tz))
    best: float | None = None
    while True:
        naive = it.get_next(datetime)
        instants = wall_instants(naive, tz, repeat_hour)
        if best is not None and instants[0] > best + MAX_SHIFT:
            return best
        for t in instants:
            if t > after and (best is None or t < best):
                best = t
        if best is not None and not near_change:
            return best  # no offset change near: wall time and instants go in the same order


def wall_instants(naive: datetime, tz: tzinfo, both_folds: bool = False) -> list[float]:
    """The instants a wall-clock time names in `tz`, earliest first: one; the end of the gap for
    a time skipped in spring; the first (or, `both_folds`, both) of a time repeated in autumn."""
    first = naive.replace(tzinfo=tz, fold=0).timestamp()
    second = naive.replace(tzinfo=tz, fold=1).timestamp()
    if first == second:
        return [first]
    if datetime.fromtimestamp(first, tz).replace(tzinfo=None) != naive:  # in a gap: fold=1 is before it
        return [_transition(second, first, tz)]
    return [first, second] if both_folds else [first]


def _transition(lo: float, hi: float, tz: tzinfo) -> float:
    """The instant in (lo, hi] where the zone's offset changes (to the second)."""
    before = tz.utcoffset(datetime.fromtimestamp(lo, tz))
    lo_i, hi_i = math.floor(lo), math.ceil(hi)
    while hi_i - lo_i > 1:
        mid = (lo_i + hi_i) // 2
        if tz.utcoffset(datetime.fromtimestamp(mid, tz)) == before:
            lo_i = mid
        else:
            hi_i = mid
    return float(hi_i)


@dataclass(frozen=True)
class CronSchedule:
    expression: str
    tz: tzinfo

    def next_after(self, t: float) -> float | None:
        return next_cron(self.expression, self.tz, t)


def check_cron(expression: str) -> None:
    """ValueError saying what is wrong with a cron expression (five fields, or @daily ...)."""
    from croniter import croniter

    fields = expression.split()
    if not expression.startswith("@") and len(fields) != 5:
        raise ValueError(f"a cron expression has 5 fields (minute hour day month weekday), got {len(fields)}")
    try:
        croniter(expression, datetime(2000, 1, 1))
    except (ValueError, KeyError) as e:
        raise ValueError(f"bad cron expression: {e}") from None


# --- ISO-8601 repeating intervals -------------------------------------------------------

_DURATION = re.compile(r"P(?:(?P<w>\d+(?:\.\d+)?)W)?(?:(?P<d>\d+(?:\.\d+)?)D)?"
                       r"(?:T(?:(?P<h>\d+(?:\.\d+)?)H)?(?:(?P<m>\d+(?:\.\d+)?)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?")
_SECONDS = {"w": 7 * 86400.0, "d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0}


def iso_duration(text: str) -> float:
    """`PT6H`, `P1D`, `P1DT30M`, `PT2S`, `P2W` in seconds; years and months (no fixed length) refused."""
    m = _DURATION.fullmatch(text)
    if m is None or text in ("P", "PT") or text.endswith("T"):
        if re.fullmatch(r"P(\d+Y)?(\d+M)?.*", text) and re.match(r"P[^T]*[YM]", text):
            raise ValueError(f"{text}: years and months have no fixed length (use a cron expression)")
        raise ValueError(f"{text}: expected an ISO-8601 duration like PT6H, P1D or PT30M")
    seconds = sum(float(v) * _SECONDS[k] for k, v in m.groupdict().items() if v)
    if seconds <= 0:
        raise ValueError(f"{text}: the interval must be longer than zero")
    return seconds


def next_interval(start: float, every: float, count: int | None, after: float) -> float | None:
    """The first of start, start + every, ... (`count` of them; None: no end) strictly after `after`."""
    n = 0 if after < start else math.floor((after - start) / every) + 1
    while start + n * every <= after:  # float rounding
        n += 1
    if count is not None and n >= count:
        return None
    return start + n * every


@dataclass(frozen=True)
class IntervalSchedule:
    expression: str
    start: float
    every: float
    count: int | None  # runs in all (`R5/`); None: `R/`, no end

    def next_after(self, t: float) -> float | None:
        return next_interval(self.start, self.every, self.count, t)


def parse_interval(text: str, tz: tzinfo) -> IntervalSchedule:
    """`R/2026-01-01T03:00:00Z/PT6H` or `R5/...`; a start without an offset is read in `tz`."""
    parts = text.split("/")
    if len(parts) != 3 or not re.fullmatch(r"R\d*", parts[0]):
        raise ValueError("expected R/START/DURATION or Rn/START/DURATION, like R/2026-01-01T03:00:00Z/PT6H")
    count = int(parts[0][1:]) if parts[0][1:] else None
    if count == 0:
        raise ValueError("R0 never runs: give the number of runs (R5) or none (R) for no end")
    try:
        start = datetime.fromisoformat(parts[1].replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{parts[1]}: expected a start time like 2026-01-01T03:00:00Z") from None
    if start.tzinfo is None:
        start = datetime.fromtimestamp(wall_instants(start, tz)[0], tz)
    return IntervalSchedule(text, start.timestamp(), iso_duration(parts[2]), count)


def parse_schedule(text: str, tz: tzinfo) -> Schedule:
    """A task's `schedule`: an ISO interval when it starts with R, else a cron expression.
    ValueError says what is wrong."""
    text = text.strip()
    if text.startswith("R"):
        return parse_interval(text, tz)
    check_cron(text)
    return CronSchedule(text, tz)


# --- where a runner starts ------------------------------------------------------------


def first_due(schedule: Schedule, cursor: float | None, now: float, grace: float) -> float | None:
    """The first start of a schedule when a runner begins (a daemon's start, a lease taken).
    `cursor`: the time the schedule was last accounted up to (its last run, as persisted), None
    if never. A start missed since then runs at once (`now`) when it fell due at most `grace`
    seconds ago (`math.inf` with catch_up: once, however many were missed); else the next one."""
    if cursor is None:
        return schedule.next_after(now)
    missed = schedule.next_after(cursor)
    if missed is not None and missed <= now:
        return now if now - missed <= grace else schedule.next_after(now)
    return missed
