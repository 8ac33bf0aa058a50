"""Synthetic documents of every kind the makers handle, for tests and benchmarks.

Real files, made on the spot: a JPEG whose EXIF says "rotate", a PNG with alpha,
a CMYK JPEG, 16-bit TIFFs, a PDF, a short video (ffmpeg), a corrupt file and
camera-sized JPEGs. Each picture is split into a red left half and a blue right
half so a test can tell whether orientation was honoured.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from PIL import Image

RED = (220, 30, 30)
BLUE = (30, 30, 220)
GHOSTSCRIPT_ICC = Path("/usr/share/color/icc/ghostscript")


def need(*tools: str) -> None:
    """Skip the calling test, with the reason, when an external tool is absent."""
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (Debian: ffmpeg, poppler-utils, libimage-exiftool-perl)")


def pixel_colour(rgb: tuple[int, ...]) -> str:
    """"red", "blue", "white" or "other" for a decoded pixel (JPEG is lossy)."""
    r, g, b = rgb[:3]
    if r > 150 and g < 100 and b < 100:
        return "red"
    if b > 150 and r < 100 and g < 100:
        return "blue"
    if r > 230 and g > 230 and b > 230:
        return "white"
    return "other"


def halves(size: tuple[int, int], mode: str = "RGB") -> Image.Image:
    """Left half red, right half blue (in stored pixel order)."""
    im = Image.new("RGB", size, RED)
    im.paste(BLUE, (size[0] // 2, 0, size[0], size[1]))
    return im.convert(mode) if mode != "RGB" else im


def jpeg_rotated(path: Path, size: tuple[int, int] = (80, 40), orientation: int = 6, quality: int = 90) -> Path:
    """A landscape JPEG stored sideways: EXIF orientation 6 means "rotate 90° clockwise to view"."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    halves(size).save(path, "JPEG", quality=quality, exif=exif.tobytes())
    return path


def png_alpha(path: Path, size: tuple[int, int] = (60, 40)) -> Path:
    """RGBA: opaque red left half, fully transparent right half."""
    im = halves(size).convert("RGBA")
    im.paste((0, 0, 255, 0), (size[0] // 2, 0, size[0], size[1]))
    im.save(path, "PNG")
    return path


def cmyk_profile() -> bytes | None:
    """A CMYK ICC profile from the system (ghostscript's), or None."""
    for name in ("default_cmyk.icc", "ps_cmyk.icc"):
        p = GHOSTSCRIPT_ICC / name
        if p.is_file():
            return p.read_bytes()
    return None


def rgb_profile(name: str = "a98.icc") -> bytes | None:
    p = GHOSTSCRIPT_ICC / name
    return p.read_bytes() if p.is_file() else None


def jpeg_cmyk(path: Path, size: tuple[int, int] = (60, 40), icc: bytes | None = None) -> Path:
    """CMYK JPEG (as from print workflows), optionally with its ICC profile."""
    im = halves(size).convert("CMYK")
    params = {"icc_profile": icc} if icc else {}
    im.save(path, "JPEG", quality=90, **params)
    return path


def tiff16_rgb(path: Path, size: tuple[int, int] = (40, 20)) -> Path:
    """A 16-bit-per-channel RGB TIFF (Pillow cannot write one, so it is built by hand)."""
    w, h = size
    red, blue = (56540, 7710, 7710), (7710, 7710, 56540)
    pixels = b"".join(struct.pack(">HHH", *(red if x < w // 2 else blue)) for y in range(h) for x in range(w))
    entries = [(256, 3, 1, w), (257, 3, 1, h), (258, 3, 3, None), (259, 3, 1, 1), (262, 3, 1, 2),
               (273, 4, 1, None), (277, 3, 1, 3), (278, 3, 1, h), (279, 4, 1, len(pixels))]
    ifd_offset = 8
    bps_offset = ifd_offset + 2 + 12 * len(entries) + 4
    data_offset = bps_offset + 6
    out = b"MM\x00\x2a" + struct.pack(">I", ifd_offset) + struct.pack(">H", len(entries))
    for tag, typ, count, value in entries:
        if tag == 258:
            out += struct.pack(">HHII", tag, typ, count, bps_offset)
        elif tag == 273:
            out += struct.pack(">HHII", tag, typ, count, data_offset)
        elif typ == 3:
            out += struct.pack(">HHIHH", tag, typ, count, value, 0)
        else:
            out += struct.pack(">HHII", tag, typ, count, value)
    out += struct.pack(">I", 0) + struct.pack(">HHH", 16, 16, 16) + pixels
    path.write_bytes(out)
    return path


def tiff16_grey(path: Path, size: tuple[int, int] = (40, 20), level: int = 32768) -> Path:
    """A 16-bit greyscale TIFF at `level` of 65535 (mid grey by default)."""
    Image.new("I;16", size, level).save(path, "TIFF")
    return path


def pdf(path: Path, size: tuple[int, int] = (60, 80), pages: int = 2) -> Path:
    """A portrait PDF whose first page is the red/blue picture."""
    first = halves(size)
    rest = [Image.new("RGB", size, (0, 160, 0)) for _ in range(pages - 1)]
    first.save(path, "PDF", save_all=True, append_images=rest, resolution=72.0)
    return path


def text_pdf(path: Path, text: str) -> Path:
    """A one-page PDF whose page shows `text` (ASCII, Helvetica) as real text that pdftotext reads:
    written by hand, byte offsets in its cross-reference table counted."""
    escaped = text.replace("\\", "\\\\").replace("(", "\\(").replace(")", "\\)")
    stream = f"BT /F1 12 Tf 20 100 Td ({escaped}) Tj ET".encode("ascii")
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 400 200] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n%s\nendstream" % (len(stream), stream),
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
    ]
    out = bytearray(b"%PDF-1.4\n")
    offsets = []
    for n, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (n, body)
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    path.write_bytes(bytes(out))
    return path


def video(path: Path, size: tuple[int, int] = (96, 64), seconds: float = 1.0, timeout: float = 30.0) -> Path:
    """A short H.264 test-pattern video with a tone (needs ffmpeg)."""
    w, h = size
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y",
         "-f", "lavfi", "-i", f"testsrc=size={w}x{h}:rate=10:duration={seconds}",
         "-f", "lavfi", "-i", f"sine=frequency=440:duration={seconds}",
         "-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p", "-c:a", "aac", "-shortest", str(path)],
        check=True, timeout=timeout, capture_output=True,
    )
    return path


def corrupt_jpeg(path: Path) -> Path:
    """A JPEG cut short after its header: it identifies as JPEG but cannot decode."""
    good = path.with_suffix(".good.tmp")
    halves((64, 64)).save(good, "JPEG", quality=90)
    data = good.read_bytes()
    good.unlink()
    path.write_bytes(data[: len(data) // 3])
    return path


def camera_jpeg(path: Path, size: tuple[int, int] = (6000, 4000), seed: int = 0, quality: int = 90) -> Path:
    """A camera-sized JPEG with photo-like entropy (gradients plus sensor-like noise)."""
    w, h = size
    channels = []
    for i in range(3):
        gradient = Image.linear_gradient("L").resize((w, h)).rotate(90 * ((seed + i) % 4), expand=False)
        noise = Image.effect_noise((w, h), 12 + 4 * i).convert("L")
        channels.append(Image.blend(gradient, noise, 0.35))
    Image.merge("RGB", channels).save(path, "JPEG", quality=quality)
    return path
