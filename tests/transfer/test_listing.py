"""Listing parsers and the remote-name checks, on real server output shapes."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from tasks.transfer.listing import parse_listing
from tasks.transfer.names import unsafe_reason

NOW = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def entries(data: bytes, *, mlsd: bool = False, zone: str = "UTC", caplog: pytest.LogCaptureFixture | None = None):  # type: ignore[no-untyped-def]
    return parse_listing(data, "/in", mlsd=mlsd, zone=ZoneInfo(zone), log=logging.getLogger("t.listing"), now=NOW)


def test_mlsd_is_utc_and_exact() -> None:
    data = (b"type=cdir;modify=20260101000000; .\r\n"
            b"type=pdir;modify=20260101000000; ..\r\n"
            b"type=file;size=1234;modify=20260309101112.5;perm=r; photo one.jpg\r\n"
            b"type=dir;modify=20260102030405; sub\r\n"
            b"Type=OS.unix=slink:/x;modify=20260102030405; link\r\n")
    es = entries(data, mlsd=True, zone="Europe/Paris")  # zone ignored for MLSD
    assert [e.name for e in es] == ["photo one.jpg", "sub", "link"]
    photo = es[0]
    assert photo.path == "/in/photo one.jpg" and photo.size == 1234 and photo.type == "file" and photo.precise
    assert photo.mtime == datetime(2026, 3, 9, 10, 11, 12, tzinfo=UTC).timestamp() + 0.5
    assert es[1].type == "dir" and es[2].type == "link"


def test_unix_list_times_are_in_the_server_zone() -> None:
    data = (b"total 8\r\n"
            b"-rw-r--r--    1 0        0            6 Mar 09 10:11 recent.txt\r\n"
            b"-rw-r--r--    1 ftp      ftp       4096 Nov 23  2025 old file.txt\r\n"
            b"drwxr-xr-x    2 0        0         4096 Jan 05 08:00 folder\r\n"
            b"lrwxrwxrwx    1 0        0            3 Jan 05 08:00 ln -> recent.txt\r\n"
            b"-rw-r--r--    1 owner     12 Dec 31 23:59 no-group\r\n")
    es = entries(data, zone="Europe/Paris")
    by = {e.name: e for e in es}
    assert set(by) == {"recent.txt", "old file.txt", "folder", "ln", "no-group"}
    assert by["recent.txt"].mtime == datetime(2026, 3, 9, 10, 11, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert not by["recent.txt"].precise
    assert by["old file.txt"].mtime == datetime(2025, 11, 23, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert by["folder"].type == "dir" and by["ln"].type == "link"
    # a date after "now" (plus a day) without a year belongs to last year
    assert by["no-group"].mtime == datetime(2025, 12, 31, 23, 59, tzinfo=ZoneInfo("Europe/Paris")).timestamp()
    assert by["no-group"].size == 12


def test_dos_list() -> None:
    data = (b"03-09-26  10:11AM                 1234 report.pdf\r\n"
            b"12-24-2025  07:30PM       <DIR>          Archive 2025\r\n")
    es = entries(data, zone="America/New_York")
    assert [(e.name, e.type, e.size) for e in es] == [("report.pdf", "file", 1234), ("Archive 2025", "dir", None)]
    assert es[0].mtime == datetime(2026, 3, 9, 10, 11, tzinfo=ZoneInfo("America/New_York")).timestamp()
    assert es[1].mtime == datetime(2025, 12, 24, 19, 30, tzinfo=ZoneInfo("America/New_York")).timestamp()


def test_unparsable_lines_are_skipped_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    data = (b"-rw-r--r--    1 0        0            6 Mar 09 10:11 good.txt\r\n"
            b"this is not a listing line\r\n"
            b"-rw-r--r--    1 0        0            6 Foo 09 10:11 bad-month.txt\r\n"
            b"\xff\xfe not utf-8\r\n")
    with caplog.at_level(logging.WARNING, "t.listing"):
        es = entries(data)
    assert [e.name for e in es] == ["good.txt"]
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3
    assert all("skipping listing line" in w for w in warnings)


@pytest.mark.parametrize(
    "name",
    ["..", "../etc/passwd", "/etc/passwd", "a/b", "a\\b", "nul\x00byte", "cr\rname", "lf\nname",
     "bell\x07", "del\x7f", "x" * 256, "é" * 128],
)
def test_unsafe_names(name: str) -> None:
    assert unsafe_reason(name) is not None


def test_safe_names() -> None:
    for name in ("photo.jpg", "Ünïcode naïve.tif", " leading space", "x" * 255, "-dash", "é" * 127):
        assert unsafe_reason(name) is None


def test_hostile_names_in_listings_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    long = b"y" * 300
    unix = (b"-rw-r--r--    1 0  0  6 Mar 09 10:11 ok.txt\r\n"
            b"-rw-r--r--    1 0  0  6 Mar 09 10:11 ../../escape.txt\r\n"
            b"-rw-r--r--    1 0  0  6 Mar 09 10:11 /etc/cron.d/evil\r\n"
            b"-rw-r--r--    1 0  0  6 Mar 09 10:11 cr\rname\r\n"
            b"-rw-r--r--    1 0  0  6 Mar 09 10:11 lf\nname\r\n"
            b"-rw-r--r--    1 0  0  6 Mar 09 10:11 ctl\x1bname\r\n"
            b"-rw-r--r--    1 0  0  6 Mar 09 10:11 " + long + b"\r\n"
            b"drwxr-xr-x    1 0  0  6 Mar 09 10:11 ..\r\n")
    mlsd = (b"type=file;size=6; ok.txt\r\n"
            b"type=file;size=6; ../escape.txt\r\n"
            b"type=file;size=6; /abs\r\n"
            b"type=file;size=6; nul\x00name\r\n")
    with caplog.at_level(logging.WARNING, "t.listing"):
        assert [e.name for e in entries(unix)] == ["ok.txt"]
        assert [e.name for e in entries(mlsd, mlsd=True)] == ["ok.txt"]
    refused = [r.getMessage() for r in caplog.records if "refusing remote name" in r.getMessage()]
    assert len(refused) == 9
    assert all("\n" not in m and "\r" not in m and "\x1b" not in m for m in refused)
