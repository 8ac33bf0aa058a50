"""The stay-open exiftool client against the real exiftool: framing, values, supervision."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from pathlib import Path

import anyio
import pytest

from tasks.media.errors import ToolNotFound, ToolTimeout
from tasks.media.exiftool import ExifTool, ExifToolError, check_tag, encode_arg
from tests.media import samples
from tests.media.test_tools import gone


@pytest.fixture(autouse=True)
def _exiftool() -> None:
    samples.need("exiftool")


def read_back(path: Path, *tags: str) -> dict:
    """An independent exiftool process reads what the client wrote."""
    out = subprocess.run(["exiftool", "-json", "-G1", *[f"-{t}" for t in tags], str(path)],
                         capture_output=True, check=True, timeout=30).stdout
    data = json.loads(out)[0]
    data.pop("SourceFile")
    return data


@pytest.mark.anyio
async def test_values_survive_intact(tmp_path: Path) -> None:
    photo = samples.jpeg_rotated(tmp_path / "p.jpg")
    values = {
        "XMP-dc:Title": " two\nlines, a \\backslash, \"quotes\", $HOME and @at ",
        "XMP-dc:Description": "  leading blanks and a trailing one ",
        "IPTC:Caption-Abstract": "Café über naïve ✓",
        "XMP-dc:Subject": ["alpha", "beta gamma"],
        "XMP-dc:Identifier": "1234",
    }
    async with ExifTool(timeout=20) as et:
        result = await et.write_tags(photo, values)
        assert result.updated and result.warnings == ()
        mine = await et.read_tags(photo, list(values))
    theirs = read_back(photo, *values)
    assert theirs == mine
    assert theirs["XMP-dc:Title"] == values["XMP-dc:Title"]
    assert theirs["XMP-dc:Description"] == values["XMP-dc:Description"]
    assert theirs["IPTC:Caption-Abstract"] == values["IPTC:Caption-Abstract"]
    assert theirs["XMP-dc:Subject"] == ["alpha", "beta gamma"]
    assert str(theirs["XMP-dc:Identifier"]) == "1234"
    assert [p.name for p in tmp_path.iterdir()] == ["p.jpg"]  # no backup, no temporary


@pytest.mark.anyio
async def test_delete_and_separator(tmp_path: Path) -> None:
    photo = samples.jpeg_rotated(tmp_path / "p.jpg")
    async with ExifTool(timeout=20) as et:
        await et.write_tags(photo, {"XMP-dc:Title": "here", "XMP-dc:Subject": "a;b;c"}, ["-sep", ";"])
        assert read_back(photo, "XMP-dc:Subject")["XMP-dc:Subject"] == ["a", "b", "c"]
        await et.write_tags(photo, {"XMP-dc:Title": None, "XMP-dc:Subject": []})
    assert read_back(photo, "XMP-dc:Title", "XMP-dc:Subject") == {}


@pytest.mark.anyio
async def test_one_process_for_a_batch_and_restart_after_death(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    photo = samples.jpeg_rotated(tmp_path / "p.jpg")
    async with ExifTool(timeout=20) as et:
        first = et.pid
        for i in range(20):
            await et.write_tags(photo, {"XMP-dc:Identifier": str(i)})
        assert et.pid == first and et.starts == 1
        assert first is not None
        os.kill(first, signal.SIGKILL)
        assert gone(first)
        with caplog.at_level(logging.WARNING, logger="schedulerd.exiftool"):
            tags = await et.read_tags(photo, ["XMP-dc:Identifier"])
        assert str(tags["XMP-dc:Identifier"]) == "19"
        assert et.starts == 2 and et.pid not in (None, first)
        assert "exited with status -9; restarting it" in caplog.text
        with pytest.raises(ExifToolError, match=r"exiftool exited \(status 7\) during a request"):
            await et.execute("-if", "exit(7)", str(photo))  # dies in the middle of a request
        assert str((await et.read_tags(photo, ["XMP-dc:Identifier"]))["XMP-dc:Identifier"]) == "19"
        assert et.starts == 3


@pytest.mark.anyio
async def test_timeout_kills_and_the_next_request_works(tmp_path: Path) -> None:
    photo = samples.jpeg_rotated(tmp_path / "p.jpg")
    async with ExifTool(timeout=20) as et:
        pid = et.pid
        assert pid is not None
        with pytest.raises(ToolTimeout, match="no answer within 0.5s and was killed"):
            await et.execute("-if", "sleep(30)", str(photo), timeout=0.5)  # a real hang inside exiftool
        assert gone(pid) and et.pid is None
        assert (await et.read_tags(photo, ["File:FileType"]))["File:FileType"] == "JPEG"
        assert et.starts == 2


@pytest.mark.anyio
async def test_cancelled_request_kills_the_child(tmp_path: Path) -> None:
    photo = samples.jpeg_rotated(tmp_path / "p.jpg")
    async with ExifTool(timeout=20) as et:
        pid = et.pid
        assert pid is not None
        with anyio.move_on_after(0.5):
            await et.execute("-if", "sleep(30)", str(photo))
        assert gone(pid)
        assert (await et.execute("-ver")).stdout.strip() == et.version


@pytest.mark.anyio
async def test_close_is_clean(caplog: pytest.LogCaptureFixture) -> None:
    et = ExifTool(timeout=20)
    with caplog.at_level(logging.INFO, logger="schedulerd.exiftool"):
        async with et:
            pid = et.pid
            assert pid is not None
        assert gone(pid, within=0.5)
    assert "did not exit" not in caplog.text
    assert et.pid is None


@pytest.mark.anyio
async def test_refused_writes_leave_the_file_alone(tmp_path: Path) -> None:
    text = tmp_path / "notes.txt"
    text.write_text("plain text\n")
    photo = samples.jpeg_rotated(tmp_path / "p.jpg")
    stale = tmp_path / "p.jpg_exiftool_tmp"
    stale.write_bytes(b"half a file from a killed write")
    async with ExifTool(timeout=20) as et:
        with pytest.raises(ExifToolError, match=r"notes.txt: Error: Writing of TXT files is not yet supported"):
            await et.write_tags(text, {"XMP-dc:Title": "x"})
        assert text.read_text() == "plain text\n"
        with pytest.raises(ExifToolError, match="File not found"):
            await et.read_tags(tmp_path / "absent.jpg")
        result = await et.write_tags(photo, {"XMP-dc:Title": "after a crash"})
    assert result.updated and result.warnings == ("removed p.jpg_exiftool_tmp left by an interrupted write",)
    assert not stale.exists()
    assert read_back(photo, "XMP-dc:Title") == {"XMP-dc:Title": "after a crash"}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "p.jpg"]


@pytest.mark.anyio
async def test_bad_arguments_and_missing_exiftool(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not an exiftool tag name"):
        check_tag("o /etc/passwd")
    with pytest.raises(ValueError, match="cannot be passed on one line"):
        encode_arg("/tmp/a\nb.jpg")
    with pytest.raises(ValueError, match="not an exiftool tag name"):
        async with ExifTool(timeout=20) as et:
            await et.write_tags(samples.jpeg_rotated(tmp_path / "p.jpg"), {"-tagsFromFile": "/etc/passwd"})
    with pytest.raises(ToolNotFound, match="no-such-exiftool not found"):
        async with ExifTool("no-such-exiftool"):
            pass
