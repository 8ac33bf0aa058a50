"""pipeline:list|show|run|create (docs/pipelines.md)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from . import CommandError, arg, command, print_json, print_table
from ._format import hms

JSON = arg("--json", action="store_true")
PRESETS = Path(__file__).resolve().parents[2] / "etc" / "schedulerd.d" / "examples"


def _store(env: Any) -> Any:
    from ..pipelinestore import open_pipeline_store

    config = env.config()
    env.check_store()
    return open_pipeline_store(config.scheduler.state_dir, config.store, config.scheduler.store_busy_timeout)


def _age(t: float | None) -> str:
    return "" if t is None else hms(max(0.0, time.time() - t))


@command("pipeline:list", "Pipeline runs, newest first (state, current step, age)", arg("--limit", type=int, default=50),
         JSON)
def pipeline_list(args: Any, env: Any) -> int:
    store = _store(env)
    try:
        runs = store.runs(limit=args.limit)
    finally:
        store.close()
    if args.json:
        print_json([r.to_json() for r in runs])
        return 0
    print_table([[r.id, r.pipeline, r.trigger, r.state.value,
                  f"{min(r.step + 1, len(r.steps))}/{len(r.steps)}", _age(r.created), r.error or ""] for r in runs],
                ["RUN", "PIPELINE", "TRIGGER", "STATE", "STEP", "AGE", "ERROR"])
    return 0


@command("pipeline:show", "One run: each step's state, items in and out, error", arg("run", type=int), JSON)
def pipeline_show(args: Any, env: Any) -> int:
    store = _store(env)
    try:
        run = store.run(args.run)
        steps = store.steps(args.run) if run is not None else []
    finally:
        store.close()
    if run is None:
        raise CommandError(f"RUN: no pipeline run with id {args.run}", 2)
    if args.json:
        print_json({**run.to_json(), "step_rows": [s.to_json() for s in steps]})
        return 0
    print(f"run {run.id} of pipeline {run.pipeline} ({run.trigger}): {run.state.value}"
          + (f": {run.error}" if run.error else ""))
    done = {s.step: s for s in steps}
    rows = []
    for i, name in enumerate(run.steps):
        s = done.get(i)
        rows.append([i, name, s.state.value if s else "pending", "" if s is None else s.items_in,
                     "" if s is None or s.items_out is None else s.items_out, "" if s is None else s.parts,
                     "" if s is None or s.finished is None else f"{s.finished - s.started:.2f}s",
                     (s.error or "") if s else ""])
    print_table(rows, ["STEP", "NAME", "STATE", "IN", "OUT", "JOBS", "TOOK", "ERROR"])
    return 0


def _items(text: str) -> list[Any]:
    from ..plugin import Item

    if text.startswith("@"):  # --input @FILE: the items from a file (a long list)
        try:
            text = Path(text[1:]).read_text()
        except OSError as e:
            raise CommandError(f"--input: cannot read {text[1:]}: {e.strerror}", 2) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise CommandError(f"--input: invalid JSON: {e}", 2) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise CommandError("--input: expected a list of items (or one item)", 2)
    items = []
    for i, d in enumerate(data):
        try:
            items.append(Item.from_json(d))
        except ValueError as e:
            raise CommandError(f"--input[{i}]: {e}", 2) from None
    return items


@command("pipeline:run", "Start a run of a pipeline now (PutJob) and print its id",
         arg("name"),
         arg("--input", default="[]", help='JSON list of items, e.g. [{"kind": "file", "path": "/x.jpg"}], or @FILE holding it'))
def pipeline_run(args: Any, env: Any) -> int:
    config = env.config()
    pc = config.pipelines.get(args.name)
    if pc is None:
        known = ", ".join(sorted(config.pipelines)) or "none configured"
        raise CommandError(f"NAME: no pipeline named {args.name!r} (known: {known})", 2)
    items = _items(args.input)
    store = _store(env)
    try:
        rid = store.create_run(pc.name, "manual", [s.name for s in pc.steps], items)
    finally:
        store.close()
    env.try_call("pipeline.wake")
    print(rid)
    return 0


def _set(table: dict[str, Any], key: str, text: str) -> None:
    """`steps.1.databox=main`: the value as JSON, else as a TOML value, else the text itself."""
    import tomllib

    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
    *parents, last = key.split(".")
    node: Any = table
    for p in parents:
        node = node[int(p)] if isinstance(node, list) else node.setdefault(p, {})
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value


@command("pipeline:create", "Write a pipeline drop-in from a preset, check it, reload the daemon",
         arg("name"), arg("--from-preset", required=True, help="a preset of etc/schedulerd.d/examples/"),
         arg("--set", action="append", default=[], help="KEY=VALUE in the pipeline's table (steps.1.databox=main)"))
def pipeline_create(args: Any, env: Any) -> int:
    import tomllib

    import tomli_w

    from ..config import load
    from ..settings import ConfigError

    preset = PRESETS / f"{args.from_preset}.toml"
    if not preset.is_file():
        known = ", ".join(sorted(p.stem for p in PRESETS.glob("*.toml"))) or "none"
        raise CommandError(f"--from-preset: no preset {args.from_preset!r} (known: {known})", 2)
    tables = tomllib.loads(preset.read_text()).get("pipelines", {})
    table = dict(next(iter(tables.values())))
    for i, pair in enumerate(args.set):
        key, eq, text = pair.partition("=")
        if not eq or not key:
            raise CommandError(f"--set[{i}]: expected KEY=VALUE, got {pair!r}", 2)
        try:
            _set(table, key, text)
        except (KeyError, IndexError, ValueError, TypeError, AttributeError):
            raise CommandError(f"--set {key}: no such place in the preset's table", 2) from None
    env.scheduler()
    file = env.config_path
    if file is None:
        raise CommandError("no config file: use --config (the drop-in goes to schedulerd.d/ beside it)", 2)
    target = Path(file).parent / "schedulerd.d" / f"pipeline-{args.name}.toml"
    if target.exists():
        raise CommandError(f"{target} exists already: pipeline:create never rewrites a file", 2)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(f"# written by bin/console pipeline:create {args.name} --from-preset {args.from_preset}\n"
                      + tomli_w.dumps({"pipelines": {args.name: table}}))
    try:
        load(Path(file))
    except ConfigError as e:
        target.unlink()
        raise CommandError(f"{e} (nothing written)", 2) from None
    env.try_call("reload")
    print(target)
    return 0
