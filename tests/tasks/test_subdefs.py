"""The `subdefs` task type over a real databox, with real documents of every kind, and its CLI."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from repository import open_databox  # noqa: E402
from schedulerd.config import load  # noqa: E402
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.registry import task_type  # noqa: E402
from schedulerd.settings import ConfigError  # noqa: E402
from tasks.subdefs import SubdefsTask  # noqa: E402
from tests.media import samples  # noqa: E402

CONSOLE = ROOT / "bin" / "console"
SUBDEFS = """
    [databoxes.main.subdefs.thumbnail]
    size = 48
    [databoxes.main.subdefs.preview]
    size = 120
    quality = 80
    [databoxes.main.subdefs.vthumb]
    media_class = "video"
    size = 40
    [databoxes.main.subdefs.vpreview]
    media_class = "video"
    size = 64
    format = "mp4"
    """


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Site:
    """etc/schedulerd.toml with a databox and a `subdefs` task, loaded by the real config loader."""

    def __init__(self, root: Path, task: str = "", subdefs: str = SUBDEFS):
        self.root = root
        self.file = root / "etc" / "schedulerd.toml"
        self.file.parent.mkdir(parents=True, exist_ok=True)
        self.file.write_text(textwrap.dedent("""
            [scheduler]
            socket = "var/run/s.sock"
            [databoxes.main]
            path = "var/main.sqlite"
            storage = "var/storage"
            """) + textwrap.dedent(subdefs) + textwrap.dedent("""
            [tasks.thumbs]
            type = "subdefs"
            databox = "main"
            status_bit = 5
            workers = 2
            """) + textwrap.dedent(task))
        self.config = load(self.file)
        self.db = open_databox(self.config.databoxes["main"])
        self.db.create_collection("incoming")
        self.task = SubdefsTask(self.config.tasks["thumbs"].settings)
        self.ctx = TaskContext.for_test("thumbs", self.task.settings, config=self.config, tmp_path=root)

    def add(self, source: Path) -> int:
        return self.db.create_record("incoming", source).id

    def console(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != "SCHEDULERD_CONFIG"}
        return subprocess.run([str(CONSOLE), "--config", str(self.file), *args], capture_output=True, text=True,
                              timeout=60, env=env, cwd=self.root)


@pytest.fixture
def site(tmp_path: Path) -> Any:
    s = Site(tmp_path)
    yield s
    s.db.close()


def size_of(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        return im.size


@pytest.mark.anyio
async def test_every_kind_of_document(site: Site, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    src = tmp_path / "src"
    src.mkdir()
    ids = {
        "rotated": site.add(samples.jpeg_rotated(src / "rotated.jpg", size=(80, 40))),
        "alpha": site.add(samples.png_alpha(src / "alpha.png", size=(60, 40))),
        "cmyk": site.add(samples.jpeg_cmyk(src / "cmyk.jpg", size=(60, 40), icc=samples.cmyk_profile())),
        "tiff16": site.add(samples.tiff16_rgb(src / "deep.tif", size=(200, 100))),
        "corrupt": site.add(samples.corrupt_jpeg(src / "broken.jpg")),
        "audio": site.add(_mp3(src / "song.mp3")),
    }
    if samples.shutil.which("pdftoppm"):
        ids["pdf"] = site.add(samples.pdf(src / "doc.pdf", size=(60, 80)))
    with caplog.at_level(logging.WARNING, logger="schedulerd.task.thumbs"):
        summary = await site.task.run_once(site.ctx)
        good = len(ids) - 2
        assert summary == f"{good} records: {2 * good} sub-definitions built, 1 with nothing to build, 1 in error"
        assert (site.ctx.done, site.ctx.total) == (len(ids), len(ids))
        assert await site.task.run_once(site.ctx) == "nothing to do"  # errors are marked once, not every pass
    storage = Path(site.config.databoxes["main"].storage)
    expected = {"rotated": ((24, 48), (40, 80)), "alpha": ((48, 32), (60, 40)), "cmyk": ((48, 32), (60, 40)),
                "tiff16": ((48, 24), (120, 60)), "pdf": ((36, 48), (90, 120))}
    for kind, rid in ids.items():
        record = site.db.get_record(rid)
        subdefs = site.db.subdefs(rid)
        if kind == "corrupt":
            assert subdefs == {} and record.subdef_error and not record.status & (1 << 5)
            continue
        if kind == "audio":  # no sub-definition declared for audio: nothing to build, done
            assert subdefs == {} and record.subdef_error is None and record.status & (1 << 5)
            assert record.subdefs_version == record.doc_version
            continue
        assert record.subdef_error is None and record.status & (1 << 5), kind
        assert set(subdefs) == {"thumbnail", "preview"}, kind  # a PDF gets the image class's declarations
        for name, (w, h) in zip(("thumbnail", "preview"), expected[kind], strict=True):
            sub = subdefs[name]
            assert (sub.width, sub.height) == (w, h) == size_of(sub.path), (kind, name)
            assert sub.size == sub.path.stat().st_size and sub.doc_version == record.doc_version
            assert sub.path.is_relative_to(storage / "subdefs" / name)
            assert sub.path.stem == Path(record.document).stem and sub.path.suffix == ".jpg"
    assert "cannot decode image" in site.db.get_record(ids["corrupt"]).subdef_error
    assert caplog.text.count(f"record {ids['corrupt']} (broken.jpg): ") == 1  # its original name, not the storage name
    assert "song.mp3" not in caplog.text  # nothing to build is not a warning
    assert not list(storage.rglob(".*.tmp"))  # atomic writes left nothing behind


def _mp3(path: Path) -> Path:
    path.write_bytes(b"ID3\x03\x00\x00\x00\x00\x00\x00" + b"\x00" * 100)
    return path


@pytest.mark.anyio
async def test_batches_and_changed_documents(tmp_path: Path) -> None:
    site = Site(tmp_path, task="batch = 2\n")
    try:
        src = tmp_path / "src"
        src.mkdir()
        a = site.add(samples.jpeg_rotated(src / "a.jpg", size=(80, 40), orientation=1))
        b = site.add(samples.corrupt_jpeg(src / "b.jpg"))
        c = site.add(samples.png_alpha(src / "c.png"))
        # a full batch (a, b) is followed by the next one (c) in the same pass
        assert await site.task.run_once(site.ctx) == "2 records: 4 sub-definitions built, 1 in error"
        assert set(site.db.subdefs(c)) == {"thumbnail", "preview"}
        assert await site.task.run_once(site.ctx) == "nothing to do"
        old = site.db.subdefs(a)["preview"]
        # a new document makes the record need new sub-definitions; a fixed one clears its error
        site.db.replace_document(a, samples.camera_jpeg(src / "big.jpg", size=(400, 300)))
        site.db.replace_document(b, samples.jpeg_rotated(src / "fixed.jpg"))
        assert await site.task.run_once(site.ctx) == "2 records: 4 sub-definitions built"
        new = site.db.subdefs(a)["preview"]
        assert (new.width, new.height) == (120, 90) and new.doc_version == 2
        assert new.path != old.path and not old.path.exists()
        assert site.db.get_record(b).subdef_error is None and set(site.db.subdefs(b)) == {"thumbnail", "preview"}
    finally:
        site.db.close()


@pytest.mark.anyio
async def test_the_sweeper_drains_a_backlog_of_many_batches_in_one_pass(tmp_path: Path) -> None:
    """Records no job built (more than 3 batches of them) are all built by one iteration."""
    site = Site(tmp_path, task="batch = 3\n")
    try:
        src = tmp_path / "src"
        src.mkdir()
        ids = [site.add(samples.png_alpha(src / f"p{i}.png")) for i in range(11)]  # 3 + 3 + 3 + 2
        assert await site.task.run_once(site.ctx) == "11 records: 22 sub-definitions built"
        assert all(set(site.db.subdefs(i)) == {"thumbnail", "preview"} for i in ids)
        assert (site.ctx.done, site.ctx.total) == (11, 11)
        assert site.db.records_needing_subdefs() == []
    finally:
        site.db.close()


@pytest.mark.anyio
async def test_video_records(site: Site, tmp_path: Path) -> None:
    samples.need("ffmpeg", "ffprobe")
    rid = site.add(samples.video(tmp_path / "clip.mp4", size=(96, 64)))
    assert await site.task.run_once(site.ctx) == "1 records: 2 sub-definitions built"
    subdefs = site.db.subdefs(rid)
    assert set(subdefs) == {"vthumb", "vpreview"}  # the video class's own declarations
    assert (subdefs["vthumb"].width, subdefs["vthumb"].height) == (40, 27) and subdefs["vthumb"].path.suffix == ".jpg"
    assert (subdefs["vpreview"].width, subdefs["vpreview"].height) == (64, 42)
    assert subdefs["vpreview"].path.suffix == ".mp4" and subdefs["vpreview"].path.stat().st_size > 1000


@pytest.mark.anyio
async def test_missing_ffmpeg_leaves_videos_waiting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    samples.need("ffmpeg", "ffprobe")
    site = Site(tmp_path, task="batch = 1\n")
    try:
        video = site.add(samples.video(tmp_path / "clip.mp4"))
        photo = site.add(samples.jpeg_rotated(tmp_path / "p.jpg"))
        path = os.environ["PATH"]
        monkeypatch.setenv("PATH", str(tmp_path / "no-tools-here"))
        assert await site.task.run_once(site.ctx) == "0 records: 0 sub-definitions built, 1 waiting for ffmpeg"
        assert site.ctx.info["missing_tools"] == "ffmpeg not found"
        assert site.db.get_record(video).subdef_error is None  # not the document's fault: not marked
        # the waiting video does not hold up the batch: the photo goes next
        assert await site.task.run_once(site.ctx) == "1 records: 2 sub-definitions built, 1 waiting for ffmpeg"
        assert set(site.db.subdefs(photo)) == {"thumbnail", "preview"}
        assert await site.task.run_once(site.ctx) == "nothing to do (1 records wait for ffmpeg)"
        monkeypatch.setenv("PATH", path)  # installed: the video is built on the next pass
        assert await site.task.run_once(site.ctx) == "1 records: 2 sub-definitions built"
        assert "missing_tools" not in site.ctx.info and set(site.db.subdefs(video)) == {"vthumb", "vpreview"}
    finally:
        site.db.close()


@pytest.mark.anyio
async def test_a_type_without_sub_definitions_has_nothing_to_build(site: Site, tmp_path: Path,
                                                                   caplog: pytest.LogCaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("just text\n")
    text = site.add(tmp_path / "notes.txt")
    with caplog.at_level(logging.INFO, logger="schedulerd.task.thumbs"):
        assert await site.task.run_once(site.ctx) == "0 records: 0 sub-definitions built, 1 with nothing to build"
    assert f"record {text} (notes.txt): nothing to build: no sub-definitions are declared for documents of type " \
           "text/plain" in caplog.messages
    record = site.db.get_record(text)
    assert record.subdef_error is None and record.subdefs_version == 1 and record.status & (1 << 5)
    assert await site.task.run_once(site.ctx) == "nothing to do"  # done, not picked up again
    (tmp_path / "notes2.txt").write_text("more text\n")
    site.db.replace_document(text, tmp_path / "notes2.txt")  # a new document: looked at again, same answer
    assert await site.task.run_once(site.ctx) == "0 records: 0 sub-definitions built, 1 with nothing to build"
    other = site.add(tmp_path / "notes2.txt")
    p = site.console("record:subdefs", str(other))
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == (f"record {other} (notes2.txt): nothing to build: no sub-definitions are declared "
                                "for documents of type text/plain")
    assert site.console("record:subdefs", str(other)).returncode == 0


def test_cli_record_subdefs(site: Site, tmp_path: Path) -> None:
    good = site.add(samples.jpeg_rotated(tmp_path / "p.jpg"))
    bad = site.add(samples.corrupt_jpeg(tmp_path / "bad.jpg"))
    p = site.console("record:subdefs", str(good))
    assert p.returncode == 0, p.stderr
    assert "thumbnail" in p.stdout and "24x48" in p.stdout and "40x80" in p.stdout and "preview" in p.stdout
    assert site.db.get_record(good).status & (1 << 5)  # same status bit as the configured task
    first = site.db.subdefs(good)["thumbnail"]
    p = site.console("record:subdefs", str(good), "--json")
    data = json.loads(p.stdout)
    assert p.returncode == 0 and data["note"] == "up to date (use --rebuild)"
    assert data["subdefs"]["thumbnail"]["width"] == 24
    p = site.console("record:subdefs", str(good), "--rebuild", "--json")
    assert p.returncode == 0 and json.loads(p.stdout)["note"] is None
    assert site.db.subdefs(good)["thumbnail"].created >= first.created
    p = site.console("record:subdefs", str(bad))
    assert p.returncode == 1 and f"record {bad} (bad.jpg): " in p.stderr and "cannot decode image" in p.stderr
    p = site.console("record:subdefs", str(bad))
    assert p.returncode == 1 and f"record {bad} (bad.jpg) is marked in error" in p.stderr and "--rebuild" in p.stderr
    p = site.console("record:subdefs", "999")
    assert p.returncode == 2 and "no record 999" in p.stderr
    p = site.console("record:subdefs", "x1")
    assert p.returncode == 2 and "ID: expected a record id" in p.stderr


def test_type_and_config_checks(tmp_path: Path) -> None:
    assert task_type("subdefs") is SubdefsTask
    assert SubdefsTask.wake_on == ("record.created",)
    cfg = tmp_path / "etc" / "schedulerd.toml"
    cfg.parent.mkdir(parents=True)
    box = '[databoxes.x]\npath = "x.sqlite"\nstorage = "x"\n'
    cfg.write_text(box + '[tasks.thumbs]\ntype = "subdefs"\ndatabox = "x"\nstatus_bit = 40\n')
    with pytest.raises(ConfigError, match=r"tasks.thumbs.status_bit: expected an integer from 0 to 31, got 40"):
        load(cfg)
    cfg.write_text(box + '[tasks.thumbs]\ntype = "subdefs"\ndatabox = "x"\nsize = 3\n')
    with pytest.raises(ConfigError, match=r"tasks.thumbs.size: unknown setting"):
        load(cfg)
    cfg.write_text('[tasks.thumbs]\ntype = "subdefs"\ndatabox = "nope"\n')
    with pytest.raises(ConfigError, match=r"tasks.thumbs.databox: unknown databox 'nope' \(known: none\)"):
        load(cfg)
    cfg.write_text('[tasks.thumbs]\ntype = "subdefs"\ndatabox = "x"\nbatch = 0\n')
    with pytest.raises(ConfigError, match=r"tasks.thumbs.batch: expected an integer from 1 to 10000, got 0"):
        load(cfg)
