"""Shared formatting of task snapshots for `scheduler:state` and `task:list/state`."""

from __future__ import annotations

import time
from typing import Any

ACTIVE = ("starting", "running", "waiting", "backoff")


def hms(seconds: float) -> str:
    seconds = int(seconds)
    d, rem = divmod(seconds, 86400)
    h, rem = divmod(rem, 3600)
    m, s = divmod(rem, 60)
    return f"{d}d {h}:{m:02}:{s:02}" if d else f"{h}:{m:02}:{s:02}"


def matches(snap: dict[str, Any]) -> bool:
    """Configured status and actual state agree (Phraseanet's task:state exit code)."""
    if snap["wanted"] == "started":
        return snap["state"] in ACTIVE
    return snap["state"] in ("stopped", "crashed", "stopping")


def describe(snap: dict[str, Any]) -> str:
    parts = []
    if snap.get("cluster") and snap["wanted"] == "started":  # a shared store: where the task runs
        parts.append(f"on {snap['node']}" if snap.get("node") else
                     f"pinned to {', '.join(snap['nodes'])}, not held" if snap.get("nodes") else "not held")
    info = snap.get("info") or {}
    if "pid" in info:
        parts.append(f"pid {info['pid']}")
    if snap.get("started_at") and snap["state"] in ACTIVE:
        parts.append(f"uptime {hms(time.time() - snap['started_at'])}")
    prog = snap.get("progress")
    if snap["state"] == "running" and prog and prog.get("done") is not None:
        parts.append(f"{prog['done']}/{prog['total']}" if prog.get("total") else f"{prog['done']} done")
    if snap.get("schedule") and snap.get("next_run_at"):
        parts.append(f"next at {snap['next_run_at']}")  # wall clock, in [scheduler] timezone
    elif snap.get("next_run_in") is not None:
        parts.append(f"next in {snap['next_run_in']:.0f}s")
    if snap.get("crashes"):
        parts.append(f"crashes {snap['crashes']}")
    if info.get("waiting_for"):
        parts.append(f"waiting for {info['waiting_for']}")
    if info.get("error"):
        parts.append(f"error: {info['error']}")
    last = snap.get("last_run")
    if last and last.get("outcome") != "ok" and last.get("error") and snap["state"] in ("backoff", "crashed", "stopped"):
        parts.append(f"last error: {last['error']}")
    return ", ".join(parts)


def rows(snaps: list[dict[str, Any]]) -> list[list[Any]]:
    return [[s["name"], s["type"], s["wanted"], s["state"], describe(s)] for s in snaps]


HEADERS = ["NAME", "TYPE", "CONFIGURED", "STATE", "DESCRIPTION"]
