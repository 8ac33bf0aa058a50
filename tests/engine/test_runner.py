"""The runner's pure functions, and the loop in-process with a real task type."""

from __future__ import annotations

import pytest

from schedulerd.runner import backoff_delay, next_run


def test_next_run_has_no_drift():
    # an iteration that took 0.3 s of a 1 s period: the next start is one period after the last *scheduled* one
    assert next_run(100.0, 1.0, 100.3) == 101.0
    # a late wake-up does not shift the grid either
    assert next_run(101.0, 1.0, 101.05) == 102.0


def test_overrun_starts_next_at_once_without_catch_up_burst():
    assert next_run(100.0, 1.0, 103.7) == 103.7


@pytest.mark.parametrize("crashes,expected", [(1, 1.0), (2, 2.0), (3, 4.0), (4, 8.0), (10, 60.0)])
def test_backoff_grows_and_caps(crashes, expected):
    assert backoff_delay(crashes, 1.0, 60.0) == expected
