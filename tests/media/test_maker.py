"""Which maker a document goes to, and the checks on declared sub-definitions."""

from __future__ import annotations

from pathlib import Path

import pytest

from repository import SubdefSettings
from tasks.media import MediaError, Spec, as_specs, classify, make_subdefs
from tasks.media.maker import DEFAULT_SPECS, check_spec, extension
from tests.media import samples


def test_classify_by_mime_name_and_content(tmp_path: Path) -> None:
    assert classify(Path("a.bin"), "image/tiff") == "image"
    assert classify(Path("a.bin"), "video/quicktime") == "video"
    assert classify(Path("a.bin"), "application/pdf") == "document"
    assert classify(Path("a.JPG")) == "image" and classify(Path("a.tif")) == "image"
    assert classify(Path("a.MOV")) == "video" and classify(Path("a.pdf")) == "document"
    assert classify(Path("a.mp3")) == "audio"
    nameless = tmp_path / "upload"
    samples.pdf(tmp_path / "x.pdf").rename(nameless)
    assert classify(nameless) == "document"
    samples.jpeg_rotated(nameless)
    assert classify(nameless) == "image"
    nameless.write_bytes(b"\x00\x00\x00\x18ftypisom....")
    assert classify(nameless) == "video"
    nameless.write_bytes(b"hello")
    assert classify(nameless) is None


def test_specs_from_config_and_defaults() -> None:
    declared = {"thumb": SubdefSettings(media_class="video", size=200, format="mp4", quality=70)}
    assert as_specs(declared) == [Spec("thumb", "video", 200, "mp4", 70)]
    assert {(s.name, s.media_class, s.size) for s in as_specs({})} >= {("thumbnail", "image", 240), ("preview", "image", 1024)}
    assert all(s.format == "jpeg" for s in DEFAULT_SPECS)
    assert extension(Spec("p", "video", 10, "mp4")) == ".mp4" and extension(Spec("t", "image", 10, "webp")) == ".webp"


@pytest.mark.parametrize("spec,message", [
    (Spec("x", "audio", 100), "unknown media class 'audio'"),
    (Spec("x", "image", 0), "size must be from 1 to 20000"),
    (Spec("x", "image", 100, "jpeg", 101), "quality must be from 0 to 100"),
    (Spec("x", "image", 100, "mp4"), "format 'mp4' is not possible for image"),
    (Spec("x", "video", 100, "gif"), "format 'gif' is not possible for video"),
])
def test_bad_specs(spec: Spec, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_spec(spec)


@pytest.mark.anyio
async def test_make_subdefs_refusals(tmp_path: Path) -> None:
    photo = samples.jpeg_rotated(tmp_path / "p.jpg")
    with pytest.raises(MediaError, match="a mp4 sub-definition needs a video"):
        await make_subdefs(photo, "image", [(Spec("p", "image", 10, "mp4"), tmp_path / "p.mp4")])
    with pytest.raises(MediaError, match="no sub-definitions for media class 'audio'"):
        await make_subdefs(photo, "audio", [(Spec("p", "audio", 10), tmp_path / "p.jpg")])
    with pytest.raises(MediaError, match="document file is missing"):
        await make_subdefs(tmp_path / "gone.jpg", "image", [(Spec("p", "image", 10), tmp_path / "p.jpg")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.jpg"]
