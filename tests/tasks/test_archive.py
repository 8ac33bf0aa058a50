"""The `archive` task: real files, a real databox, real subprocesses killed with SIGKILL.

This module is also the crash-test runner: `python test_archive.py runner SPEC.json`
runs passes of one archive task in its own process (see `_runner`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import anyio  # noqa: E402
import pytest  # noqa: E402

from repository import DataboxSettings, StorageError, open_databox  # noqa: E402
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.settings import ConfigError, build  # noqa: E402
from tasks.archive import ArchiveTask, Settings  # noqa: E402

PX = b'<?xml version="1.0" encoding="UTF-8"?>\n<record/>\n'


@pytest.fixture
def anyio_backend():
    return "asyncio"


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Env:
    """A databox, a hotfolder with its .phrasea.xml, one archive task and its context."""

    def __init__(self, tmp: Path, name: str = "arch", *, phrasea: bytes | None = PX, collections=("photos",), **settings):
        self.tmp = tmp
        self.box = DataboxSettings(tmp / "main.sqlite", tmp / "storage")
        self.hot = tmp / "hot"
        self.hot.mkdir(exist_ok=True)
        if phrasea is not None:
            (self.hot / ".phrasea.xml").write_bytes(phrasea)
        self.db = open_databox(self.box)
        for c in collections:
            if c not in [x.name for x in self.db.collections()]:
                self.db.create_collection(c)
        self.table = {"databox": "main", "collection": "photos", "hotfolder": str(self.hot), "cold": 0, **settings}
        self.settings = build(Settings, self.table, f"tasks.{name}")
        self.config = types.SimpleNamespace(databoxes={"main": self.box})
        self.task = ArchiveTask(self.settings)
        self.task.check(self.config)
        self.ctx = TaskContext.for_test(name, self.settings, config=self.config, tmp_path=tmp)

    async def run(self, n: int = 1) -> str:
        out = ""
        for _ in range(n):
            out = await self.task.run_once(self.ctx)
        return out

    async def close(self) -> None:
        await self.task.shutdown(self.ctx)
        self.db.close()

    def put(self, rel: str, data: bytes | None = None) -> bytes:
        p = self.hot / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        data = data if data is not None else (rel.encode(errors="surrogateescape") * 3 + os.urandom(8))
        p.write_bytes(data)
        return data

    def records(self, **kw):
        return self.db.list_records(**kw)

    def by_name(self) -> dict[str, object]:
        return {r.original_name: r for r in self.records()}

    def left(self, folder: Path | None = None) -> list[str]:
        folder = folder or self.hot
        if not folder.exists():
            return []
        return sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != ".phrasea.xml")


@pytest.fixture
def env(tmp_path):
    made: list[Env] = []

    def make(**kw) -> Env:
        e = Env(tmp_path, **kw)
        made.append(e)
        return e

    yield make
    for e in made:
        anyio.run(e.close)


# --- settings ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "extra, where, words",
    [
        ({"cold": 301}, "tasks.a.cold", "0 to 300"),
        ({"cold": "-5s"}, "tasks.a.cold", "duration"),
        ({"cold": "10 minutes"}, "tasks.a.cold", "duration"),
        ({"status": "x2"}, "tasks.a.status", "bad character"),
        ({"duplicates": "maybe"}, "tasks.a.duplicates", "'allow' or 'skip' or 'error'"),
        ({"captions": ["caption.xml"]}, "tasks.a.captions[0]", "{stem}"),
        ({"accept": ["sub/*.jpg"]}, "tasks.a.accept[0]", "pattern"),
        ({"batch": 0}, "tasks.a.batch", "1 to 100000"),
        ({"colour": "red"}, "tasks.a.colour", "unknown setting"),
    ],
)
def test_bad_settings_name_the_key(tmp_path, extra, where, words):
    table = {"databox": "main", "collection": "c", "hotfolder": str(tmp_path), **extra}
    with pytest.raises(ConfigError) as e:
        build(Settings, table, "tasks.a")
    assert where in str(e.value) and words in str(e.value)


def test_settings_defaults_and_cross_check(tmp_path):
    s = build(Settings, {"databox": "main", "collection": "c", "hotfolder": "hot", "cold": "1m30s"}, "tasks.a", tmp_path)
    assert s.hotfolder == tmp_path / "hot" and s.cold == 90.0 and ArchiveTask.default_period == 30.0
    assert build(Settings, {"databox": "m", "collection": "c", "hotfolder": "/h"}, "t").cold == 30.0
    cfg = types.SimpleNamespace(databoxes={"main": DataboxSettings(tmp_path / "d.sqlite", tmp_path / "hot" / "st")})
    with pytest.raises(ConfigError, match="overlap"):
        ArchiveTask(s).check(cfg)
    with pytest.raises(ConfigError, match="unknown databox 'x'"):
        ArchiveTask(build(Settings, {"databox": "x", "collection": "c", "hotfolder": "/h"}, "t")).check(cfg)


# --- the basics ----------------------------------------------------------------------


@pytest.mark.anyio
async def test_archives_files_into_records(env):
    e = env()
    a = e.put("a.jpg", b"\xff\xd8\xff" + os.urandom(3000))
    b = e.put("sub/deeper/b b.txt")
    summary = await e.run()
    assert summary == "archived 2"
    recs = e.by_name()
    assert set(recs) == {"a.jpg", "b b.txt"}
    assert recs["a.jpg"].sha256 == sha(a) and recs["a.jpg"].document_path.read_bytes() == a
    assert recs["a.jpg"].mime == "image/jpeg" and recs["b b.txt"].mime == "text/plain"
    assert recs["b b.txt"].document_path.read_bytes() == b and recs["b b.txt"].collection == "photos"
    assert e.left() == [] and (e.hot / "sub/deeper").is_dir()  # folders stay unless asked
    assert sorted(ev[1]["record_id"] for ev in e.ctx.events) == sorted(r.id for r in recs.values())
    assert {ev[0] for ev in e.ctx.events} == {"record.created"} and e.ctx.events[0][1]["databox"] == "main"
    assert e.ctx.done == 2 and e.ctx.total == 2
    assert await e.run() == "archived 0" and len(e.records()) == 2


@pytest.mark.anyio
async def test_move_archived_keeps_copies_with_sub_paths(env):
    e = env(move_archived=True)
    data = e.put("x/y/photo.jpg")
    await e.run()
    (rec,) = e.records()
    kept = e.tmp / "hot_archived/x/y/photo.jpg"
    assert kept.read_bytes() == data and rec.document_path.read_bytes() == data
    assert kept.stat().st_ino != rec.document_path.stat().st_ino  # a copy, not the same file
    e.put("x/y/photo.jpg", b"second drop, same name")
    await e.run()
    assert (e.tmp / "hot_archived/x/y/photo (2).jpg").read_bytes() == b"second drop, same name"
    assert kept.read_bytes() == data  # nothing overwritten


@pytest.mark.anyio
async def test_missing_phrasea_xml_archives_nothing_and_says_so_once(env, caplog):
    e = env(phrasea=None)
    e.put("a.jpg")
    caplog.set_level(logging.INFO)
    for _ in range(3):
        assert (await e.run()) == f"no .phrasea.xml at {e.hot}"
    assert e.ctx.info["error"] == f"no .phrasea.xml at {e.hot}"
    assert [r.message for r in caplog.records].count(f"no .phrasea.xml at {e.hot}") == 1
    assert e.records() == [] and e.left() == ["a.jpg"]
    (e.hot / ".phrasea.xml").write_bytes(PX)
    assert await e.run() == "archived 1"
    assert "error" not in e.ctx.info


@pytest.mark.anyio
async def test_bootstrap_creates_hotfolder_and_collection(tmp_path):
    box = DataboxSettings(tmp_path / "var/main.sqlite", tmp_path / "var/storage")
    s = build(Settings, {"databox": "main", "collection": "inbox", "hotfolder": "var/hotfolders/inbox", "cold": 0,
                         "bootstrap": True}, "tasks.archive", tmp_path)
    task = ArchiveTask(s)
    ctx = TaskContext.for_test("archive", s, config=types.SimpleNamespace(databoxes={"main": box}), tmp_path=tmp_path)
    try:
        assert await task.run_once(ctx) == "archived 0"
        hot = tmp_path / "var/hotfolders/inbox"
        assert b'collection="inbox"' in (hot / ".phrasea.xml").read_bytes()
        (hot / "first.txt").write_text("hello")
        assert await task.run_once(ctx) == "archived 1"
    finally:
        await task.shutdown(ctx)
    with open_databox(box) as db:
        assert [(r.collection, r.original_name) for r in db.list_records()] == [("inbox", "first.txt")]


# --- .phrasea.xml per folder ---------------------------------------------------------


@pytest.mark.anyio
async def test_collection_and_status_per_subtree(env):
    e = env(phrasea=b'<record status="xx1x"/>', collections=("photos", "sport", "press"), status="1xxx0")
    sport_id = e.db.collection("sport").id
    e.put("top.jpg")
    e.put("sport/.phrasea.xml", b'<record collection="sport"><status>x1xxx</status></record>')
    e.put("sport/run.jpg")
    e.put("sport/inner/jump.jpg")
    e.put("sport/inner/press/.phrasea.xml", b'<record collection="press" status="0xxxx"/>')
    e.put("sport/inner/press/news.jpg")
    e.put("byid/.phrasea.xml", f'<record collection="{sport_id}"/>'.encode())
    e.put("byid/x.jpg")
    await e.run()
    got = {n: (r.collection, r.status) for n, r in e.by_name().items()}
    assert got == {
        "top.jpg": ("photos", 0b10010),
        "run.jpg": ("sport", 0b11010),
        "jump.jpg": ("sport", 0b11010),
        "news.jpg": ("press", 0b01010),
        "x.jpg": ("sport", 0b10010),
    }


@pytest.mark.anyio
async def test_unknown_and_broken_folder_settings(env, caplog):
    e = env()
    caplog.set_level(logging.INFO)
    e.put("bad/.phrasea.xml", b'<record collection="nope"/>')
    e.put("bad/a.jpg")
    e.put("broken/.phrasea.xml", b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><record>&e;</record>')
    e.put("broken/b.jpg")
    e.put("broken/deep/c.jpg")
    e.put("ok.jpg")
    await e.run(3)
    assert [r.original_name for r in e.records()] == ["ok.jpg"]
    err = e.tmp / "hot_error/bad/a.jpg.error.txt"
    assert "unknown collection 'nope'" in err.read_text() and "bad/.phrasea.xml" in err.read_text()
    assert (e.tmp / "hot_error/bad/a.jpg").exists()
    assert e.left() == ["broken/b.jpg", "broken/deep/c.jpg"]  # sent nowhere
    assert any("DOCTYPE" in p and "broken" in p for p in e.ctx.info["problems"])
    assert sum("DOCTYPE" in r.message for r in caplog.records) == 1  # said once, not every pass


@pytest.mark.anyio
@pytest.mark.parametrize("content", [b"", b"  \n\t\n", b"\xef\xbb\xbf\n"])
async def test_an_empty_phrasea_xml_means_no_folder_settings(env, content):
    """Phraseanet's documentation: "write an empty .phrasea.xml file at the root of the HotFolder"."""
    e = env(phrasea=content, collections=("photos", "press"))
    e.put("a.jpg")
    e.put("press/.phrasea.xml", b'<record collection="press"/>')
    e.put("press/inner/.phrasea.xml", content)  # an empty one below inherits
    e.put("press/inner/b.jpg")
    assert await e.run() == "archived 2"
    assert {n: r.collection for n, r in e.by_name().items()} == {"a.jpg": "photos", "b.jpg": "press"}
    assert "problems" not in e.ctx.info and "error" not in e.ctx.info


@pytest.mark.anyio
async def test_a_broken_root_phrasea_xml_is_the_task_error_not_ok(env):
    e = env(phrasea=b"<record collection=")
    e.put("a.jpg")
    for _ in range(2):
        summary = await e.run()
        assert summary.startswith(".phrasea.xml: line 1") and summary.endswith("nothing archived")
        assert e.ctx.info["error"] == summary
    assert e.records() == [] and e.left() == ["a.jpg"]
    (e.hot / ".phrasea.xml").write_bytes(PX)
    assert await e.run() == "archived 1" and "error" not in e.ctx.info


@pytest.mark.anyio
async def test_a_broken_sub_folder_phrasea_xml_shows_in_the_state(env):
    e = env()
    e.put("ok.jpg")
    e.put("sub/.phrasea.xml", b"<record")
    e.put("sub/b.jpg")
    assert await e.run() == "archived 1, problems 1"
    assert e.ctx.info["error"].startswith("sub/.phrasea.xml: line 1") and "sub are not archived" in e.ctx.info["error"]
    (e.hot / "sub/.phrasea.xml").write_bytes(b"")
    assert await e.run() == "archived 1" and "error" not in e.ctx.info


@pytest.mark.anyio
async def test_root_collection_unknown_is_a_task_problem(env):
    e = env(collection="nowhere")
    e.put("a.jpg")
    await e.run()
    assert e.records() == [] and e.left() == ["a.jpg"]
    assert any("unknown collection 'nowhere'" in p for p in e.ctx.info["problems"])


@pytest.mark.anyio
async def test_lock_magic_file(env):
    e = env()
    e.put("job/.phrasea.xml", b'<record><magicfile method="LOCK">BUSY</magicfile></record>')
    e.put("job/a.jpg")
    e.put("job/sub/b.jpg")
    e.put("job/BUSY", b"")
    await e.run(2)
    assert e.records() == [] and e.left() == ["job/BUSY", "job/a.jpg", "job/sub/b.jpg"]
    (e.hot / "job/BUSY").unlink()
    await e.run()
    assert sorted(r.original_name for r in e.records()) == ["a.jpg", "b.jpg"] and e.left() == []


@pytest.mark.anyio
async def test_unlock_magic_file(env):
    e = env()
    e.put("job/.phrasea.xml", b'<record><magicfile method="UNLOCK">READY</magicfile></record>')
    e.put("job/a.jpg")
    await e.run(2)
    assert e.records() == [] and e.left() == ["job/a.jpg"]
    e.put("job/READY", b"")
    await e.run()
    assert [r.original_name for r in e.records()] == ["a.jpg"]
    assert e.left() == []  # the magic file is removed once the folder is archived
    assert (e.hot / "job/.phrasea.xml").exists()


# --- masks, captions, errors ---------------------------------------------------------


@pytest.mark.anyio
async def test_accept_and_refuse_masks(env):
    e = env(accept=["*.jpg", "*.TIF"], refuse=["*~*"])
    e.put("a.JPG")
    e.put("b.tif")
    e.put("c.png")
    e.put("d~1.jpg")
    await e.run()
    assert sorted(r.original_name for r in e.records()) == ["a.JPG", "b.tif"]
    err = e.tmp / "hot_error"
    assert "not accepted by masks" in (err / "c.png.error.txt").read_text()
    assert "refused by mask '*~*'" in (err / "d~1.jpg.error.txt").read_text()
    assert e.left() == []


@pytest.mark.anyio
async def test_caption_sidecars(env):
    e = env(captions=["{stem}.xml", "{name}.json"], move_archived=True)
    e.put("photo.jpg")
    e.put("photo.xml", b"<record><description><Title>Harbour</Title><City>Brest</City></description>"
                       b"<status>1xx</status></record>")
    e.put("pic.png")
    e.put("pic.png.json", b'{"fields": {"Title": "From JSON"}}')
    e.put("lonely.xml", b"<record/>")  # no document of that stem: a document itself
    e.put("bad.jpg")
    e.put("bad.xml", b"<record><Title>unclosed</record>")
    await e.run()
    recs = e.by_name()
    assert set(recs) == {"photo.jpg", "pic.png", "lonely.xml"}
    assert dict(recs["photo.jpg"].fields) == {"Title": "Harbour", "City": "Brest"} and recs["photo.jpg"].status == 0b100
    assert dict(recs["pic.png"].fields) == {"Title": "From JSON"}
    assert e.left() == []
    assert e.left(e.tmp / "hot_archived") == ["lonely.xml", "photo.jpg", "photo.xml", "pic.png", "pic.png.json"]
    assert e.left(e.tmp / "hot_error") == ["bad.jpg", "bad.jpg.error.txt", "bad.xml"]
    assert "bad caption bad.xml: line 1" in (e.tmp / "hot_error/bad.jpg.error.txt").read_text()


@pytest.mark.anyio
async def test_errors_left_in_place_are_reported_once(env, caplog):
    e = env(move_error=False, refuse=["*.tmp"])
    caplog.set_level(logging.INFO)
    e.put("x.tmp")
    await e.run(3)
    assert e.left() == ["x.tmp"] and not (e.tmp / "hot_error").exists()
    assert sum("refused by mask" in r.message for r in caplog.records) == 1
    e.put("x.tmp", b"changed")  # a changed file is looked at again
    await e.run(2)
    assert sum("refused by mask" in r.message for r in caplog.records) == 2
    # a fresh task (daemon restart) remembers it too
    e2 = Env(e.tmp, refuse=["*.tmp"], move_error=False)
    caplog.clear()
    await e2.run()
    await e2.close()
    assert not any("refused" in r.message for r in caplog.records)


@pytest.mark.anyio
async def test_one_info_line_per_archived_and_rejected_file(env, caplog):
    e = env(refuse=["*.tmp"], duplicates="skip", collections=("photos", "press"))
    caplog.set_level(logging.INFO, logger="schedulerd.task.arch")
    e.put("a.jpg", b"same bytes")
    e.put("press/.phrasea.xml", b'<record collection="press"/>')
    e.put("press/b b.jpg")
    e.put("x.tmp")
    await e.run()
    recs = e.by_name()
    e.put("again.jpg", b"same bytes")
    await e.run()
    lines = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO and "state" not in r.getMessage()]
    assert lines == [
        f"rejected x.tmp: refused by mask '*.tmp' (moved to {e.tmp / 'hot_error' / 'x.tmp'})",
        f"archived a.jpg -> record {recs['a.jpg'].id}, collection photos",
        f"archived press/b b.jpg -> record {recs['b b.jpg'].id}, collection press",
        f"skipped again.jpg: duplicate of record {recs['a.jpg'].id} (removed)",
    ]


@pytest.mark.anyio
async def test_a_rejected_file_left_in_place_says_so(env, caplog):
    e = env(refuse=["*.tmp"], move_error=False)
    caplog.set_level(logging.INFO, logger="schedulerd.task.arch")
    e.put("x.tmp")
    await e.run()
    assert "rejected x.tmp: refused by mask '*.tmp' (left in place, not retried until it changes)" in caplog.messages


@pytest.mark.anyio
async def test_an_empty_file_waits_to_grow_then_goes_to_error_after_ten_colds(env):
    cold = 0.2
    e = env(cold=cold)
    e.put("growing.jpg", b"")
    e.put("forgotten.jpg", b"")
    started = time.monotonic()
    assert await e.run() == "archived 0, waiting 2"  # cold, but 0 bytes: not a record
    assert e.records() == [] and e.left() == ["forgotten.jpg", "growing.jpg"] and e.ctx.info["waiting"] == 2
    e.put("growing.jpg", b"now written")
    await anyio.sleep(cold * 1.5)
    assert await e.run() == "archived 1, waiting 1"
    assert [r.original_name for r in e.records()] == ["growing.jpg"]
    while time.monotonic() - started < cold * 10 + 0.1:
        assert e.left() == ["forgotten.jpg"]
        await anyio.sleep(cold)
    assert await e.run() == "archived 0, errors 1"
    assert e.left() == [] and [r.original_name for r in e.records()] == ["growing.jpg"]
    reason = (e.tmp / "hot_error/forgotten.jpg.error.txt").read_text()
    assert "forgotten.jpg" in reason and "empty file (0 bytes)" in reason and "10 x cold" in reason


@pytest.mark.anyio
async def test_symlinks_are_not_followed(env, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "secret.txt"
    secret.write_text("not yours")
    e = env()
    os.symlink(secret, e.hot / "link.txt")
    os.symlink(outside, e.hot / "linkdir")
    e.put("real.txt")
    await e.run(2)
    assert [r.original_name for r in e.records()] == ["real.txt"]
    assert secret.read_text() == "not yours" and sorted(p.name for p in outside.iterdir()) == ["secret.txt"]
    assert (e.hot / "link.txt").is_symlink() and (e.hot / "linkdir").is_symlink()
    assert not (e.tmp / "hot_error").exists()


@pytest.mark.anyio
async def test_a_file_swapped_for_a_symlink_after_the_scan_is_not_read(env, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("not yours")
    e = env()
    e.put("a.txt")
    o = await anyio.to_thread.run_sync(e.task._ensure_open, e.ctx)
    scan = o.scanner.scan()
    units = e.task._plan(o, scan, list(scan.files)).units
    (e.hot / "a.txt").unlink()
    os.symlink(secret, e.hot / "a.txt")
    res = o.ingestor.ingest(units)
    assert res.changed == ["a.txt"] and e.records() == []
    assert secret.read_text() == "not yours" and (e.hot / "a.txt").is_symlink()


@pytest.mark.anyio
async def test_a_hard_link_to_a_file_outside_is_copied_not_taken(env, tmp_path):
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"shared inode")
    e = env()
    os.link(outside, e.hot / "linked.bin")
    await e.run()
    (rec,) = e.records()
    assert rec.document_path.read_bytes() == b"shared inode"
    assert rec.document_path.stat().st_ino != outside.stat().st_ino
    assert outside.read_bytes() == b"shared inode" and outside.stat().st_nlink == 1


@pytest.mark.anyio
async def test_odd_names_keep_their_names(env):
    e = env(move_archived=True)
    odd = [os.fsdecode(b"caf\xe9 \xff\xfe.bin"), "with  spaces .jpg", "x" * 250 + ".jpg", "ünï cødé.txt", "-rf *"]
    datas = {n: e.put(n) for n in odd}
    await e.run()
    assert e.left() == []
    for n, data in datas.items():
        assert (e.tmp / "hot_archived" / n).read_bytes() == data
    names = {r.original_name: r for r in e.records()}
    assert names["caf\\xe9 \\xff\\xfe.bin"].sha256 == sha(datas[odd[0]])
    assert set(names) == {"caf\\xe9 \\xff\\xfe.bin", *odd[1:]}


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["allow", "skip", "error"])
async def test_duplicates(env, mode):
    e = env(duplicates=mode, move_archived=(mode == "skip"))
    first = e.put("first.jpg", b"same bytes")
    await e.run()
    e.put("again.jpg", first)
    e.put("twin1.jpg", b"twin")
    e.put("twin2.jpg", b"twin")
    await e.run()
    names = sorted(r.original_name for r in e.records())
    assert e.left() == []
    if mode == "allow":
        assert names == ["again.jpg", "first.jpg", "twin1.jpg", "twin2.jpg"]
    elif mode == "skip":
        assert names == ["first.jpg", "twin1.jpg"]
        assert "again.jpg" in e.left(e.tmp / "hot_archived") and "twin2.jpg" in e.left(e.tmp / "hot_archived")
    else:
        assert names == ["first.jpg", "twin1.jpg"]
        first_id = e.by_name()["first.jpg"].id
        assert f"duplicate of record {first_id}" in (e.tmp / "hot_error/again.jpg.error.txt").read_text()
        assert "twin1.jpg (same batch)" in (e.tmp / "hot_error/twin2.jpg.error.txt").read_text()
    stored = [p for p in (e.tmp / "storage").rglob("*") if p.is_file()]
    assert len(stored) == len(names)  # no stray documents from skipped or refused twins


@pytest.mark.anyio
async def test_delete_empty_folders(env):
    e = env(delete_empty_folders=True)
    e.put("a/b/c/one.jpg")
    e.put("a/keep.txt/.hidden", b"")  # a hidden file is not archived: its folder is not empty
    e.put("conf/.phrasea.xml", PX)
    e.put("conf/two.jpg")
    (e.hot / "untouched").mkdir()
    await e.run()
    assert len(e.records()) == 2
    assert not (e.hot / "a/b").exists() and (e.hot / "a/keep.txt").is_dir()
    assert (e.hot / "conf/.phrasea.xml").exists() and (e.hot / "untouched").is_dir()


@pytest.mark.anyio
@pytest.mark.parametrize("move_archived", [False, True])
async def test_unwritable_storage_loses_nothing(env, move_archived):
    e = env(move_archived=move_archived)
    await e.run()  # opens the databox and its storage
    day = e.db.store._today()
    blocker = e.tmp / "storage" / day.split("/")[0]
    if blocker.exists():
        for p in sorted(blocker.rglob("*"), reverse=True):
            p.rmdir() if p.is_dir() else p.unlink()
        blocker.rmdir()
    blocker.write_text("a file where the year folder should be")
    e.task._open.db.store._made.clear()
    datas = {f"g{i}.bin": e.put(f"g{i}.bin") for i in range(5)}
    with pytest.raises(StorageError):
        await e.run()
    assert e.records() == []
    assert {n: (e.hot / n).read_bytes() for n in datas} == datas
    assert not (e.tmp / "hot_archived").exists() or e.left(e.tmp / "hot_archived") == []
    assert list((e.tmp / "storage/.tmp").glob("*")) == []
    blocker.unlink()
    assert await e.run() == "archived 5"
    assert {r.original_name: r.sha256 for r in e.records()} == {n: sha(d) for n, d in datas.items()}


# --- stability -----------------------------------------------------------------------


@pytest.mark.anyio
async def test_slow_writer_is_not_archived_until_cold(env):
    cold = 0.8
    e = env(cold=cold)
    path = e.hot / "growing.bin"
    last_write = 0.0
    written = b""

    async def writer():
        nonlocal last_write, written
        with open(path, "ab") as fh:
            for _ in range(8):
                chunk = os.urandom(1000)
                fh.write(chunk)
                fh.flush()
                written += chunk
                last_write = time.time()
                await anyio.sleep(0.25)

    async with anyio.create_task_group() as tg:
        tg.start_soon(writer)
        await anyio.sleep(0.05)
        with anyio.fail_after(20):
            while not e.records():
                await e.run()
                if tg.cancel_scope.cancel_called is False and not e.records():
                    await anyio.sleep(0.05)
    (rec,) = e.records()
    from datetime import datetime

    archived_at = datetime.fromisoformat(rec.created).timestamp()
    assert archived_at - last_write >= cold * 0.95
    assert rec.size == 8000 and rec.sha256 == sha(written)


@pytest.mark.anyio
async def test_a_file_changed_during_the_pass_is_left_for_later(env):
    """Even with cold 0: a file that differs from what was scanned is not archived half."""
    e = env()
    e.put("a.bin", b"a" * 10)
    o = await anyio.to_thread.run_sync(e.task._ensure_open, e.ctx)
    scan = o.scanner.scan()
    units = e.task._plan(o, scan, list(scan.files)).units
    (e.hot / "a.bin").write_bytes(b"a" * 20)  # grows after the scan
    res = o.ingestor.ingest(units)
    assert res.changed == ["a.bin"] and res.created == [] and e.records() == []
    assert (e.hot / "a.bin").read_bytes() == b"a" * 20
    assert await e.run() == "archived 1" and e.records()[0].size == 20


# --- the watcher ---------------------------------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("polling", [False, True])
async def test_watcher_wakes_the_task(env, polling):
    e = env(force_polling=polling)
    async with anyio.create_task_group() as tg:
        tg.start_soon(e.task.background, e.ctx)
        with anyio.fail_after(8):
            assert await e.ctx.sleep(30) is True  # the watcher is on: it wakes the task once
        e.put("sub/new.jpg")
        with anyio.fail_after(8):
            assert await e.ctx.sleep(30) is True
        started = time.monotonic()
        tg.cancel_scope.cancel()
    assert time.monotonic() - started < 3  # the watcher thread stops promptly


@pytest.mark.anyio
async def test_a_file_there_before_the_watcher_is_on_wakes_the_task(env):
    """A file that came after the last pass's scan but before the watcher started (the daemon's
    start, a hotfolder that appears) makes no event: the watcher wakes the task once it is on,
    so the file waits no period."""
    e = env()
    e.put("early.jpg")
    async with anyio.create_task_group() as tg:
        tg.start_soon(e.task.background, e.ctx)
        with anyio.fail_after(8):
            assert await e.ctx.sleep(30) is True
        tg.cancel_scope.cancel()
    assert await e.run() == "archived 1"


# --- crash safety --------------------------------------------------------------------


def _runner(spec_path: str) -> None:
    """Run archive passes until the hotfolder is empty; print a line after each batch."""
    spec = json.loads(Path(spec_path).read_text())
    tmp = Path(spec["tmp"])
    box = DataboxSettings(tmp / "main.sqlite", tmp / "storage")
    s = build(Settings, spec["settings"], "tasks.crash")
    ctx = TaskContext.for_test("crash", s, config=types.SimpleNamespace(databoxes={"main": box}), tmp_path=tmp)
    task = ArchiveTask(s)
    from repository import Ingestor

    real = Ingestor.ingest

    def ingest(self, units):
        res = real(self, units)
        print(f"batch {len(res.created)}", flush=True)
        return res

    Ingestor.ingest = ingest

    async def main():
        for _ in range(50):
            await task.run_once(ctx)
            if not any(p.is_file() and p.name != ".phrasea.xml" for p in Path(s.hotfolder).rglob("*")):
                break
        await task.shutdown(ctx)

    anyio.run(main)
    print("done", flush=True)


def _spawn(tmp: Path, settings: dict, crash_at: str = "") -> subprocess.Popen:
    spec = tmp / "spec.json"
    spec.write_text(json.dumps({"tmp": str(tmp), "settings": settings}))
    env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CRASH_AT"}
    if crash_at:
        env["SCHEDULERD_CRASH_AT"] = crash_at
    return subprocess.Popen([sys.executable, __file__, "runner", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)


def _drop(hot: Path, n: int, *, captions: bool = False, sub: bool = True) -> dict[str, bytes]:
    files = {}
    for i in range(n):
        rel = f"d{i % 3}/f{i:05d}.bin" if sub else f"f{i:05d}.bin"
        data = f"file {i} ".encode() + os.urandom(16)
        (hot / rel).parent.mkdir(parents=True, exist_ok=True)
        (hot / rel).write_bytes(data)
        files[rel] = data
        if captions and i % 4 == 0:
            (hot / rel).with_suffix(".xml").write_bytes(f"<record><Title>t{i}</Title></record>".encode())
    return files


def _check_exactly_once(tmp: Path, files: dict[str, bytes], *, archived: bool, captions: bool = False,
                        journal: Path | None = None, box: DataboxSettings | None = None, hot: Path | None = None) -> None:
    box = box or DataboxSettings(tmp / "main.sqlite", tmp / "storage")
    with open_databox(box) as db:
        recs = db.list_records()
    by_name: dict[str, list] = {}
    for r in recs:
        by_name.setdefault(r.original_name, []).append(r)
    names = {Path(rel).name: data for rel, data in files.items()}
    assert {n: len(v) for n, v in by_name.items() if len(v) != 1} == {}, "archived twice"
    assert set(by_name) == set(names), f"lost: {sorted(set(names) - set(by_name))[:5]}"
    for n, (r,) in by_name.items():
        assert r.sha256 == sha(names[n]) and r.document_path.read_bytes() == names[n]
        if captions and int(n[1:6]) % 4 == 0:
            assert dict(r.fields) == {"Title": f"t{int(n[1:6])}"}
    hot = hot or tmp / "hot"
    assert [p for p in hot.rglob("*") if p.is_file() and p.name != ".phrasea.xml"] == []
    stored = {p for p in box.storage.rglob("*") if p.is_file() and ".tmp" not in p.parts}
    assert stored == {r.document_path for r in recs}, "stray documents in storage"
    assert list((box.storage / ".tmp").glob("*")) == []
    if archived:
        kept = {str(p.relative_to(tmp / "hot_archived")): p.read_bytes()
                for p in (tmp / "hot_archived").rglob("*") if p.is_file() and p.suffix != ".xml"}
        assert kept == files
    journal = journal or tmp / "state/archive-crash.journal.sqlite"
    assert sqlite3.connect(journal).execute("SELECT count(*) FROM batches").fetchone()[0] == 0
    assert not hot.with_name(hot.name + "_error").exists()


POINTS = ["journaled", "hashed", "stored", "synced", "committed", "finished:3", "before_done"]


@pytest.mark.parametrize("move_archived", [False, True], ids=["move", "copy"])
@pytest.mark.parametrize("point", POINTS)
def test_crash_at_each_step_then_clean_pass(tmp_path, point, move_archived):
    hot = tmp_path / "hot"
    hot.mkdir()
    (hot / ".phrasea.xml").write_bytes(PX)
    open_databox(DataboxSettings(tmp_path / "main.sqlite", tmp_path / "storage")).create_collection("photos")
    files = _drop(hot, 30, captions=True)
    settings = {"databox": "main", "collection": "photos", "hotfolder": str(hot), "cold": 0, "batch": 7,
                "captions": ["{stem}.xml"], "move_archived": move_archived}
    p = _spawn(tmp_path, settings, crash_at=f"{point}:2" if ":" not in point else point)
    out, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGKILL, (out, err)
    p = _spawn(tmp_path, settings)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0 and "done" in out, err
    _check_exactly_once(tmp_path, files, archived=move_archived, captions=True)


def _count(db_path: Path) -> int:
    try:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    except sqlite3.OperationalError:
        return 0
    try:
        return conn.execute("SELECT count(*) FROM records").fetchone()[0]
    except sqlite3.OperationalError:
        return 0
    finally:
        conn.close()


def test_kill_9_the_daemon_during_a_2000_file_ingest(tmp_path):
    """The real daemon (`bin/console scheduler:run`), SIGKILLed 20 times at random moments while
    it archives 2,000 files, then one clean pass (`task:run`): each file archived exactly once."""
    rnd = random.Random(os.environ.get("ARCHIVE_CRASH_SEED", "20"))
    (tmp_path / "etc").mkdir()
    conf = tmp_path / "etc/schedulerd.toml"
    conf.write_text(
        '[scheduler]\nsocket = "var/run/s.sock"\npidfile = "var/run/s.pid"\nlog_dir = "var/log"\n'
        'state_dir = "var/state"\n'
        '[databoxes.main]\npath = "var/main.sqlite"\nstorage = "var/storage"\n'
        '[tasks.inbox]\ntype = "archive"\nperiod = "1h"\ndatabox = "main"\ncollection = "photos"\n'
        'hotfolder = "var/hot"\ncold = 0\nbatch = 15\n'
    )
    var = tmp_path / "var"
    hot = var / "hot"
    hot.mkdir(parents=True)
    (hot / ".phrasea.xml").write_bytes(PX)
    box = DataboxSettings(var / "main.sqlite", var / "storage")
    with open_databox(box) as db:
        db.create_collection("photos")
    files = _drop(hot, 2000)
    console = str(ROOT / "bin/console")
    env = {**os.environ, "SCHEDULERD_CONFIG": str(conf)}
    env.pop("SCHEDULERD_CRASH_AT", None)
    counts = []
    with open(tmp_path / "daemon.out", "ab") as out:
        for _ in range(20):
            before = _count(box.path)
            if before >= 1900:  # leave room: every kill must land in the middle of the ingest
                break
            target = before + rnd.randint(1, 60)
            p = subprocess.Popen([console, "scheduler:run"], stdout=out, stderr=out, env=env)
            deadline = time.monotonic() + 30
            while _count(box.path) < target and p.poll() is None and time.monotonic() < deadline:
                time.sleep(0.002)
            time.sleep(rnd.uniform(0, 0.02))  # a batch takes a few ms: land anywhere in the next ones
            p.kill()
            p.wait(10)
            assert p.returncode == -signal.SIGKILL, (tmp_path / "daemon.out").read_text()[-2000:]
            counts.append(_count(box.path))
    mid = [c for c in counts if 0 < c < 2000]
    assert len(mid) >= 10, counts  # at least ten kills landed in the middle of the ingest
    print("records after each kill:", counts)
    done = subprocess.run([console, "task:run", "inbox"], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    _check_exactly_once(tmp_path, files, archived=False, box=box, hot=hot,
                        journal=var / "state/tasks/inbox/archive-inbox.journal.sqlite")


def test_kill_9_at_random_moments_with_copies_then_clean_pass(tmp_path):
    n, kills, move_archived = 300, 8, True
    rnd = random.Random(os.environ.get("ARCHIVE_CRASH_SEED", "5"))
    hot = tmp_path / "hot"
    hot.mkdir()
    (hot / ".phrasea.xml").write_bytes(PX)
    open_databox(DataboxSettings(tmp_path / "main.sqlite", tmp_path / "storage")).create_collection("photos")
    files = _drop(hot, n)
    settings = {"databox": "main", "collection": "photos", "hotfolder": str(hot), "cold": 0, "batch": 15,
                "move_archived": move_archived}
    killed = 0
    for _ in range(kills):
        p = _spawn(tmp_path, settings)
        batches = rnd.randint(0, 4)
        assert p.stdout is not None
        for _ in range(batches):
            if not p.stdout.readline():
                break
        time.sleep(rnd.uniform(0, 0.004))
        p.send_signal(signal.SIGKILL)
        p.communicate(timeout=30)
        killed += p.returncode == -signal.SIGKILL
    assert killed >= kills * 0.8  # most runs really died mid-way
    p = _spawn(tmp_path, settings)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    _check_exactly_once(tmp_path, files, archived=move_archived)


if __name__ == "__main__" and sys.argv[1:2] == ["runner"]:
    _runner(sys.argv[2])
