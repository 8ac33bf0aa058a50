"""CLI speed: `bin/console scheduler:state` and `task:list` vs `supervisorctl status`.

Why: admins and cron scripts call the CLI constantly; it must answer faster than the tool
they know. A real daemon and a real supervisord run here with the same number of entries;
each round runs, back to back, `scheduler:state`, `task:list`, `supervisorctl status` and
`python -c pass` (the interpreter alone: the floor no Python CLI can beat), wall time of the
whole process. Reported: median of each, and the paired ratios (per round, median and min).
Target (issue 22): each of ours <= 0.5x supervisorctl and <= 2.5x the floor.

    .venv/bin/python bench/bench_control.py [--quick] [--runs N] [--entries N]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import (
    CONSOLE,
    PY,
    REPO,
    Reaper,
    alternate,
    child_env,
    machine,
    median,
    percentile,
    print_sides,
    report_paired,
    start_daemon,
    tempdir,
    wait_for,
    write_config,
)

VENV_BIN = Path(PY).parent
SUPERVISORD = VENV_BIN / "supervisord"
SUPERVISORCTL = VENV_BIN / "supervisorctl"

SUPERVISOR_CONF = """\
[unix_http_server]
file = {root}/supervisor.sock
chmod = 0700

[supervisord]
logfile = {root}/supervisord.log
pidfile = {root}/supervisord.pid
childlogdir = {root}/childlogs
nodaemon = true
user = {user}

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl = unix://{root}/supervisor.sock
"""

PROGRAM = """
[program:p{i}]
command = /bin/sleep 1000000
autorestart = true
startsecs = 0
"""


def start_supervisord(reaper: Reaper, root: Path, entries: int) -> tuple[subprocess.Popen, Path]:
    (root / "childlogs").mkdir(parents=True, exist_ok=True)
    import pwd

    conf = root / "supervisord.conf"
    conf.write_text(SUPERVISOR_CONF.format(root=root, user=pwd.getpwuid(os.getuid()).pw_name)
                    + "".join(PROGRAM.format(i=i) for i in range(entries)))
    p = reaper.popen([str(SUPERVISORD), "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     cwd=root)

    def all_running() -> bool:
        if p.poll() is not None:
            raise RuntimeError(f"supervisord exited ({p.returncode}); see {root}/supervisord.log")
        r = subprocess.run([str(SUPERVISORCTL), "-c", str(conf), "status"], capture_output=True, text=True)
        return r.stdout.count("RUNNING") == entries

    wait_for(all_running, 60, "supervisord", step=0.2)
    return p, conf


def cli_env() -> dict[str, str]:
    """As on a normal install: Python may keep its bytecode cache (__pycache__, git-ignored).
    Some CI/sandbox shells set PYTHONDONTWRITEBYTECODE, which would make our checkout recompile
    every module on every call while supervisor's site-packages ship compiled."""
    env = child_env()
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def timed(argv: list[str], expect: set[int]) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=cli_env())
    dt = time.perf_counter() - t0
    if r.returncode not in expect:
        raise RuntimeError(f"{' '.join(argv)}: exit {r.returncode}: {r.stderr.decode(errors='replace')[-500:]}")
    return dt


def import_profile(config: Path, top: int = 12, tries: int = 5) -> tuple[float, list[tuple[int, int, str]]]:
    """`-X importtime` of our CLI path, through bin/console and its flags (the quietest of `tries` runs): total import time in
    seconds and the heaviest modules (self µs, cumulative µs, name)."""
    best: tuple[float, list[tuple[int, int, str]]] | None = None
    for _ in range(tries):
        r = subprocess.run([str(CONSOLE), "--config", str(config), "scheduler:state"], capture_output=True, text=True,
                           env={**cli_env(), "PYTHONPROFILEIMPORTTIME": "1"}, cwd=REPO)
        rows = []
        for line in r.stderr.splitlines():
            if not line.startswith("import time:") or "self [us]" in line:
                continue
            self_us, cum_us, name = line[len("import time:"):].split("|")
            rows.append((int(self_us), int(cum_us), name.rstrip()))
        total = sum(s for s, _, _ in rows) / 1e6
        if best is None or total < best[0]:
            best = (total, sorted(rows, key=lambda r: r[1], reverse=True)[:top])
    assert best is not None
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="10 rounds")
    ap.add_argument("--runs", type=int, default=None, help="rounds (default 30)")
    ap.add_argument("--entries", type=int, default=5, help="tasks / programs on each side (default 5)")
    ap.add_argument("--keep", action="store_true", help="keep the temp dir")
    a = ap.parse_args()
    runs = a.runs or (10 if a.quick else 30)
    print(f"# bench_control  {machine()}")
    print(f"# {runs} rounds, {a.entries} tasks (schedulerd) / programs (supervisord), after 3 warm-ups; "
          "each round: scheduler:state, task:list, supervisorctl status, python -c pass")
    print_sides("a shell wrapper (bin/console: sh, then python -S -c: no site); parses the config file and drop-ins "
                "for [scheduler] pidfile, reads the daemon's record beside it (validates [scheduler] in full when a "
                "file is newer than the record); checks the pidfile's lock", "an XML-RPC request over HTTP on its socket",
                "supervisorctl")
    with tempdir("bench-control-", a.keep) as tmp, Reaper() as reaper:
        body = "".join(f'[tasks.t{i}]\ntype = "command"\nperiod = "1h"\nargv = ["true"]\n\n' for i in range(a.entries))
        config = write_config(tmp / "sd", body)
        start_daemon(reaper, config)
        _, sconf = start_supervisord(reaper, tmp / "sv", a.entries)
        sides = {
            "scheduler:state": ([str(CONSOLE), "--config", str(config), "scheduler:state"], {10}),
            "task:list": ([str(CONSOLE), "--config", str(config), "task:list"], {0}),
            "supervisorctl status": ([str(SUPERVISORCTL), "-c", str(sconf), "status"], {0}),
            "python -c pass": ([PY, "-c", "pass"], {0}),
        }
        for _ in range(3):
            for argv, ok in sides.values():
                timed(argv, ok)
        times = dict(zip(sides, alternate(runs, *[lambda s=s: timed(*s) for s in sides.values()]), strict=True))
        total, heavy = import_profile(config)
    for name, ts in times.items():
        print(f"{name:22} median {median(ts) * 1000:7.1f} ms   p90 {percentile(ts, 90) * 1000:7.1f} ms   "
              f"min {min(ts) * 1000:6.1f} ms")
    for ours in ("scheduler:state", "task:list"):
        report_paired(f"{ours} / supervisorctl status", times[ours], times["supervisorctl status"], "<= 0.5x",
                      lambda m: m <= 0.5)
        report_paired(f"{ours} / python -c pass", times[ours], times["python -c pass"], "<= 2.5x",
                      lambda m: m <= 2.5)
    print(f"\n# import time of our CLI path (python -X importtime): {total * 1000:.1f} ms in all; heaviest (cumulative):")
    for self_us, cum_us, name in heavy:
        print(f"#   {cum_us / 1000:6.1f} ms cum  {self_us / 1000:6.1f} ms self  {name.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
