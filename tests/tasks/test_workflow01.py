"""The `workflow01` task type: collection/status from -> to, one transaction, idempotent, previewable."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from schedulerd import settings as s  # noqa: E402
from schedulerd.config import load  # noqa: E402
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.settings import ConfigError  # noqa: E402
from tasks.workflow01 import Settings, Workflow01  # noqa: E402
from tests.repository.dbx import FakeConfig, add, collect, dump, make_databox, site_config  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def box(tmp_path: Path):
    settings, db = make_databox(tmp_path)
    ids = {
        "a": add(db, "incoming", "a.jpg", status=0b10),
        "b": add(db, "incoming", "b.jpg", status=0b11),
        "c": add(db, "incoming", "c.jpg", status=0b00),
        "d": add(db, "archive", "d.jpg", status=0b10),
    }
    yield settings, db, ids
    db.close()


def workflow(**kw: object) -> Workflow01:
    return Workflow01(s.build(Settings, {"databox": "main", **kw}, "tasks.wf"))


@pytest.mark.anyio
async def test_moves_matching_records_once(tmp_path: Path, box) -> None:
    settings, db, ids = box
    task = workflow(collection_from="incoming", status_from="1x", collection_to="archive", status_to="0xx1")
    config = FakeConfig(databoxes={"main": settings})
    task.check(config)
    ctx = TaskContext.for_test("wf", task.settings, config=config, tmp_path=tmp_path)
    lines, done = collect("schedulerd.task.wf")
    try:
        assert await task.run_once(ctx) == "workflow01: 2 updated"
    finally:
        done()
    for name, status in (("a", 0b0011), ("b", 0b0011)):
        r = db.get_record(ids[name])
        assert (r.collection, r.status) == ("archive", status)
    assert db.get_record(ids["c"]).collection == "incoming"
    assert db.get_record(ids["d"]).status == 0b10  # not in collection_from
    moved = sorted([ids["a"], ids["b"]])
    assert ctx.events == [("record.updated", {"databox": "main", "ids": moved, "rule": "workflow01", "task": "wf"})]
    assert f"rule 'workflow01': updated ids {moved[0]}-{moved[1]}" in lines.text

    state = dump(settings.path)
    assert await task.run_once(ctx) == "workflow01: 0 updated"
    assert dump(settings.path) == state


@pytest.mark.anyio
async def test_status_only_workflow_and_preview(tmp_path: Path, box) -> None:
    settings, db, ids = box
    task = workflow(status_from="x1", status_to="0")  # bit 0 set, any collection: clear it
    config = FakeConfig(databoxes={"main": settings})
    state = dump(settings.path)
    preview = task.preview(config)
    assert dump(settings.path) == state
    assert [(p["count"], p["first_ids"]) for p in preview] == [(1, [ids["b"]])]
    assert preview[0]["condition"] == "records status 1 (bit 0 set) in databox main"
    ctx = TaskContext.for_test("wf", task.settings, config=config, tmp_path=tmp_path)
    await task.run_once(ctx)
    assert db.get_record(ids["b"]).status == 0b10
    assert ctx.events[0][1]["ids"] == preview[0]["first_ids"]


@pytest.mark.parametrize(("body", "error"), [
    ('collection_to = "archive"', r"tasks\.wf\.collection_from: give collection_from and/or status_from"),
    ('collection_from = "incoming"', r"tasks\.wf\.collection_to: give collection_to and/or status_to"),
    ('collection_from = "attic"\ncollection_to = "archive"',
     r"tasks\.wf\.collection_from: unknown collection 'attic' in databox main"),
    ('collection_from = "incoming"\ncollection_to = "attic"', r"tasks\.wf\.collection_to: unknown collection 'attic'"),
    ('status_from = "12"\ncollection_to = "archive"', r"tasks\.wf\.status_from: bad character '2' in '12'"),
    ('collection_from = "incoming"\nstatus_to = "x"\n', r"tasks\.wf\.collection_to: give collection_to"),
    ('databox = "photos"\ncollection_from = "incoming"\ncollection_to = "archive"',
     r"tasks\.wf\.databox: unknown databox 'photos'"),
    ('collection_from = "incoming"\ncollection_to = "archive"\ncoll0 = "x"', r"tasks\.wf\.coll0: unknown setting"),
])
def test_config_errors_name_the_key(tmp_path: Path, box, body: str, error: str) -> None:
    settings, _, _ = box
    head = '[tasks.wf]\ntype = "workflow01"\nperiod = "30s"\n'
    if "databox =" not in body:
        head += 'databox = "main"\n'
    cfg = site_config(tmp_path / "site", head + body + "\n", settings)
    with pytest.raises(ConfigError, match=error):
        load(cfg)


def test_valid_config_loads(tmp_path: Path, box) -> None:
    settings, _, _ = box
    cfg = site_config(tmp_path / "site", '[tasks.wf]\ntype = "workflow01"\nperiod = "30s"\ndatabox = "main"\n'
                      'collection_from = "incoming"\nstatus_from = "x1"\ncollection_to = "archive"\n', settings)
    tc = load(cfg).tasks["wf"]
    assert tc.period == 30 and tc.settings.rule().from_.collection == ("incoming",)
