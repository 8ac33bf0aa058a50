"""FTP listing parsers: MLSD (UTC, exact) and LIST in unix `ls` or DOS `dir` form. Servers are
untrusted: a line no parser understands is skipped with a warning, unsafe names are refused."""

from __future__ import annotations

import calendar
import re
from datetime import datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo

from schedulerd.plugin import TaskLog

from .base import EntryType, RemoteEntry
from .names import check_name, join, printable

UTC = ZoneInfo("UTC")
MONTHS = {m.lower(): i for i, m in enumerate(calendar.month_abbr) if m}
_KINDS: dict[str, EntryType] = {"-": "file", "d": "dir", "D": "dir", "l": "link"}  # of a unix listing line

_UNIX = re.compile(
    r"^(?P<kind>[-dlbcpsD])[-rwxsStTlL]{9}[.+@]?\s+\d+\s+\S+\s+(?:\S+\s+)?"
    r"(?P<size>\d+)\s+(?P<mon>[A-Za-z]{3})\s+(?P<day>\d{1,2})\s+"
    r"(?:(?P<hh>\d{1,2}):(?P<mm>\d{2})|(?P<year>\d{4})) (?P<name>.+)$",
    re.S,
)
_DOS = re.compile(
    r"^(?P<mo>\d{2})-(?P<dd>\d{2})-(?P<yy>\d{2}|\d{4})\s+(?P<hh>\d{1,2}):(?P<mi>\d{2})\s*(?P<ampm>[AaPp][Mm])?"
    r"\s+(?P<size><DIR>|\d+)\s+(?P<name>.+)$",
    re.S,
)


def parse_mlsd_time(value: str) -> float:
    """`YYYYMMDDHHMMSS[.sss]`, always UTC (RFC 3659)."""
    main, _, frac = value.partition(".")
    d = datetime.strptime(main, "%Y%m%d%H%M%S").replace(tzinfo=UTC)
    return d.timestamp() + (float("0." + frac) if frac.isdigit() else 0.0)


def parse_mlsd_line(line: str, directory: str) -> tuple[str, RemoteEntry | None]:
    """(name, entry); entry None for cdir/pdir. ValueError when not an MLSD line."""
    facts_text, sep, name = line.partition(" ")
    if not sep or "=" not in facts_text:
        raise ValueError("no facts")
    facts = {key.lower(): value for key, value in (f.split("=", 1) for f in facts_text.rstrip(";").split(";"))}
    kind = facts.get("type", "").lower()
    if kind in ("cdir", "pdir"):
        return name, None
    etype: EntryType = "file" if kind == "file" else "dir" if kind == "dir" else "link" if "slink" in kind else "other"
    size = facts.get("size") or facts.get("sizd") or ""
    mtime = parse_mlsd_time(facts["modify"]) if "modify" in facts else None
    return name, RemoteEntry(name, join(directory, name), etype, int(size) if size.isdigit() else None, mtime)


def _unix_time(m: re.Match[str], zone: tzinfo, now: datetime) -> float:
    month = MONTHS.get(m["mon"].lower())
    if month is None:
        raise ValueError("month")
    day = int(m["day"])
    if m["year"]:
        return datetime(int(m["year"]), month, day, tzinfo=zone).timestamp()
    hh, mm = int(m["hh"]), int(m["mm"])
    # recent files show no year: the most recent such date not in the future (a day of slack)
    local_now = now.astimezone(zone)
    for y in range(local_now.year, local_now.year - 5, -1):
        try:
            d = datetime(y, month, day, hh, mm, tzinfo=zone)
        except ValueError:  # Feb 29 in a non-leap year
            continue
        if d <= local_now + timedelta(days=1):
            return d.timestamp()
    raise ValueError("date")


def parse_unix_line(line: str, directory: str, zone: tzinfo, now: datetime) -> tuple[str, RemoteEntry]:
    m = _UNIX.match(line)
    if m is None:
        raise ValueError("not unix")
    kind, name = m["kind"], m["name"]
    etype = _KINDS.get(kind, "other")
    if etype == "link" and " -> " in name:
        name = name.split(" -> ", 1)[0]
    return name, RemoteEntry(name, join(directory, name), etype, int(m["size"]), _unix_time(m, zone, now), False)


def parse_dos_line(line: str, directory: str, zone: tzinfo) -> tuple[str, RemoteEntry]:
    m = _DOS.match(line)
    if m is None:
        raise ValueError("not dos")
    year = int(m["yy"])
    if year < 100:
        year += 2000 if year < 70 else 1900
    hh = int(m["hh"])
    if m["ampm"]:
        hh = hh % 12 + (12 if m["ampm"].lower() == "pm" else 0)
    d = datetime(year, int(m["mo"]), int(m["dd"]), hh, int(m["mi"]), tzinfo=zone)
    name = m["name"]
    is_dir = m["size"] == "<DIR>"
    return name, RemoteEntry(name, join(directory, name), "dir" if is_dir else "file",
                             None if is_dir else int(m["size"]), d.timestamp(), False)


def parse_listing(data: bytes, directory: str, *, mlsd: bool, encoding: str = "utf-8",
                  zone: tzinfo = UTC, log: TaskLog, now: datetime | None = None) -> list[RemoteEntry]:
    """All safe entries of one listing; bad lines and unsafe names are skipped with a warning."""
    now = now or datetime.now(UTC)
    entries: list[RemoteEntry] = []
    # servers end lines with CRLF: then a bare LF or CR is part of a (hostile) name, refused below
    for raw in data.split(b"\r\n" if b"\r\n" in data else b"\n"):
        if not raw.strip():
            continue
        try:
            line = raw.decode(encoding)
        except UnicodeDecodeError:
            log.warning("skipping listing line of %s: not valid %s: %s", directory, encoding,
                        printable(raw.decode("latin-1")))
            continue
        if not mlsd and line.startswith("total "):
            continue
        try:
            if mlsd:
                name, entry = parse_mlsd_line(line, directory)
            else:
                try:
                    name, entry = parse_unix_line(line, directory, zone, now)
                except ValueError:
                    name, entry = parse_dos_line(line, directory, zone)
        except (ValueError, KeyError, OverflowError):
            log.warning("skipping listing line of %s no parser understands: %s", directory, printable(line))
            continue
        if entry is None or not check_name(name, log, directory):
            continue
        entries.append(entry)
    return entries
