"""The `write_metadata` task type: real records, real exiftool, values read back by a separate exiftool."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from repository import open_databox  # noqa: E402
from schedulerd.config import load  # noqa: E402
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.registry import task_type  # noqa: E402
from schedulerd.settings import ConfigError  # noqa: E402
from tasks.media import ToolNotFound  # noqa: E402
from tasks.subdefs import SubdefsTask  # noqa: E402
from tasks.write_metadata import WriteMetadataTask  # noqa: E402
from tests.media import samples  # noqa: E402

BOX = """
    [databoxes.main]
    path = "var/main.sqlite"
    storage = "var/storage"
    fields = { Title = "text", Caption = "text", Keywords = "text", Credit = "text" }
    [databoxes.main.subdefs.thumbnail]
    size = 40
    [databoxes.main.subdefs.preview]
    size = 80
    """
TASK = """
    [tasks.meta]
    type = "write_metadata"
    databox = "main"
    separator = ";"
    subdefs = ["preview"]
    [tasks.meta.fields]
    Title = "XMP-dc:Title"
    Caption = ["IPTC:Caption-Abstract", "XMP-dc:Description"]
    Keywords = "XMP-dc:Subject"
    [tasks.thumbs]
    type = "subdefs"
    databox = "main"
    """


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _exiftool() -> None:
    samples.need("exiftool")


def write_config(root: Path, body: str) -> Path:
    file = root / "etc" / "schedulerd.toml"
    file.parent.mkdir(parents=True, exist_ok=True)
    file.write_text(textwrap.dedent(BOX) + textwrap.dedent(body))
    return file


class Site:
    def __init__(self, root: Path):
        self.config = load(write_config(root, TASK))
        self.db = open_databox(self.config.databoxes["main"])
        self.db.create_collection("incoming")
        self.task = WriteMetadataTask(self.config.tasks["meta"].settings)
        self.ctx = TaskContext.for_test("meta", self.task.settings, config=self.config, tmp_path=root)
        self.thumbs = SubdefsTask(self.config.tasks["thumbs"].settings)
        self.thumbs_ctx = TaskContext.for_test("thumbs", self.thumbs.settings, config=self.config, tmp_path=root)
        self.src = root / "src"
        self.src.mkdir()


@pytest.fixture
def site(tmp_path: Path) -> Any:
    s = Site(tmp_path)
    yield s
    s.db.close()


def read_back(path: Path) -> dict[str, Any]:
    """What a separate exiftool process finds in the file."""
    out = subprocess.run(["exiftool", "-json", "-G1", "-XMP-dc:all", "-IPTC:Caption-Abstract", str(path)],
                         capture_output=True, check=True, timeout=30).stdout
    data = json.loads(out)[0]
    data.pop("SourceFile")
    return data


@pytest.mark.anyio
async def test_fields_go_into_documents_and_chosen_subdefs(site: Site) -> None:
    a = site.db.create_record("incoming", samples.jpeg_rotated(site.src / "a.jpg")).id
    b = site.db.create_record("incoming", samples.tiff16_rgb(site.src / "b.tif")).id
    site.db.set_fields(a, {"Title": "Sunset", "Caption": "Line one\nline two — ünïcode", "Keywords": "sea;sky;red",
                           "Credit": "not mapped"})
    site.db.set_fields(b, {"Title": "Deep colour"})
    assert await site.thumbs.run_once(site.thumbs_ctx) == "2 records: 4 sub-definitions built"
    assert await site.task.run_once(site.ctx) == "2 records written (4 files)"
    assert (site.ctx.done, site.ctx.total) == (2, 2)

    record = site.db.get_record(a)
    subdefs = site.db.subdefs(a)
    for path in (record.document_path, subdefs["preview"].path):
        tags = read_back(path)
        assert tags["XMP-dc:Title"] == "Sunset"
        assert tags["IPTC:Caption-Abstract"] == tags["XMP-dc:Description"] == "Line one\nline two — ünïcode"
        assert tags["XMP-dc:Subject"] == ["sea", "sky", "red"]
        assert str(tags["XMP-dc:Identifier"]) == str(a)
    assert "XMP-dc:Title" not in read_back(subdefs["thumbnail"].path)  # only the sub-definitions asked for
    assert read_back(site.db.get_record(b).document_path) == {"XMP-dc:Title": "Deep colour", "XMP-dc:Identifier": b}

    data = record.document_path.read_bytes()
    assert record.metadata_dirty == 0
    assert (record.size, record.sha256) == (len(data), hashlib.sha256(data).hexdigest())  # the record follows the file
    assert subdefs["preview"].size == subdefs["preview"].path.stat().st_size
    storage = Path(site.config.databoxes["main"].storage)
    assert not [p for p in storage.rglob("*") if p.name.endswith(("_exiftool_tmp", "_original"))]
    assert await site.task.run_once(site.ctx) == "nothing to do"


@pytest.mark.anyio
async def test_the_sweeper_drains_a_backlog_of_many_batches_in_one_pass(tmp_path: Path) -> None:
    """Dirty records no writeMetadatas job wrote, more than 3 batches of them, all written by one pass."""
    config = load(write_config(tmp_path, TASK.replace('subdefs = ["preview"]', 'batch = 2')))
    db = open_databox(config.databoxes["main"])
    try:
        db.create_collection("incoming")
        (tmp_path / "src").mkdir()
        ids = [db.create_record("incoming", samples.png_alpha(tmp_path / "src" / f"p{i}.png")).id for i in range(7)]
        for i in ids:
            db.set_fields(i, {"Title": f"title {i}"})
        task = WriteMetadataTask(config.tasks["meta"].settings)
        ctx = TaskContext.for_test("meta", task.settings, config=config, tmp_path=tmp_path)
        assert await task.run_once(ctx) == "7 records written (7 files)"
        assert (ctx.done, ctx.total) == (7, 7)
        assert db.records_with_dirty_metadata() == []
        assert read_back(db.get_record(ids[-1]).document_path)["XMP-dc:Title"] == f"title {ids[-1]}"
    finally:
        db.close()


@pytest.mark.anyio
async def test_removed_field_removes_its_tags(site: Site) -> None:
    rid = site.db.create_record("incoming", samples.png_alpha(site.src / "a.png")).id
    site.db.set_fields(rid, {"Title": "Kept", "Caption": "Going"})
    assert await site.task.run_once(site.ctx) == "1 records written (1 files)"
    site.db.set_field(rid, "Caption", None)
    assert await site.task.run_once(site.ctx) == "1 records written (1 files)"
    tags = read_back(site.db.get_record(rid).document_path)
    assert tags == {"XMP-dc:Title": "Kept", "XMP-dc:Identifier": rid}


@pytest.mark.anyio
async def test_a_refused_file_is_reported_once(site: Site, caplog: pytest.LogCaptureFixture) -> None:
    (site.src / "notes.txt").write_text("just text\n")
    bad = site.db.create_record("incoming", site.src / "notes.txt").id
    good = site.db.create_record("incoming", samples.jpeg_rotated(site.src / "g.jpg")).id
    site.db.set_field(bad, "Title", "x")
    site.db.set_field(good, "Title", "y")
    with caplog.at_level(logging.WARNING, logger="schedulerd.task.meta"):
        assert await site.task.run_once(site.ctx) == "1 records written (1 files), 1 failed"
        assert await site.task.run_once(site.ctx) == "nothing to do (1 records failed)"
        assert caplog.text.count(f"record {bad} (notes.txt): metadata not written") == 1
        assert "Writing of TXT files is not yet supported" in caplog.text
        assert site.ctx.info["failed_records"] == 1
        site.db.set_field(bad, "Title", "changed")  # a new change earns a new try
        assert await site.task.run_once(site.ctx) == "0 records written (0 files), 1 failed"
        assert caplog.text.count(f"record {bad} (notes.txt): metadata not written") == 2
    record = site.db.get_record(bad)
    assert record.document_path.read_text() == "just text\n" and record.metadata_dirty > 0
    assert read_back(site.db.get_record(good).document_path)["XMP-dc:Title"] == "y"


@pytest.mark.anyio
async def test_exiftool_missing(site: Site, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    rid = site.db.create_record("incoming", samples.jpeg_rotated(site.src / "a.jpg")).id
    site.db.set_field(rid, "Title", "t")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolNotFound, match=r"exiftool not found \(install the Debian package libimage-exiftool-perl\)"):
        await site.task.run_once(site.ctx)
    assert site.db.get_record(rid).metadata_dirty > 0


@pytest.mark.parametrize("body,message", [
    ('fields = { Title = "XMP-dc:Title -o x" }', r"tasks.meta.fields.Title: 'XMP-dc:Title -o x' is not an exiftool tag"),
    ('fields = { Title = "XMP-dc:Title", Caption = "xmp-dc:title" }',
     r"tasks.meta.fields.Caption: tag xmp-dc:title is also written by field Title"),
    ('fields = { Nope = "XMP-dc:Title" }', r"tasks.meta.fields.Nope: not a field of databox main"),
    ('subdefs = ["poster"]', r"tasks.meta.subdefs: 'poster' is not a sub-definition of databox main"),
    ('fields = { Title = "XMP-dc:Identifier" }', r"tasks.meta.id_tag: XMP-dc:Identifier is also written by field Title"),
    ('fields = { Title = [] }', r"tasks.meta.fields.Title: expected a tag"),
    ('timeout_per_file = "3s"', r"tasks.meta.timeout_per_file: unknown setting"),
])
def test_config_checks(tmp_path: Path, body: str, message: str) -> None:
    assert task_type("write_metadata") is WriteMetadataTask
    file = write_config(tmp_path, f'[tasks.meta]\ntype = "write_metadata"\ndatabox = "main"\n{body}\n')
    with pytest.raises(ConfigError, match=message):
        load(file)
