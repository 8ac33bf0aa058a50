"""Still images with Pillow: orientation, alpha, CMYK, 16-bit, ICC profiles, draft decoding, bad files."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from tasks.media import MediaError
from tasks.media.files import atomic_writer
from tasks.media.images import Target, _load, fitted, image_format, make_images, srgb_profile
from tests.media import samples


def colours(path: Path, *points: tuple[float, float]) -> list[str]:
    with Image.open(path) as im:
        rgb = im.convert("RGB")
        return [samples.pixel_colour(rgb.getpixel((int(x * (im.width - 1)), int(y * (im.height - 1))))) for x, y in points]


def no_temporaries(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


def test_exif_orientation_is_applied_and_not_upscaled(tmp_path: Path) -> None:
    src = samples.jpeg_rotated(tmp_path / "sideways.jpg", size=(80, 40), orientation=6)
    small, big = make_images(src, [Target(tmp_path / "out/t.jpg", 40), Target(tmp_path / "out/p.jpg", 1024)])
    assert (small.width, small.height) == (20, 40)  # portrait once rotated
    assert (big.width, big.height) == (40, 80)  # never upscaled
    # rotate 90° clockwise: the stored left (red) half ends on top
    assert colours(big.path, (0.5, 0.1), (0.5, 0.9)) == ["red", "blue"]
    assert colours(small.path, (0.5, 0.1), (0.5, 0.9)) == ["red", "blue"]
    with Image.open(big.path) as im:
        assert im.getexif().get(0x0112) is None  # no orientation tag to apply twice
    assert big.mime == "image/jpeg" and big.bytes == big.path.stat().st_size
    no_temporaries(tmp_path / "out")


@pytest.mark.parametrize("orientation,top,bottom,left,right", [
    (3, None, None, "blue", "red"),  # upside down: halves swap sides
    (8, "blue", "red", None, None),  # rotate 90° counter-clockwise: right half on top
])
def test_other_orientations(tmp_path: Path, orientation: int, top, bottom, left, right) -> None:
    src = samples.jpeg_rotated(tmp_path / "o.jpg", size=(80, 40), orientation=orientation)
    (out,) = make_images(src, [Target(tmp_path / "o-out.jpg", 200)])
    if top:
        assert (out.width, out.height) == (40, 80)
        assert colours(out.path, (0.5, 0.1), (0.5, 0.9)) == [top, bottom]
    else:
        assert (out.width, out.height) == (80, 40)
        assert colours(out.path, (0.1, 0.5), (0.9, 0.5)) == [left, right]


def test_jpeg_is_decoded_small_in_draft_mode(tmp_path: Path) -> None:
    src = samples.camera_jpeg(tmp_path / "cam.jpg", size=(1600, 1200))
    decoded, _, _ = _load(src, 240)
    assert decoded.size == (400, 300)  # libjpeg decoded at 1/4 scale, still >= 240 px
    decoded, _, _ = _load(src, 1024)
    assert decoded.size == (1600, 1200)  # 1/2 scale would be below 1024: full decode
    preview, thumb = make_images(src, [Target(tmp_path / "p.jpg", 1024), Target(tmp_path / "t.webp", 240, "webp")])
    assert (preview.width, preview.height) == (1024, 768)
    assert (thumb.width, thumb.height) == (240, 180) and thumb.mime == "image/webp"
    with Image.open(thumb.path) as im:
        assert im.format == "WEBP"


def test_png_alpha_flattened_on_white_for_jpeg_kept_for_png(tmp_path: Path) -> None:
    src = samples.png_alpha(tmp_path / "alpha.png", size=(60, 40))
    jpeg, png = make_images(src, [Target(tmp_path / "a.jpg", 30), Target(tmp_path / "a.png", 30, "png")])
    assert colours(jpeg.path, (0.1, 0.5), (0.9, 0.5)) == ["red", "white"]
    with Image.open(png.path) as im:
        assert im.mode == "RGBA" and png.mime == "image/png"
        assert im.getpixel((im.width - 2, im.height // 2))[3] == 0
        assert im.getpixel((1, im.height // 2))[3] == 255


def test_palette_with_transparency(tmp_path: Path) -> None:
    src = tmp_path / "pal.png"
    im = Image.new("P", (20, 10), 0)
    im.putpalette([255, 255, 255, 220, 30, 30])
    im.paste(1, (0, 0, 10, 10))
    im.save(src, transparency=0)
    png, jpeg = make_images(src, [Target(tmp_path / "pal-out.png", 20, "png"), Target(tmp_path / "pal.jpg", 20)])
    with Image.open(png.path) as out:
        assert out.mode == "RGBA"
        assert out.getpixel((2, 5)) == (220, 30, 30, 255) and out.getpixel((17, 5))[3] == 0
    assert colours(jpeg.path, (0.1, 0.5), (0.9, 0.5)) == ["red", "white"]


def test_cmyk_without_profile_becomes_rgb(tmp_path: Path) -> None:
    src = samples.jpeg_cmyk(tmp_path / "cmyk.jpg")
    with Image.open(src) as im:
        assert im.mode == "CMYK"
    (out,) = make_images(src, [Target(tmp_path / "c.jpg", 30)])
    with Image.open(out.path) as im:
        assert im.mode == "RGB" and "icc_profile" not in im.info
    assert colours(out.path, (0.1, 0.5), (0.9, 0.5)) == ["red", "blue"]


def test_cmyk_with_profile_is_converted_to_srgb(tmp_path: Path) -> None:
    icc = samples.cmyk_profile()
    if icc is None:
        pytest.skip("no CMYK ICC profile on this system (ghostscript's default_cmyk.icc)")
    src = samples.jpeg_cmyk(tmp_path / "cmyk-icc.jpg", icc=icc)
    (out,) = make_images(src, [Target(tmp_path / "c.jpg", 30)])
    with Image.open(out.path) as im:
        assert im.mode == "RGB"
        assert im.info.get("icc_profile") == srgb_profile()  # the CMYK profile would lie about RGB pixels
    left, right = colours(out.path, (0.1, 0.5), (0.9, 0.5))
    assert (left, right) != ("other", "other")


def test_rgb_profile_is_kept(tmp_path: Path) -> None:
    icc = samples.rgb_profile()
    if icc is None:
        pytest.skip("no RGB ICC profile on this system (ghostscript's a98.icc)")
    src = tmp_path / "adobe.jpg"
    samples.halves((60, 40)).save(src, "JPEG", icc_profile=icc)
    jpeg, png = make_images(src, [Target(tmp_path / "k.jpg", 30), Target(tmp_path / "k.png", 20, "png")])
    for made in (jpeg, png):
        with Image.open(made.path) as im:
            assert im.info.get("icc_profile") == icc


def test_sixteen_bit_rgb_tiff(tmp_path: Path) -> None:
    src = samples.tiff16_rgb(tmp_path / "rgb16.tif", size=(40, 20))
    (out,) = make_images(src, [Target(tmp_path / "r.png", 20, "png")])
    with Image.open(out.path) as im:
        assert im.mode == "RGB" and im.size == (20, 10)
        r, g, b = im.getpixel((1, 5))
        assert abs(r - 220) <= 3 and abs(g - 30) <= 3 and abs(b - 30) <= 3


def test_sixteen_bit_grey_is_scaled_not_clipped(tmp_path: Path) -> None:
    src = samples.tiff16_grey(tmp_path / "grey16.tif", level=32768)
    with Image.open(src) as im:
        assert im.mode.startswith("I;16")
    (out,) = make_images(src, [Target(tmp_path / "g.jpg", 20)])
    with Image.open(out.path) as im:
        assert im.mode == "L"
        assert 120 <= im.getpixel((5, 5)) <= 135  # Pillow's plain convert("L") would give 255


def test_corrupt_and_unreadable_files(tmp_path: Path) -> None:
    out = tmp_path / "out"
    bad = samples.corrupt_jpeg(tmp_path / "broken.jpg")
    with pytest.raises(MediaError, match="broken.jpg: cannot decode image"):
        make_images(bad, [Target(out / "t.jpg", 30)])
    junk = tmp_path / "junk.jpg"
    junk.write_bytes(b"this is not a picture" * 20)
    with pytest.raises(MediaError, match="junk.jpg: not an image format"):
        make_images(junk, [Target(out / "t.jpg", 30)])
    with pytest.raises(MediaError, match="missing"):
        make_images(tmp_path / "gone.jpg", [Target(out / "t.jpg", 30)])
    assert not out.exists() or list(out.iterdir()) == []


def test_formats_and_fitting() -> None:
    assert image_format("JPG").pil == "JPEG" and image_format("png").extension == ".png"
    with pytest.raises(ValueError, match=r"unknown image format 'gif' \(known: jpeg, png, webp\)"):
        image_format("gif")
    assert fitted(6000, 4000, 240) == (240, 160)
    assert fitted(4000, 6000, 1024) == (683, 1024)
    assert fitted(100, 50, 240) == (100, 50)
    assert fitted(10000, 1, 100) == (100, 1)


def test_atomic_writer_keeps_the_old_file_on_failure(tmp_path: Path) -> None:
    dest = tmp_path / "d" / "file.jpg"
    with atomic_writer(dest) as f:
        f.write(b"first")
    assert dest.read_bytes() == b"first"
    with pytest.raises(RuntimeError):
        with atomic_writer(dest) as f:
            f.write(b"half")
            raise RuntimeError("crash in the middle")
    assert dest.read_bytes() == b"first"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["file.jpg"]
