"""`command`: run an argv list (no shell) each period; also a one-off job type."""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any

from schedulerd.plugin import Context, JobType, TaskFailed, TaskType
from schedulerd.process import run_logged
from schedulerd.settings import duration


@dataclasses.dataclass(frozen=True)
class CommandSettings:
    argv: tuple[str, ...]
    cwd: Path | None = None
    # set for the program; a value "env:VAR" passes the daemon's VAR, also one withheld from
    # children because the config consumes it as a secret
    env: Mapping[str, str] = dataclasses.field(default_factory=dict)
    ok_codes: tuple[int, ...] = (0,)
    kill_grace: Annotated[float, duration] = 5.0

    def check(self) -> None:
        if not self.argv or not self.argv[0]:
            raise ValueError("argv: must name a program")
        prog = self.argv[0]
        if "/" not in prog and shutil.which(prog) is None:
            raise ValueError(f"argv: program {prog!r} not found on PATH")
        for key, value in self.env.items():
            if value.startswith("env:") and value[4:] not in os.environ:
                raise ValueError(f"env.{key}: environment variable {value[4:]} is not set")

    def program_env(self) -> dict[str, str]:
        """`env` with its "env:VAR" values taken from the daemon's environment."""
        return {k: os.environ.get(v[4:], "") if v.startswith("env:") else v for k, v in self.env.items()}


class CommandFailed(TaskFailed):
    """The program ended with a status not in ok_codes, or by a signal: an expected failure,
    logged on one line (its output is already in the log), without a traceback."""


async def run_command(settings: CommandSettings, ctx: Context) -> str:
    ctx.log.info("run %s", " ".join(settings.argv))
    code = await run_logged(settings.argv, ctx.log, cwd=settings.cwd, env=settings.program_env(),
                            grace=settings.kill_grace, label=ctx.name)
    if code not in settings.ok_codes:
        raise CommandFailed(f"{settings.argv[0]} exited with status {code}"
                            if code >= 0 else f"{settings.argv[0]} killed by signal {-code}")
    return f"exit {code}"


class CommandTask(TaskType):
    """The general task: any program, killed (process group) at the task's timeout."""

    type_name = "command"
    Settings = CommandSettings

    async def run_once(self, ctx: Context) -> str | None:
        return await run_command(self.settings, ctx)


class CommandJob(JobType):
    """Run argv once: payload `{"argv": [...], "cwd": "...", "env": {...}}`."""

    type_name = "command"

    def _settings(self, payload: Mapping[str, Any]) -> CommandSettings:
        from schedulerd.settings import ConfigError, build

        try:
            return build(CommandSettings, payload, "payload")
        except ConfigError as e:
            raise ValueError(str(e)) from None

    def check_payload(self, payload: Mapping[str, Any], config: Any) -> None:
        self._settings(payload)

    def title(self, payload: Mapping[str, Any]) -> str:
        argv = payload.get("argv") or []
        return "command: " + " ".join(map(str, argv))[:60]

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        return await run_command(self._settings(payload), ctx)
