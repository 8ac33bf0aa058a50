"""job:add|list|show|retry|cancel|purge, queue:pause|resume, worker:show-configuration|run-service."""

from __future__ import annotations

import json
import sys
import time
from typing import Any

from . import CommandError, arg, command, print_json, print_table
from ._format import hms

JOB_ID = arg("id", type=int, help="job id")
JSON = arg("--json", action="store_true")


def _store(env: Any) -> Any:
    return env.job_store()


@command("job:add", "Queue a one-off job and print its id", arg("type"), arg("--queue"),
         arg("--payload", default="{}", help="JSON object"), arg("--after", type=int, action="append", default=[],
                                                                  help="run only once job ID finished"),
         arg("--priority", type=int, default=0))
def job_add(args: Any, env: Any) -> int:
    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as e:
        raise CommandError(f"--payload: invalid JSON: {e}", 2) from None
    jid = env.add_job(args.type, payload, queue=args.queue, priority=args.priority, after=tuple(args.after))
    print(jid)
    return 0


def _progress(j: dict[str, Any]) -> str:
    if j.get("done") is None:
        return ""
    return f"{j['done']}/{j['total']}" if j.get("total") else str(j["done"])


def _live(env: Any) -> dict[int, dict[str, Any]]:
    running = env.try_call("job.running") or []
    return {j["id"]: j for j in running}


@command("job:list", "List jobs (title, progress, state, attempts, age)", arg("--state"), arg("--queue"),
         arg("--limit", type=int, default=100), JSON)
def job_list(args: Any, env: Any) -> int:
    from ..states import JobState

    if args.state and args.state not in {s.value for s in JobState}:
        raise CommandError(f"--state: expected one of {', '.join(s.value for s in JobState)}, got {args.state!r}", 2)
    store = _store(env)
    try:
        if args.queue is not None:
            _check_queue(env, store, args.queue)
        jobs = [j.to_json() for j in store.list(args.state, args.queue, args.limit)]
    finally:
        store.close()
    live = _live(env)
    jobs = [live.get(j["id"], j) if j["state"] == "running" else j for j in jobs]
    if args.json:
        print_json(jobs)
        return 0
    now = time.time()
    print_table([[j["id"], j["type"], j["queue"], j["title"][:40], _progress(j), j["state"],
                  f"{j['attempts']}/{j['max_attempts']}", hms(now - j["created"])] for j in jobs],
                ["ID", "TYPE", "QUEUE", "TITLE", "PROGRESS", "STATE", "ATTEMPTS", "AGE"])
    return 0


@command("job:show", "Show one job with its log lines", JOB_ID, JSON)
def job_show(args: Any, env: Any) -> int:
    from ..jobstore import JobError

    store = _store(env)
    try:
        job = store.get(args.id).to_json()
        lines = store.log_lines(args.id)
    except JobError as e:
        raise CommandError(str(e), 2) from None
    finally:
        store.close()
    job = _live(env).get(args.id, job)
    job["log"] = [{"ts": ts, "level": lvl, "line": line} for ts, lvl, line in lines]
    if args.json:
        print_json(job)
        return 0
    _print_fields(_fields(job))
    if job["log"]:
        print("log:")
        for entry in job["log"]:
            print(f"  {time.strftime('%H:%M:%S', time.localtime(entry['ts']))} {entry['level']} "
                  f"{_log_text(entry['line'], env.verbose)}")
    return 0


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(ts))


def _fields(job: dict[str, Any]) -> list[tuple[str, Any]]:
    """job:show's lines: what the job has (no empty values), times readable."""
    fields: list[tuple[str, Any]] = [
        ("id", job["id"]), ("type", job["type"]), ("queue", job["queue"]), ("title", job["title"]),
        ("state", job["state"]), ("priority", job["priority"]), ("attempts", f"{job['attempts']}/{job['max_attempts']}"),
        ("after", ", ".join(map(str, job["deps"]))), ("progress", _progress(job)), ("summary", job.get("summary")),
        ("error", job.get("error")), ("node", job.get("node"))]
    fields += [(key, job.get(key) and _when(job[key])) for key in ("created", "started", "finished")]
    if job["state"] in ("waiting", "interrupted"):
        fields.append(("next attempt", _when(job["next_attempt_at"])))
    fields.append(("payload", json.dumps(job["payload"])))
    return [(k, v) for k, v in fields if v not in (None, "")]


def _print_fields(fields: list[tuple[str, Any]]) -> None:
    width = max(len(k) for k, _ in fields) + 2
    for key, value in fields:
        print(f"{key + ':':{width}}{value}")


TRACEBACK = "\nTraceback (most recent call last):"


def _log_text(line: str, verbose: bool) -> str:
    """A log line as stored, its traceback only with -v; the lines after the first indented under it."""
    if TRACEBACK in line and not verbose:
        return line.split(TRACEBACK, 1)[0] + " (traceback with -v)"
    return line.replace("\n", "\n    ")


def _change(env: Any, op: str, job_id: int) -> Any:
    """One store operation on a job; its JobError becomes a clean exit 2."""
    from ..jobstore import JobError

    store = _store(env)
    try:
        return getattr(store, op)(job_id)
    except JobError as e:
        raise CommandError(str(e), 2) from None
    finally:
        store.close()


@command("job:retry", "Queue a failed, cancelled or interrupted job again (attempts reset)", JOB_ID)
def job_retry(args: Any, env: Any) -> int:
    job = _change(env, "retry", args.id)
    env.try_call("job.wake", queue=job.queue)
    print(f"job {job.id}: {job.state.value}")
    return 0


@command("job:cancel", "Cancel a waiting or running job (its dependents fail)", JOB_ID)
def job_cancel(args: Any, env: Any) -> int:
    if env.running_pid():  # the daemon may be running it: it cancels the attempt too
        job = env.call("job.cancel", id=args.id)
        print(f"job {job['id']}: {job['state']}")
        return 0
    job = _change(env, "cancel", args.id)
    print(f"job {job.id}: {job.state.value}")
    return 0


@command("job:purge", "Delete finished and/or failed jobs now", arg("--finished", action="store_true"),
         arg("--failed", action="store_true"), arg("--all", action="store_true"))
def job_purge(args: Any, env: Any) -> int:
    states = []
    if args.finished or args.all:
        states.append("finished")
    if args.failed or args.all:
        states += ["failed", "cancelled"]
    if not states:
        raise CommandError("say what to purge: --finished, --failed or --all", 2)
    store = _store(env)
    try:
        n = store.purge(states)
    finally:
        store.close()
    print(f"purged {n} jobs")
    return 0


def _check_queue(env: Any, store: Any, queue: str) -> None:
    from ..jobadd import check_queue
    from ..jobstore import JobError

    try:
        check_queue(store, env.config(), queue)
    except JobError as e:
        raise CommandError(str(e), 2) from None


def _pause(env: Any, queue: str, paused: bool) -> int:
    store = _store(env)
    try:
        _check_queue(env, store, queue)
        store.set_paused(queue, paused)
    finally:
        store.close()
    env.try_call("job.wake")
    print(f"queue {queue}: {'paused' if paused else 'resumed'}")
    return 0


@command("queue:pause", "Pause a queue: its jobs stay waiting, running ones finish", arg("queue"))
def queue_pause(args: Any, env: Any) -> int:
    return _pause(env, args.queue, True)


@command("queue:resume", "Resume a paused queue", arg("queue"))
def queue_resume(args: Any, env: Any) -> int:
    return _pause(env, args.queue, False)


@command("worker:show-configuration", "Show queues, their workers and the job types' settings", JSON)
def show_configuration(args: Any, env: Any) -> int:
    from ..jobadd import configured_queues
    from ..registry import job_types
    from ..settings import format_duration, public_view

    config = env.config()
    store = _store(env)
    try:
        paused = store.paused()
        counts = store.count_by_state()
    finally:
        store.close()
    types = {}
    for name, cls in sorted(job_types().items()):
        tc = config.jobs.type_config(name)
        view = {k: v for k, v in public_view(tc).items() if k != "settings"}
        types[name] = {**view, "queue": tc.queue or cls.default_queue}
    queues = sorted(configured_queues(config))
    data = {"queues": {q: {"workers": config.queue(q).workers, "paused": q in paused} for q in queues},
            "job_types": types, "retention": {k: v for k, v in public_view(config.jobs).items() if k != "types"},
            "jobs_by_state": counts}
    if args.json:
        print_json(data)
        return 0
    print_table([[q, v["workers"], "paused" if v["paused"] else "active"] for q, v in data["queues"].items()],
                ["QUEUE", "WORKERS", "STATUS"])
    print()
    print_table([[n, t["queue"], t["max_attempts"], format_duration(t["retry_delay"]),
                  "grows" if t["retry_backoff"] else "fixed", format_duration(t["defer"]) if t["defer"] else "-",
                  format_duration(t["timeout"]) if t["timeout"] else "-"]
                 for n, t in types.items()],
                ["JOB TYPE", "QUEUE", "MAX ATTEMPTS", "RETRY DELAY", "DELAY", "DEFER", "TIMEOUT"])
    print()
    r = data["retention"]  # durations as written in the config (`7d`), not as a clock
    print(f"retention: finished keep {r['keep_finished']} / {format_duration(r['finished_max_age'])}, "
          f"failed keep {r['keep_failed']} / {format_duration(r['failed_max_age'])}")
    return 0


@command("worker:run-service", "Run one job in this process, in the foreground (exit 0 ok, 1 failed, 2 bad input)",
         arg("type"), arg("--payload", default="{}", help="JSON object"), arg("--no-progress", action="store_true"))
def run_service(args: Any, env: Any) -> int:
    from ..service import run_service as run

    try:
        payload = json.loads(args.payload)
    except json.JSONDecodeError as e:
        raise CommandError(f"--payload: invalid JSON: {e}", 2) from None
    config = env.config()
    env.check_store()
    return run(config, args.type, payload, progress=not args.no_progress and sys.stderr.isatty())
