"""The daemon process's runtime limits: open files, and the garbage collector tuned for many
long-lived runners (start-up and steady state)."""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator

log = logging.getLogger("schedulerd")

# gc's threshold for collecting its middle generation (Python's default: 10 young collections).
# A sleeping runner's wait (its coroutines, future and timer handle: a dozen objects) is made anew at
# every iteration and lives one period. With the default, thousands of them outlive two young
# collections, reach the oldest generation and trigger full collections, each scanning every
# object made since the start-up (gc.freeze): at 10,000 tasks a 100-300 ms pause every two
# seconds. At 1,000 young collections a wait ends (freed by its reference count) before its
# generation is collected. bench_precision.py, 10,000 tasks: CPU 80 -> 61 % of a core, p99 0.78 -> 0.57 s.
SLEEPERS_STAY_YOUNG = 1000


@contextlib.contextmanager
def long_lived_objects() -> Iterator[None]:
    """Objects made here live as long as the daemon (runners, their loggers and contexts): no
    cyclic collection while they are made, and afterwards they are left out of the collector's
    scans (gc.freeze). Why: with 10,000 tasks the full collections over their two million objects
    took about 3 s of the start-up and recur as the heap grows. A reload unfreezes first (gc.unfreeze),
    so runners it removes are collected."""
    gc.unfreeze()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
        gc.freeze()


def keep_sleepers_young() -> None:
    gc.set_threshold(gc.get_threshold()[0], SLEEPERS_STAY_YOUNG)


def raise_fd_limit() -> None:
    """Many tasks, children and clients: take the hard limit of open files, not the soft 1024
    (said in scheduler.log). A task holds no file between its iterations (its lock file is open
    while held, its log file among the logs.OPEN_TASK_LOGS most recent), so this is headroom."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, 1 << 20) if hard != resource.RLIM_INFINITY else 1 << 20
    if want > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            log.warning("open files limit stays %d (hard %d): raising it failed: %s", soft, hard, e)
            return
        log.info("open files limit raised from %d to %d (the hard limit)", soft, want)
