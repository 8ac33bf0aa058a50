"""Video (ffmpeg) and PDF (pdftoppm) sub-definitions from real files made in the test."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from PIL import Image

from tasks.media import MediaError, Spec, ToolError, ToolNotFound, make_subdefs
from tasks.media.images import Target
from tasks.media.pdf import make_page_images
from tasks.media.video import crf_for, make_frame_images, make_preview, probe
from tests.media import samples


def ffprobe_stream(path: Path) -> dict:
    out = subprocess.run(["ffprobe", "-v", "error", "-show_streams", "-of", "json", str(path)],
                         capture_output=True, check=True, timeout=30).stdout
    return {s["codec_type"]: s for s in json.loads(out)["streams"]}


@pytest.fixture
def clip(tmp_path: Path) -> Path:
    samples.need("ffmpeg", "ffprobe")
    return samples.video(tmp_path / "clip.mp4", size=(96, 64), seconds=1.0)


@pytest.mark.anyio
async def test_video_frame_and_preview(clip: Path, tmp_path: Path) -> None:
    info = await probe(clip, timeout=30)
    assert (info.width, info.height) == (96, 64) and 0.9 <= (info.duration or 0) <= 1.2
    thumb, png = await make_frame_images(clip, [Target(tmp_path / "t.jpg", 48), Target(tmp_path / "f.png", 500, "png")],
                                         timeout=30)
    assert (thumb.width, thumb.height) == (48, 32)
    assert (png.width, png.height) == (96, 64)  # not upscaled
    with Image.open(png.path) as im:
        assert im.format == "PNG" and len(im.convert("RGB").getcolors(1 << 16) or ()) > 10  # a real frame, not black
    preview = await make_preview(clip, Target(tmp_path / "p.mp4", 48, "mp4", 60), timeout=60)
    assert (preview.width, preview.height) == (48, 32) and preview.mime == "video/mp4"
    streams = ffprobe_stream(preview.path)
    assert streams["video"]["codec_name"] == "h264" and streams["video"]["pix_fmt"] == "yuv420p"
    assert streams["audio"]["codec_name"] == "aac"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.anyio
async def test_video_through_the_maker_and_odd_sizes(clip: Path, tmp_path: Path) -> None:
    jobs = [(Spec("thumbnail", "video", 50, "jpeg"), tmp_path / "t.jpg"),
            (Spec("preview", "video", 33, "mp4"), tmp_path / "p.mp4")]
    made = dict((s.name, m) for s, m in await make_subdefs(clip, "video", jobs, timeout=60))
    assert (made["thumbnail"].width, made["thumbnail"].height) == (50, 33)
    assert made["preview"].width % 2 == 0 and made["preview"].height % 2 == 0  # H.264 needs even sizes
    assert max(made["preview"].width, made["preview"].height) <= 33


@pytest.mark.anyio
async def test_not_a_video(tmp_path: Path) -> None:
    samples.need("ffmpeg", "ffprobe")
    fake = tmp_path / "fake.mp4"
    fake.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"garbage" * 50)
    with pytest.raises(ToolError, match="(?s)ffprobe exited with status 1: .*fake.mp4: Invalid data"):
        await make_frame_images(fake, [Target(tmp_path / "t.jpg", 40)], timeout=30)
    audio = tmp_path / "tone.m4a"
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-f", "lavfi", "-i", "sine=duration=0.3", str(audio)],
                   check=True, timeout=30)
    with pytest.raises(MediaError, match="tone.m4a: no video stream"):
        await make_preview(audio, Target(tmp_path / "p.mp4", 40, "mp4"), timeout=30)
    assert not (tmp_path / "t.jpg").exists() and not (tmp_path / "p.mp4").exists()


@pytest.mark.anyio
async def test_ffmpeg_not_found(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clip = tmp_path / "x.mp4"
    clip.write_bytes(b"whatever")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ToolNotFound, match=r"^ffmpeg not found \(install the Debian package ffmpeg\)$"):
        await make_subdefs(clip, "video", [(Spec("thumbnail", "video", 40), tmp_path / "t.jpg")])


def test_quality_to_crf() -> None:
    assert crf_for(100) == 18 and crf_for(0) == 40 and 23 <= crf_for(75) <= 24 and crf_for(500) == 18


@pytest.mark.anyio
async def test_pdf_first_page(tmp_path: Path) -> None:
    samples.need("pdftoppm")
    doc = samples.pdf(tmp_path / "doc.pdf", size=(60, 80), pages=2)
    thumb, big = await make_page_images(doc, [Target(tmp_path / "t.jpg", 40), Target(tmp_path / "b.png", 200, "png")],
                                        timeout=30)
    assert (thumb.width, thumb.height) == (30, 40)
    assert (big.width, big.height) == (150, 200)  # a vector page renders at the size asked
    with Image.open(big.path) as im:
        rgb = im.convert("RGB")
        left = samples.pixel_colour(rgb.getpixel((20, 100)))
        right = samples.pixel_colour(rgb.getpixel((130, 100)))
    assert (left, right) == ("red", "blue")  # page 1, not the green page 2


@pytest.mark.anyio
async def test_broken_pdf(tmp_path: Path) -> None:
    samples.need("pdftoppm")
    bad = tmp_path / "bad.pdf"
    bad.write_bytes(b"%PDF-1.4\n1 0 obj garbage\n")
    with pytest.raises(ToolError, match="pdftoppm exited with status"):
        await make_subdefs(bad, "document", [(Spec("thumbnail", "document", 40), tmp_path / "t.jpg")])
    word = tmp_path / "letter.docx"
    word.write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(MediaError, match="only PDF documents"):
        await make_subdefs(word, "document", [(Spec("thumbnail", "document", 40), tmp_path / "t.jpg")])
    assert not (tmp_path / "t.jpg").exists()
