"""config:check — validate the configuration without touching anything."""

from __future__ import annotations

import json
from typing import Any

from . import arg, command


@command("config:check", "Validate the configuration: exit 0 when valid, 2 with the file and key path otherwise",
         arg("--json", action="store_true"), arg("--show", action="store_true", help="print the settings (secrets hidden)"))
def check(args: Any, env: Any) -> int:
    from ..logs import Redactor
    from ..settings import public_view

    config = env.config()
    if not (args.json or args.show):
        print(f"{config.file or '<embedded defaults>'}: ok ({len(config.tasks)} tasks)")
        return 0
    view = {"file": str(config.file), "base_dir": str(config.base_dir),
            "scheduler": public_view(config.scheduler), "store": public_view(config.store),
            "tasks": {n: {"type": t.type, "period": t.period, "enabled": t.enabled, "timeout": t.timeout,
                          "settings": public_view(t.settings)} for n, t in config.tasks.items()},
            **{name: public_view(dict(section)) for name, section in config.sections.items()},
            "jobs": public_view(config.jobs), "queues": public_view(dict(config.queues))}
    redactor = Redactor()  # a secret may also sit in an argv list or a URL
    redactor.add(config.secrets())
    print(redactor.redact(json.dumps(view, indent=2, sort_keys=True, default=str)))
    return 0
