"""task:preview — what a rule-based task (record_mover, workflow01) would change now; changes nothing."""

from __future__ import annotations

import argparse
from typing import Any

from schedulerd.commands import CommandError, arg, command, print_json


@command("task:preview", "Show, per rule, the condition in words, how many records a run would change and the "
         "first ids (changes nothing)", arg("name", help="task name, as in [tasks.NAME]"), arg("--json", action="store_true"))
def task_preview(args: argparse.Namespace, env: Any) -> int:
    from schedulerd.registry import task_type

    config = env.config()
    tc = config.tasks.get(args.name)
    if tc is None:
        raise CommandError(f"no task named {args.name!r}", 2)
    task = task_type(tc.type)(tc.settings)
    preview = getattr(task, "preview", None)
    if preview is None:
        raise CommandError(f"task {args.name} is of type {tc.type}, which has no rules to preview", 2)
    result = preview(config)
    if args.json:
        print_json(result)
    else:
        for p in result:
            state = "" if p["active"] else " [inactive: skipped by runs]"
            print(f"rule {p['rule']!r} ({p['action']}, databox {p['databox']}){state}")
            print(f"  when: {p['condition']}")
            print(f"  then: {p['then']}")
            if p["error"]:
                print(f"  error: {p['error']}")
            elif p["active"]:
                more = ", ..." if p["count"] > len(p["first_ids"]) else ""
                ids = ", ".join(map(str, p["first_ids"]))
                print(f"  would change {p['count']} records" + (f": {ids}{more}" if ids else ""))
    return 1 if any(p["error"] for p in result) else 0
