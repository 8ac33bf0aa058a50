"""The `record_mover` task type: rule conditions, status masks, date deltas, deletes, preview, idempotence."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from repository import (  # noqa: E402
    DataboxSettings,
    NewRecord,  # noqa: E402
    open_databox,
)
from schedulerd import settings as s  # noqa: E402
from schedulerd.config import load  # noqa: E402
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.settings import ConfigError  # noqa: E402
from tasks.record_mover import RecordMover, RuleError, Settings, id_ranges  # noqa: E402
from tests.repository.conftest import make_box  # noqa: E402  (the backend fixtures come from conftest.py)
from tests.repository.dbx import CONSOLE, FakeConfig, add, collect, dump_box, site_config  # noqa: E402

NOW = datetime(2024, 5, 10, 23, 30, tzinfo=UTC)
FIELDS = {"Expiry": "date", "Rights": "text", "Rating": "number", "Title": "text"}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Box:
    """A databox with a known population (names -> ids)."""

    def __init__(self, settings: DataboxSettings):
        self.settings, self.db = settings, open_databox(settings)
        for c in ("incoming", "archive", "trash"):
            self.db.create_collection(c)
        add_ = lambda *a, **k: add(self.db, *a, **k)  # noqa: E731
        self.ids = {
            "r1": add_("incoming", "r1.jpg", status=0b0001, fields={"Expiry": "2024-05-10", "Rights": "expired",
                                                                     "Rating": 5}),
            "r2": add_("incoming", "r2.jpg", status=0b0101, fields={"Expiry": "2024-05-11T08:00:00"}),
            "r3": add_("incoming", "r3.jpg", status=0b0000, fields={"Expiry": "2024-05-12"}),
            "r4": add_("archive", "r4.jpg", status=0b0100, fields={"Expiry": "2024-05-09"}),
            "r5": add_("incoming", "r5.jpg", status=0b0000, fields={"Rights": "free", "Rating": 10}),
        }
        self.ids["s6"] = add_("incoming", "s6", type="story", fields={"Title": "a story"})
        self.ids["r7"] = add_("incoming", "r7.jpg", story=self.ids["s6"])
        self.names = {v: k for k, v in self.ids.items()}

    def config(self) -> FakeConfig:
        return FakeConfig(databoxes={"main": self.settings})

    def names_of(self, ids: list[int]) -> list[str]:
        return sorted(self.names[i] for i in ids)

    def status(self, name: str) -> int:
        return self.db.get_record(self.ids[name]).status

    def collection(self, name: str) -> str:
        return self.db.get_record(self.ids[name]).collection


@pytest.fixture
def box(backend: str, request: pytest.FixtureRequest, tmp_path: Path):
    """The population on SQLite and on a real PostgreSQL (tests/pgserver.py)."""
    b = Box(make_box(backend, request, tmp_path, fields=MappingProxyType(FIELDS)))
    b.request = request  # type: ignore[attr-defined]
    yield b
    b.db.close()


def mover(rules: list[dict[str, Any]], box: Box, now: datetime = NOW) -> RecordMover:
    task = RecordMover(s.build(Settings, {"rules": rules}, "tasks.m"))
    task.check(box.config())
    task.clock = lambda: now
    return task


def ctx_for(task: RecordMover, box: Box, tmp_path: Path) -> TaskContext:
    return TaskContext.for_test("m", task.settings, config=box.config(), tmp_path=tmp_path)


def rule(cond: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {"name": "r", "databox": "main", "from": cond, "to": {"status": "1xxxxxxx"}, **kw}


@pytest.mark.anyio
@pytest.mark.parametrize(("cond", "expected"), [
    ({"type": "story"}, ["s6"]),
    ({"type": "record", "collection": ["archive"]}, ["r4"]),
    ({"collection": ["archive", "trash"]}, ["r4"]),
    ({"not_collection": ["incoming"]}, ["r4"]),
    ({"status": "x1x1"}, ["r2"]),
    ({"status": "0"}, ["r3", "r4", "r5", "r7", "s6"]),
    ({"status": "0_0 0_1"}, ["r1"]),  # spaces and underscores group digits
    ({"date": {"field": "Expiry", "direction": "before", "delta_days": 0}}, ["r1", "r4"]),
    ({"date": {"field": "Expiry", "direction": "before", "delta_days": 1}}, ["r1", "r2", "r4"]),
    ({"date": {"field": "Expiry", "direction": "after", "delta_days": 1}}, ["r3"]),
    ({"date": {"field": "Expiry", "direction": "before", "delta_days": -1}}, ["r4"]),
    ({"date": [{"field": "Expiry", "direction": "after", "delta_days": -2},
               {"field": "Expiry", "direction": "before", "delta_days": 0}]}, ["r1", "r4"]),
    ({"text": {"field": "Rights", "value": "expired"}}, ["r1"]),
    ({"text": {"field": "Rights", "compare": "!=", "value": "expired"}}, ["r5"]),
    ({"text": {"field": "Rating", "compare": ">", "value": 6}}, ["r5"]),  # as numbers: "10" > "6"
    ({"text": {"field": "Rating", "compare": "<=", "value": "5"}}, ["r1"]),
    ({"text": {"field": "Title", "compare": ">=", "value": "a"}}, ["s6"]),
    ({"collection": ["incoming"], "status": "xxx1",
      "date": {"field": "Expiry", "direction": "before", "delta_days": 1}}, ["r1", "r2"]),
])
async def test_each_condition_kind(tmp_path: Path, box: Box, cond: dict, expected: list[str]) -> None:
    task = mover([rule(cond)], box)
    before = {n: box.status(n) for n in box.ids}
    await task.run_once(ctx_for(task, box, tmp_path))
    changed = sorted(n for n in box.ids if box.status(n) != before[n])
    assert changed == expected
    for n in changed:
        assert box.status(n) == before[n] | 0b1000_0000  # only bit 7 set, the others kept


@pytest.mark.anyio
@pytest.mark.parametrize(("now", "matched"), [
    (datetime(2024, 5, 10, 23, 59, 59, 500000, tzinfo=UTC), False),
    (datetime(2024, 5, 11, 0, 0, 0, 500000, tzinfo=UTC), True),
    (datetime(2024, 5, 11, 2, 0, tzinfo=timezone(timedelta(hours=3))), False),  # 23:00 UTC
])
async def test_date_deltas_across_a_day_boundary(tmp_path: Path, box: Box, now: datetime, matched: bool) -> None:
    rid = add(box.db, "trash", "edge.jpg", fields={"Expiry": "2024-05-11"})  # midnight UTC, start of that day
    task = mover([rule({"collection": ["trash"], "date": {"field": "Expiry", "direction": "before"}})], box, now)
    await task.run_once(ctx_for(task, box, tmp_path))
    assert bool(box.db.get_record(rid).status & 0x80) is matched


@pytest.mark.anyio
@pytest.mark.parametrize(("value", "direction", "now"), [
    ("2024-05-12T13:00:00+14:00", "before", datetime(2024, 5, 11, 23, 30, tzinfo=UTC)),  # 2024-05-11 23:00 UTC
    ("2024-05-10T13:00:00-12:00", "after", datetime(2024, 5, 11, 0, 30, tzinfo=UTC)),  # 2024-05-11 01:00 UTC
])
async def test_a_date_whose_offset_moves_it_to_another_day_is_matched_by_its_instant(
        tmp_path: Path, box: Box, value: str, direction: str, now: datetime) -> None:
    """The PostgreSQL rule reads the index with a text bound of the threshold's day +/- 2 days first:
    a date written a day off by its offset is still compared as the instant it is."""
    rid = add(box.db, "trash", "edge.jpg", fields={"Expiry": value})
    task = mover([rule({"collection": ["trash"], "date": {"field": "Expiry", "direction": direction}})], box, now)
    await task.run_once(ctx_for(task, box, tmp_path))
    assert box.db.get_record(rid).status & 0x80


@pytest.mark.anyio
async def test_update_moves_sets_and_clears_bits_then_a_second_pass_changes_nothing(tmp_path: Path, box: Box) -> None:
    lines, done = collect("schedulerd.task.m")
    try:
        task = mover([{"name": "to-archive", "databox": "main", "from": {"collection": ["incoming"], "status": "xxx1"},
                       "to": {"collection": "archive", "status": "10x"}}], box)
        ctx = ctx_for(task, box, tmp_path)
        old = box.db.get_record(box.ids["r2"])
        summary = await task.run_once(ctx)
        assert summary == "to-archive: 2 updated"
        assert (box.collection("r1"), box.status("r1")) == ("archive", 0b0101)  # bit 2 set, bit 1 clear, bit 0 kept
        assert (box.collection("r2"), box.status("r2")) == ("archive", 0b0101)
        assert box.db.get_record(box.ids["r2"]).updated > old.updated
        assert box.collection("r3") == "incoming"
        ids = sorted([box.ids["r1"], box.ids["r2"]])
        assert ctx.events == [("record.updated", {"databox": "main", "ids": ids, "rule": "to-archive", "task": "m"})]
        assert f"rule 'to-archive': updated ids {id_ranges(ids)}" in lines.text

        state = dump_box(box.settings)
        ctx.events.clear()
        assert await task.run_once(ctx) == "to-archive: 0 updated"
        assert dump_box(box.settings) == state and ctx.events == []
    finally:
        done()


@pytest.mark.anyio
async def test_records_already_in_the_target_state_are_skipped(tmp_path: Path, box: Box) -> None:
    # r4 is in archive with bit 2 set already: matched by `from`, but not changed (nor its `updated`)
    task = mover([{"name": "x", "databox": "main", "from": {"status": "x1xx"},
                   "to": {"collection": "archive", "status": "1xx"}}], box)
    r4 = box.db.get_record(box.ids["r4"])
    ctx = ctx_for(task, box, tmp_path)
    await task.run_once(ctx)
    assert ctx.events[0][1]["ids"] == [box.ids["r2"]]
    assert box.db.get_record(box.ids["r4"]) == r4


@pytest.mark.anyio
async def test_delete_removes_records_documents_and_story_children_after_commit(tmp_path: Path, box: Box) -> None:
    storage = Path(box.settings.storage)
    thumb = storage / "thumbs" / "s6.jpg"
    thumb.parent.mkdir(parents=True)
    thumb.write_bytes(b"jpeg")
    box.db.set_subdef(box.ids["r7"], "thumbnail", thumb, 10, 10, 4)
    r7_doc = box.db.get_record(box.ids["r7"]).document_path
    r5_doc = box.db.get_record(box.ids["r5"]).document_path
    assert r7_doc.exists() and r5_doc.exists()
    task = mover([{"name": "purge", "databox": "main", "action": "delete", "from": {"type": "story"},
                   "delete_children": True}], box)
    ctx = ctx_for(task, box, tmp_path)
    assert await task.run_once(ctx) == "purge: 2 deleted"
    assert ctx.events == [("record.deleted", {"databox": "main", "ids": sorted([box.ids["s6"], box.ids["r7"]]),
                                              "rule": "purge", "task": "m"})]
    assert not r7_doc.exists() and not thumb.exists() and r5_doc.exists()
    assert box.db.count_records() == 5
    assert await task.run_once(ctx) == "purge: 0 deleted"


@pytest.mark.anyio
async def test_delete_without_children_keeps_them(tmp_path: Path, box: Box) -> None:
    task = mover([{"name": "p", "databox": "main", "action": "delete", "from": {"type": "story"}}], box)
    await task.run_once(ctx_for(task, box, tmp_path))
    assert box.db.get_record(box.ids["r7"]).document_path.exists()
    assert box.db.count_records() == 6


@pytest.mark.anyio
async def test_preview_changes_nothing_and_equals_what_a_run_then_does(tmp_path: Path, box: Box) -> None:
    rules = [
        {"name": "expire", "databox": "main", "from": {"collection": ["incoming"],
                                                       "date": {"field": "Expiry", "direction": "before", "delta_days": 1}},
         "to": {"collection": "trash", "status": "1xxxx"}},
        # depends on the first rule's result: preview must see it too
        {"name": "purge", "databox": "main", "action": "delete", "from": {"collection": ["trash"], "status": "1xxxx"}},
        {"name": "off", "databox": "main", "active": False, "from": {}, "to": {"status": "1"}},
    ]
    task = mover(rules, box)
    docs = [box.db.get_record(i).document_path for i in box.ids.values() if box.db.get_record(i).document_path]
    state = dump_box(box.settings)
    preview = task.preview(box.config(), NOW)
    assert dump_box(box.settings) == state and all(p.exists() for p in docs)
    assert [(p["rule"], p["count"], box.names_of(p["first_ids"])) for p in preview] == [
        ("expire", 2, ["r1", "r2"]), ("purge", 2, ["r1", "r2"]), ("off", 0, [])]
    assert "records in collection 'incoming' and Expiry before now + 1 days (2024-05-11 23:30 UTC)" in preview[0]["condition"]
    assert "move them to collection 'trash' and set status 1xxxx (bit 4 set)" in preview[0]["then"]
    assert preview[1]["then"].startswith("delete them and their documents")

    ctx = ctx_for(task, box, tmp_path)
    await task.run_once(ctx)
    done = {e[1]["rule"]: e[1]["ids"] for e in ctx.events}
    assert done == {p["rule"]: p["first_ids"] for p in preview if p["count"]}


@pytest.mark.parametrize("backend", ["postgresql"])
def test_previewing_a_databoxs_last_rule_writes_no_row(tmp_path: Path, box: Box) -> None:
    """The last rule is only read (bench_record_mover: 1.5 s of rows written then rolled back at
    1,000,000 records, against a SELECT): on PostgreSQL no transaction id is even taken."""
    from tests.pgserver import PgServer

    server: PgServer = box.request.getfixturevalue("pg_server")  # type: ignore[attr-defined]
    db_name = box.settings.url.rsplit("/", 1)[1]  # type: ignore[union-attr]
    task = mover([{"name": "expire", "databox": "main", "to": {"collection": "trash", "status": "1xxxx"},
                   "from": {"collection": ["incoming"], "date": {"field": "Expiry", "direction": "before"}}}], box)
    task.preview(box.config(), NOW)  # the pool's first connections, the schema check
    xid = lambda: int(server.sql("SELECT txid_current()", db_name)[0][0])  # noqa: E731  (takes one itself)
    # The counter is the server's: a transaction elsewhere on it (autovacuum, another database's
    # work) may take ids meanwhile, never give any back; so the fewest taken over three previews
    # bound what one preview takes (the suite's full run under pytest-xdist once saw 5 more).
    taken = []
    for _ in range(3):
        before = xid()
        preview = task.preview(box.config(), NOW)
        assert [(p["rule"], p["count"], box.names_of(p["first_ids"])) for p in preview] == [("expire", 1, ["r1"])]
        taken.append(xid() - before - 1)
    assert min(taken) == 0, f"the preview wrote rows (and rolled them back): ids taken {taken}"


@pytest.mark.anyio
async def test_every_changed_id_is_logged_compactly(tmp_path: Path, box: Box) -> None:
    cid = box.db.collection("trash").id
    made = box.db.insert_ingested([NewRecord(cid, f"n{i}.jpg", f"2024/01/01/n{i}.jpg", 1, f"{i:064x}", "image/jpeg",
                                             status=0) for i in range(1200)])
    lines, done = collect("schedulerd.task.m")
    try:
        task = mover([rule({"collection": ["trash"]}, name="bulk")], box)
        assert await task.run_once(ctx_for(task, box, tmp_path)) == "bulk: 1200 updated"
    finally:
        done()
    logged = [ln.split(" ids ", 1)[1] for ln in lines.lines if "updated ids" in ln]
    assert len(logged) == 3  # 500 ids per line at most
    seen: list[int] = []
    for part in ", ".join(logged).split(", "):
        a, _, b = part.partition("-")
        seen += list(range(int(a), int(b or a) + 1))
    assert seen == made


def test_id_ranges() -> None:
    assert id_ranges([1, 2, 3, 5, 7, 8]) == "1-3, 5, 7-8"
    assert id_ranges([]) == "" and id_ranges([4]) == "4"


@pytest.mark.anyio
async def test_a_failing_rule_does_not_stop_the_others_and_fails_the_iteration(tmp_path: Path, box: Box) -> None:
    task = mover([rule({"collection": ["trash"]}, name="gone"), rule({"type": "story"}, name="ok")], box)
    box.db.connection.execute("DELETE FROM collections WHERE name = 'trash'")  # after the config was checked
    ctx = ctx_for(task, box, tmp_path)
    with pytest.raises(RuleError, match=r"rule 'gone': unknown collection 'trash' in databox main.*ok: 1 updated"):
        await task.run_once(ctx)
    assert box.status("s6") & 0x80 and [e[1]["rule"] for e in ctx.events] == ["ok"]


@pytest.mark.anyio
async def test_inactive_rules_are_skipped(tmp_path: Path, box: Box) -> None:
    state = dump_box(box.settings)
    task = mover([rule({}, active=False)], box)
    assert await task.run_once(ctx_for(task, box, tmp_path)) == "r: inactive"
    assert dump_box(box.settings) == state


# --- config ---------------------------------------------------------------------------


@pytest.mark.parametrize(("rule_toml", "error"), [
    ('from = { status = "1z0" }\nto = { status = "1" }',
     r"tasks\.m\.rules\[0\]\.from\.status: bad character 'z' in '1z0'"),
    ('from = { status = "1" }\nto = { status = "2" }', r"tasks\.m\.rules\[0\]\.to\.status: bad character '2'"),
    ('from = { text = { field = "Colour", value = "red" } }\nto = { status = "1" }',
     r"tasks\.m\.rules\[0\]\.from\.text\.field: unknown field 'Colour' in databox main"),
    ('from = { date = { field = "Title", direction = "before" } }\nto = { status = "1" }',
     r"tasks\.m\.rules\[0\]\.from\.date\.field: field 'Title' is declared text, not date"),
    ('from = { date = { field = "Expiry", direction = "later" } }\nto = { status = "1" }',
     r"tasks\.m\.rules\[0\]\.from\.date\.direction: expected 'before' or 'after'"),
    ('from = { text = { field = "Rating", compare = ">", value = "lots" } }\nto = { status = "1" }',
     r"tasks\.m\.rules\[0\]\.from\.text\.value: field 'Rating' is a number"),
    ('from = { collection = ["incoming", "attic"] }\nto = { status = "1" }',
     r"tasks\.m\.rules\[0\]\.from\.collection\[1\]: unknown collection 'attic' in databox main "
     r"\(known: archive, incoming, trash\)"),
    ('from = { status = "1" }\nto = { collection = "attic" }',
     r"tasks\.m\.rules\[0\]\.to\.collection: unknown collection 'attic'"),
    ('from = { colection = ["incoming"] }\nto = { status = "1" }',
     r"tasks\.m\.rules\[0\]\.from\.colection: unknown setting \(known: collection, date, not_collection, status, text, type\)"),
    ('from = { status = "1" }', r"tasks\.m\.rules\[0\]\.to: missing: an \"update\" rule needs a `to`"),
    ('from = { status = "1" }\nto = {}', r"tasks\.m\.rules\[0\]\.to: give a collection and/or a status mask"),
    ('action = "delete"\nfrom = {}', r"tasks\.m\.rules\[0\]\.from: a delete rule needs at least one condition"),
    ('from_ = {}', r"tasks\.m\.rules\[0\]\.from_: unknown setting \(known: action, active, databox, "
                   r"delete_children, from, name, to\); did you mean from\?"),
    ('to = { status = "1" }', r"tasks\.m\.rules\[0\]\.from: missing required setting"),
])
def test_invalid_rules_are_refused_at_config_load_with_the_key_path(tmp_path: Path, box: Box, rule_toml: str,
                                                                    error: str) -> None:
    cfg = site_config(tmp_path / "site", '[tasks.m]\ntype = "record_mover"\n[[tasks.m.rules]]\nname = "a"\n'
                      'databox = "main"\n' + rule_toml + "\n", box.settings)
    with pytest.raises(ConfigError, match=error):
        load(cfg)


def test_unknown_databox_and_duplicate_names_are_refused(tmp_path: Path, box: Box) -> None:
    cfg = site_config(tmp_path / "a", '[tasks.m]\ntype = "record_mover"\n[[tasks.m.rules]]\nname = "a"\n'
                      'databox = "photos"\nfrom = {}\nto = { status = "1" }\n', box.settings)
    with pytest.raises(ConfigError, match=r"tasks\.m\.rules\[0\]\.databox: unknown databox 'photos' \(known: main\)"):
        load(cfg)
    cfg = site_config(tmp_path / "b", '[tasks.m]\ntype = "record_mover"\n' + (
        '[[tasks.m.rules]]\nname = "a"\ndatabox = "main"\nfrom = {}\nto = { status = "1" }\n' * 2), box.settings)
    with pytest.raises(ConfigError, match=r"tasks\.m\.rules\[1\]\.name: duplicate rule name 'a'"):
        load(cfg)


# --- task:preview through the CLI --------------------------------------------------------


def test_task_preview_command(tmp_path: Path, box: Box) -> None:
    cfg = site_config(tmp_path / "site", """
        [tasks.expire]
        type = "record_mover"
        [[tasks.expire.rules]]
        name = "mark"
        databox = "main"
        from = { collection = ["incoming"], status = "xxx1" }
        to = { status = "1xxxxx" }

        [tasks.heartbeat]
        type = "command"
        argv = ["true"]
        """, box.settings)
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
    state = dump_box(box.settings)
    run = lambda *a: subprocess.run([str(CONSOLE), "--config", str(cfg), *a], capture_output=True, text=True,  # noqa: E731
                                    timeout=30, env=env)
    p = run("task:preview", "expire", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    assert [(o["rule"], o["count"], box.names_of(o["first_ids"])) for o in out] == [("mark", 2, ["r1", "r2"])]
    p = run("task:preview", "expire")
    assert "rule 'mark' (update, databox main)" in p.stdout
    assert "when: records in collection 'incoming' and status 1 (bit 0 set) in databox main" in p.stdout
    assert f"would change 2 records: {box.ids['r1']}, {box.ids['r2']}" in p.stdout
    assert dump_box(box.settings) == state
    p = run("task:preview", "heartbeat")
    assert p.returncode == 2 and "no rules to preview" in p.stderr
    assert run("task:preview", "nope").returncode == 2
