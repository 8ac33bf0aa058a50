"""Still-image sub-definitions with Pillow: decode once, small, then cascade down.

Speed comes from decoding less: a JPEG is decoded by libjpeg at 1/2, 1/4 or 1/8
scale (draft mode) when the largest target allows it, and every smaller target
is resized from the previous one rather than from the original. Correctness:
EXIF orientation applied, CMYK converted to sRGB (through its ICC profile when it
has one), 16-bit and float images scaled (not clipped) to 8 bits, alpha kept for
PNG/WebP and laid over white for JPEG, an ICC profile kept only when it matches
the pixels it describes. Synchronous: call it in a worker thread.
"""

from __future__ import annotations

import functools
import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from PIL import Image, UnidentifiedImageError

from .errors import MediaError
from .files import atomic_writer

ORIENTATION_TAG = 0x0112
TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}
BACKGROUND = (255, 255, 255)  # under transparent pixels when the format has no alpha


@dataclass(frozen=True)
class Format:
    name: str  # as written in the config
    pil: str  # Pillow's format name
    mime: str
    extension: str
    alpha: bool  # can carry transparency


FORMATS = {
    "jpeg": Format("jpeg", "JPEG", "image/jpeg", ".jpg", False),
    "png": Format("png", "PNG", "image/png", ".png", True),
    "webp": Format("webp", "WEBP", "image/webp", ".webp", True),
}
ALIASES = {"jpg": "jpeg"}


def image_format(name: str) -> Format:
    """The output format called `name` (case-insensitive), or ValueError listing the known ones."""
    key = ALIASES.get(name.lower(), name.lower())
    try:
        return FORMATS[key]
    except KeyError:
        raise ValueError(f"unknown image format {name!r} (known: {', '.join(FORMATS)})") from None


@dataclass(frozen=True)
class Target:
    """One image to produce: longest side at most `size` pixels (never upscaled)."""

    path: Path
    size: int
    format: str = "jpeg"
    quality: int = 85


@dataclass(frozen=True)
class Made:
    """A written sub-definition file."""

    path: Path
    width: int
    height: int
    bytes: int
    mime: str


def fitted(width: int, height: int, longest: int) -> tuple[int, int]:
    """(width, height) scaled so the longest side is at most `longest`, aspect kept."""
    scale = longest / max(width, height)
    if scale >= 1:
        return width, height
    return max(1, round(width * scale)), max(1, round(height * scale))


def make_images(source: Path, targets: Sequence[Target]) -> list[Made]:
    """Write every target from `source`; MediaError if it cannot be read. Same order as `targets`."""
    if not targets:
        return []
    for t in targets:
        image_format(t.format)
        if t.size < 1:
            raise ValueError(f"{t.path}: size must be at least 1 pixel")
    base, icc, orientation = _load(source, max(t.size for t in targets))
    made: dict[int, Made] = {}
    current = base
    for i in sorted(range(len(targets)), key=lambda i: -targets[i].size):
        current = _resize(current, targets[i].size)
        made[i] = _save(_orient(current, orientation), targets[i], icc)
    return [made[i] for i in range(len(targets))]


def _load(source: Path, longest: int) -> tuple[Image.Image, bytes | None, int]:
    try:
        with Image.open(source) as im:
            orientation = _orientation(im)
            if longest < max(im.size):
                # JPEG only (no-op elsewhere): libjpeg decodes at the smallest 1/n scale still >= target
                w, h = im.size
                scale = longest / max(w, h)
                im.draft(None, (max(1, math.ceil(w * scale)), max(1, math.ceil(h * scale))))
            im.load()
            icc = im.info.get("icc_profile") or None
            return _normalise(im, icc) + (orientation,)
    except UnidentifiedImageError:
        raise MediaError(f"{source.name}: not an image format Pillow can read") from None
    except Image.DecompressionBombError as e:
        raise MediaError(f"{source.name}: image too large to decode safely ({e})") from None
    except FileNotFoundError:
        raise MediaError(f"{source}: document file is missing") from None
    except MemoryError:
        raise
    except Exception as e:  # Pillow's plugins raise many types on hostile input; all mean "broken document"
        raise MediaError(f"{source.name}: cannot decode image: {e or type(e).__name__}") from None


def _orientation(im: Image.Image) -> int:
    try:
        value = im.getexif().get(ORIENTATION_TAG, 1)
    except Exception:  # a broken EXIF block must not stop a thumbnail
        return 1
    return value if isinstance(value, int) and value in TRANSPOSE else 1


def _orient(im: Image.Image, orientation: int) -> Image.Image:
    method = TRANSPOSE.get(orientation)
    return im.transpose(method) if method is not None else im


def _space(icc: bytes | None) -> bytes | None:
    """The ICC header's colour-space signature: b"RGB ", b"GRAY", b"CMYK"..."""
    return icc[16:20] if icc and len(icc) >= 128 else None


def _normalise(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    """Bring any mode to L, LA, RGB or RGBA, with an ICC profile only if it fits the result."""
    mode = im.mode
    if mode == "CMYK":
        return _cmyk_to_srgb(im, icc if _space(icc) == b"CMYK" else None)
    if mode.startswith("I") or mode == "F":
        im = _to_8bit(im)
    elif mode == "1":
        im = im.convert("L")
    elif mode == "P":
        im = im.convert("RGBA" if "transparency" in im.info else "RGB")
    elif mode in ("PA", "RGBa"):
        im = im.convert("RGBA")
    elif mode == "RGBX":
        im = im.convert("RGB")
    elif mode == "La":
        im = im.convert("LA")
    elif mode not in ("L", "LA", "RGB", "RGBA"):
        im = im.convert("RGB")  # YCbCr, LAB, HSV
    expected = b"GRAY" if im.mode in ("L", "LA") else b"RGB "
    return im, icc if _space(icc) == expected else None


def _to_8bit(im: Image.Image) -> Image.Image:
    """16-bit and float greys scaled to 0..255 (Pillow's convert would clip at 255)."""
    if im.mode not in ("I", "F"):
        im = im.convert("I")
    lo, hi = cast(tuple[float, float], im.getextrema())  # (one band, I or F: its low and high)
    if im.mode == "I":
        top = 255 if hi <= 255 else 65535 if hi <= 65535 else hi
        scale, offset = 255 / top, 0.0
    else:
        span = (hi - lo) or 1.0
        scale, offset = 255 / span, -lo * 255 / span
    return im.point(lambda v: v * scale + offset).convert("L")


@functools.lru_cache(maxsize=16)
def _cms_transform(icc: bytes, mode: str):  # type: ignore[no-untyped-def]
    from PIL import ImageCms

    source = ImageCms.ImageCmsProfile(io.BytesIO(icc))
    srgb = ImageCms.createProfile("sRGB")
    return ImageCms.buildTransform(source, srgb, mode, "RGB", ImageCms.Intent.PERCEPTUAL)


@functools.cache
def srgb_profile() -> bytes:
    from PIL import ImageCms

    return ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()


def _cmyk_to_srgb(im: Image.Image, icc: bytes | None) -> tuple[Image.Image, bytes | None]:
    if icc is not None:
        try:
            return _cms_transform(icc, im.mode).apply(im), srgb_profile()
        except Exception:  # a broken profile: fall back to the naive conversion below
            pass
    return im.convert("RGB"), None


def _resize(im: Image.Image, longest: int) -> Image.Image:
    size = fitted(im.width, im.height, longest)
    if size == im.size:
        return im
    return im.resize(size, Image.Resampling.LANCZOS, reducing_gap=2.0)


def _flatten(im: Image.Image) -> Image.Image:
    """Alpha laid over a white background, for formats without transparency."""
    base_mode = "L" if im.mode == "LA" else "RGB"
    background = Image.new(base_mode, im.size, BACKGROUND[0] if base_mode == "L" else BACKGROUND)
    background.paste(im.convert(base_mode), mask=im.getchannel("A"))
    return background


def _save(im: Image.Image, target: Target, icc: bytes | None) -> Made:
    fmt = image_format(target.format)
    if im.mode in ("LA", "RGBA") and not fmt.alpha:
        im = _flatten(im)
    if fmt.name == "webp" and im.mode in ("L", "LA"):
        im = im.convert("RGBA" if im.mode == "LA" else "RGB")
        icc = None if _space(icc) == b"GRAY" else icc
    params: dict[str, object] = {}
    if fmt.name in ("jpeg", "webp"):
        params["quality"] = target.quality
    if icc:
        params["icc_profile"] = icc
    # a failure here (disk full, permissions) is the host's, not the document's: OSError passes
    with atomic_writer(target.path) as f:
        im.save(f, format=fmt.pil, **params)
    return Made(target.path, im.width, im.height, target.path.stat().st_size, fmt.mime)
