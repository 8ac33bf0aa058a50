"""schedulerd.schedule: the next run of cron expressions and ISO intervals, with a fixed clock
(pure functions: every instant is given), across both DST changes of Europe/Paris."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest

from schedulerd.schedule import CronSchedule, first_due, iso_duration, local_text, next_cron, next_interval, parse_schedule, zone

PARIS = ZoneInfo("Europe/Paris")
UTC = UTC


def utc(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


def paris(*args: int, fold: int = 0) -> float:
    return datetime(*args, tzinfo=PARIS, fold=fold).timestamp()


def runs(expression: str, since: float, until: float, tz=PARIS) -> list[float]:
    """Every start in (since, until], found the way the runner finds them: one after the other."""
    out, t = [], since
    while (t := next_cron(expression, tz, t)) <= until:
        out.append(t)
    return out


def test_a_nightly_cron_runs_at_its_wall_time_in_the_zone():
    assert next_cron("0 3 * * *", PARIS, paris(2026, 1, 10, 12, 0)) == paris(2026, 1, 11, 3, 0)
    assert next_cron("0 3 * * *", PARIS, paris(2026, 7, 10, 3, 0)) == paris(2026, 7, 11, 3, 0)  # strictly after
    assert next_cron("0 3 * * *", UTC, utc(2026, 7, 10, 2, 59, 59)) == utc(2026, 7, 10, 3, 0)


def test_spring_forward_the_missing_0230_runs_once_right_after_the_gap():
    # 2026-03-29: 02:00 CET -> 03:00 CEST (01:00 UTC); 02:30 does not exist that day
    got = runs("30 2 * * *", paris(2026, 3, 27, 12, 0), paris(2026, 3, 30, 12, 0))
    assert got == [paris(2026, 3, 28, 2, 30), utc(2026, 3, 29, 1, 0), paris(2026, 3, 30, 2, 30)]
    assert local_text(got[1], PARIS) == "2026-03-29 03:00:00 CEST"


def test_fall_back_the_repeated_0230_runs_once():
    # 2026-10-25: 03:00 CEST -> 02:00 CET (01:00 UTC); 02:30 happens at 00:30 and 01:30 UTC
    got = runs("30 2 * * *", paris(2026, 10, 23, 12, 0), paris(2026, 10, 26, 12, 0))
    assert got == [paris(2026, 10, 24, 2, 30), utc(2026, 10, 25, 0, 30), paris(2026, 10, 26, 2, 30)]
    # a clock read inside the repeated hour, after the first 02:30: no second run that night
    assert next_cron("30 2 * * *", PARIS, utc(2026, 10, 25, 1, 15)) == paris(2026, 10, 26, 2, 30)


def test_an_hourly_cron_keeps_running_every_real_hour_across_both_changes():
    spring = runs("0 * * * *", utc(2026, 3, 28, 23, 30), utc(2026, 3, 29, 3, 30))
    assert spring == [utc(2026, 3, 29, h) for h in range(0, 4)]  # 01:00 CET, 03:00 CEST, ...: one per hour
    autumn = runs("0 * * * *", utc(2026, 10, 24, 22, 30), utc(2026, 10, 25, 2, 30))
    assert autumn == [utc(2026, 10, 24, 23), *(utc(2026, 10, 25, h) for h in range(0, 3))]  # the repeated hour too


def test_a_fixed_clock_walked_minute_by_minute_over_both_change_days_sees_one_run_each():
    for day in ((2026, 3, 29), (2026, 10, 25)):
        start = paris(*day, 0, 0)
        due = next_cron("30 2 * * *", PARIS, start - 1)
        fired = 0
        for minute in range(0, 6 * 60):  # a runner waking each minute from midnight to 05:00 wall time
            now = start + minute * 60
            if now >= due:
                fired += 1
                due = next_cron("30 2 * * *", PARIS, due)
        assert fired == 1, day


def test_iso_intervals():
    start = utc(2026, 1, 1, 3, 0)
    s = parse_schedule("R/2026-01-01T03:00:00Z/PT6H", PARIS)
    assert s.next_after(start - 10) == start
    assert s.next_after(start) == start + 6 * 3600
    assert s.next_after(start + 10 * 86400 + 1) == start + 10 * 86400 + 6 * 3600
    five = parse_schedule("R5/2026-01-01T03:00:00Z/PT6H", PARIS)
    assert five.next_after(start + 4 * 6 * 3600 - 1) == start + 4 * 6 * 3600
    assert five.next_after(start + 4 * 6 * 3600) is None  # five runs in all
    assert next_interval(10.0, 2.0, None, 13.0) == 14.0
    assert iso_duration("P1DT30M") == 86400 + 1800 and iso_duration("PT2S") == 2 and iso_duration("P2W") == 14 * 86400
    local = parse_schedule("R/2026-07-01T03:00:00/P1D", PARIS)  # no offset: read in the zone
    assert local.next_after(0) == paris(2026, 7, 1, 3, 0)


@pytest.mark.parametrize("text, says", [
    ("0 3 * *", "5 fields"), ("61 3 * * *", "bad cron expression"), ("0 3 * * * *", "5 fields"),
    ("R/2026-01-01T03:00:00Z", "R/START/DURATION"), ("R/yesterday/PT6H", "expected a start time"),
    ("R/2026-01-01T03:00:00Z/P1M", "years and months"), ("R/2026-01-01T03:00:00Z/6h", "ISO-8601 duration"),
    ("R/2026-01-01T03:00:00Z/PT0S", "longer than zero"), ("R0/2026-01-01T03:00:00Z/PT1H", "R0 never runs"),
])
def test_bad_expressions_say_what_is_wrong(text, says):
    with pytest.raises(ValueError, match=says):
        parse_schedule(text, PARIS)


def test_zones():
    assert zone("Europe/Paris") == PARIS
    with pytest.raises(ValueError, match="unknown time zone 'Mars/Olympus'"):
        zone("Mars/Olympus")
    assert zone(None).utcoffset(datetime(2026, 1, 1)) is not None  # the system's


def test_first_due_catches_up_once_or_waits_for_the_next():
    s = CronSchedule("0 3 * * *", PARIS)
    slept_over = paris(2026, 5, 1, 2, 0)  # last accounted before 03:00; the daemon came back at 09:00
    now = paris(2026, 5, 1, 9, 0)
    assert first_due(s, slept_over, now, math.inf) == now  # catch_up: at once
    assert first_due(s, now, now + 1, math.inf) == paris(2026, 5, 2, 3, 0)  # ... and only once
    assert first_due(s, slept_over, now, 0) == paris(2026, 5, 2, 3, 0)  # no catch_up: the next one
    assert first_due(s, slept_over, paris(2026, 5, 1, 3, 0, 20), 60) == paris(2026, 5, 1, 3, 0, 20)  # a takeover
    assert first_due(s, None, now, math.inf) == paris(2026, 5, 2, 3, 0)  # never ran: nothing to catch up
    assert first_due(s, paris(2026, 5, 1, 8, 0), now, math.inf) == paris(2026, 5, 2, 3, 0)  # nothing missed


def test_the_system_zone_is_read_again_only_when_etc_localtime_changes(monkeypatch):
    """A task snapshot asks for the zone: the tasks page with 1,000 tasks read the file 1,000 times."""
    from schedulerd.schedule import system_zone

    monkeypatch.delenv("TZ", raising=False)
    first = system_zone()
    assert system_zone() is first
    assert zone(None) is first
