"""What the archive reads from a document: its embedded IPTC/XMP/EXIF tags into the fields that
name them (`src`), and (through subdefCreation) its text into the full-text index. Real exiftool,
pdftotext and files, the real CLI."""

from __future__ import annotations

import json
import logging
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from schedulerd.config import load
from schedulerd.context import TaskContext
from tasks.archive import ArchiveTask
from tests.engine.conftest import Site, anyio_backend  # noqa: F401  (fixture)
from tests.media import samples

FIELDS = """
    [databoxes.main.fields]
    Keywords = { type = "text", src = "IPTC:Keywords" }
    Title = { src = "XMP-dc:Title" }
    Shot = { type = "date", src = "EXIF:DateTimeOriginal" }
    Rating = { type = "number", src = "XMP-dc:Source" }
    Note = "text"
    """


def _box(site: Site, *, fields: str = FIELDS, box: str = "", task: str = "") -> Path:
    hot = site.root / "hot"  # made with its .phrasea.xml by the first pass (bootstrap)
    site.write(f"""
        [databoxes.main]
        path = "var/main.sqlite"
        storage = "var/storage"
        {box}
        {fields}
        [tasks.inbox]
        type = "archive"
        databox = "main"
        collection = "inbox"
        hotfolder = "{hot}"
        cold = 0
        bootstrap = true
        captions = ["{{stem}}.xml"]
        {task}
        [queues.subdefCreation]
        workers = 0
        """)
    site.console("task:run", "inbox", "--no-progress", check=True)
    return hot


def _tagged_jpeg(path: Path, *tags: str) -> Path:
    Image.new("RGB", (64, 48), "red").save(path)
    subprocess.run(["exiftool", "-q", "-overwrite_original", "-charset", "iptc=UTF8",
                    "-IPTC:CodedCharacterSet=UTF8", *tags, str(path)], check=True, timeout=30)
    return path


def _index(site: Site) -> None:
    ran = site.console("worker:run-service", "populateIndex", "--payload", '{"databox": "main"}')
    assert ran.returncode == 0, ran.stderr


def _found(site: Site, word: str) -> list[str]:
    p = site.console("record:search", word, "--json")
    return [h["name"] for h in json.loads(p.stdout)] if p.returncode == 0 else []


def test_embedded_iptc_xmp_exif_become_fields_and_are_searchable(site: Site) -> None:  # noqa: F811
    samples.need("exiftool")
    hot = _box(site)
    _tagged_jpeg(hot / "cat.jpg", "-IPTC:Keywords=ocelot", "-IPTC:Keywords=jungle cat",
                 "-XMP-dc:Title=Spotted at dusk", "-EXIF:DateTimeOriginal=2021:03:04 05:06:07")
    _tagged_jpeg(hot / "dog.jpg", "-IPTC:Keywords=hound", "-XMP-dc:Title=Embedded title",
                 "-XMP-dc:Source=five")
    (hot / "dog.xml").write_text("<record><description><Title>From the caption</Title></description></record>")
    Image.new("RGB", (64, 48), "blue").save(hot / "plain.jpg")  # no embedded metadata at all
    out = site.console("task:run", "inbox", "--no-progress", check=True)
    assert "archived 3" in out.stdout, out.stdout
    records = {r["original_name"]: r for r in site.json("record:list")}  # type: ignore[union-attr]
    assert records["cat.jpg"]["fields"] == {"Keywords": "ocelot; jungle cat", "Title": "Spotted at dusk",
                                            "Shot": "2021-03-04T05:06:07"}
    # a caption wins over the embedded value; a value its field's type refuses is left out, logged
    assert records["dog.jpg"]["fields"] == {"Keywords": "hound", "Title": "From the caption"}
    assert "dog.jpg: embedded XMP-dc:Source: field Rating: expected a number, got 'five'" in site.log("inbox")
    assert records["plain.jpg"]["fields"] == {}
    _index(site)
    assert _found(site, "ocelot") == ["cat.jpg"]
    assert _found(site, "dusk") == ["cat.jpg"]


@pytest.mark.anyio
async def test_without_exiftool_archive_works_and_says_why_once(site: Site, caplog: pytest.LogCaptureFixture) -> None:  # noqa: F811
    hot = _box(site, task='exiftool = "no-such-exiftool"')
    config = load(site.config)
    task = ArchiveTask(config.tasks["inbox"].settings)
    ctx = TaskContext.for_test("inbox", task.settings, config=config, tmp_path=site.root)
    caplog.set_level(logging.INFO)
    try:
        for name in ("a.jpg", "b.jpg"):  # two passes of one task
            Image.new("RGB", (32, 32), "red").save(hot / name)
            assert await task.run_once(ctx) == "archived 1"
    finally:
        await task.shutdown(ctx)
    assert len(site.json("record:list")) == 2  # type: ignore[arg-type]
    said = [r.getMessage() for r in caplog.records if "embedded metadata is not read" in r.getMessage()]
    assert said == ["embedded metadata is not read into Keywords (IPTC:Keywords), Title (XMP-dc:Title), "
                    "Shot (EXIF:DateTimeOriginal), Rating (XMP-dc:Source): no-such-exiftool not found"]


@pytest.mark.parametrize("value, message", [
    ('{ type = "text", src = "Keywords" }', 'databoxes.main.fields.Keywords.src: expected a tag like "IPTC:Keywords"'),
    ('{ type = "txt", src = "IPTC:Keywords" }', "databoxes.main.fields.Keywords.type: expected 'text' or"),
    ('{ source = "IPTC:Keywords" }', "databoxes.main.fields.Keywords.source: unknown setting (known: src, type)"),
    ("3", 'databoxes.main.fields.Keywords: expected "text", "date", "number" or a table'),
])
def test_a_bad_field_source_is_refused_with_its_key_path(site: Site, value: str, message: str) -> None:  # noqa: F811
    site.write(f"""
        [databoxes.main]
        path = "var/main.sqlite"
        storage = "var/storage"
        [databoxes.main.fields]
        Keywords = {value}
        """)
    p = site.console("config:check")
    assert p.returncode == 2 and message in p.stderr, p.stderr


def _build_all(site: Site) -> None:
    """Run here every subdefCreation job the archive queued (what the workers would do)."""
    jobs = [j for j in site.json("job:list") if j["type"] == "subdefCreation"]  # type: ignore[union-attr]
    assert jobs
    for job in jobs:
        ran = site.console("worker:run-service", "subdefCreation", "--payload", json.dumps(job["payload"]))
        assert ran.returncode == 0, ran.stderr


@pytest.mark.parametrize("switch", [None, "true", "false"])
def test_a_documents_text_is_searchable_unless_switched_off(site: Site, switch: str | None) -> None:  # noqa: F811
    samples.need("pdftotext", "pdftoppm")
    hot = _box(site, fields="", box=f"index_document_text = {switch}" if switch else "")
    samples.text_pdf(hot / "report.pdf", "The capybara sleeps by the river")
    (hot / "notes.txt").write_text("an armadillo rolled away\n" + "filler line\n" * 1000)
    assert "archived 2" in site.console("task:run", "inbox", "--no-progress", check=True).stdout
    _build_all(site)
    _index(site)
    assert _found(site, "report") == ["report.pdf"]  # its name, in any case
    on = switch != "false"
    assert _found(site, "capybara") == (["report.pdf"] if on else [])
    assert _found(site, "armadillo") == (["notes.txt"] if on else [])
