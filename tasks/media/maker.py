"""Which sub-definitions a document gets, and making them: one call per record.

A sub-definition declaration (the databox config's `SubdefSettings`, or a
`Spec`) names a media class; a record gets the declarations of its own class.
This module turns (document, declarations) into files, routing each class to
its maker: Pillow for images, ffmpeg for video, pdftoppm for documents.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import anyio

from . import images, pdf, video
from .errors import MediaError
from .images import Made, Target

if TYPE_CHECKING:
    from repository import SubdefSettings

MEDIA_CLASSES = ("image", "video", "document")
DEFAULT_TIMEOUT = 120.0

VIDEO_EXTENSIONS = frozenset(
    ".mp4 .m4v .mov .qt .avi .mkv .webm .mpg .mpeg .mpe .wmv .flv .3gp .3g2 .mts .m2ts .ts .ogv .mxf .dv".split()
)
DOCUMENT_EXTENSIONS = frozenset(".pdf .ai .doc .docx .odt .ods .odp .ppt .pptx .xls .xlsx .rtf".split())
AUDIO_EXTENSIONS = frozenset(".mp3 .wav .flac .aac .m4a .ogg .oga .opus .aif .aiff .wma".split())


class SpecLike(Protocol):  # (read-only: a frozen SubdefSettings is one)
    @property
    def media_class(self) -> str: ...
    @property
    def size(self) -> int: ...
    @property
    def format(self) -> str: ...
    @property
    def quality(self) -> int: ...


@dataclass(frozen=True)
class Spec:
    """One declared sub-definition: `thumbnail` = image, 240 px, jpeg, quality 80."""

    name: str
    media_class: str = "image"
    size: int = 240
    format: str = "jpeg"
    quality: int = 85

    @classmethod
    def of(cls, name: str, settings: SpecLike) -> Spec:
        return cls(name, settings.media_class, int(settings.size), settings.format.lower(), int(settings.quality))


# used when a databox declares none: the same two for every class (a video's are stills of a frame)
DEFAULT_SPECS = tuple(
    Spec(name, media_class, size, "jpeg", 85)
    for media_class in MEDIA_CLASSES
    for name, size in (("thumbnail", 240), ("preview", 1024))
)


def check_spec(spec: Spec) -> None:
    """ValueError naming what is wrong, for config checks."""
    if spec.media_class not in MEDIA_CLASSES:
        raise ValueError(f"{spec.name}: unknown media class {spec.media_class!r} (known: {', '.join(MEDIA_CLASSES)})")
    if not 1 <= spec.size <= 20000:
        raise ValueError(f"{spec.name}: size must be from 1 to 20000 pixels, got {spec.size}")
    if not 0 <= spec.quality <= 100:
        raise ValueError(f"{spec.name}: quality must be from 0 to 100, got {spec.quality}")
    allowed = list(images.FORMATS) + (list(video.PREVIEW_FORMATS) if spec.media_class == "video" else [])
    if images.ALIASES.get(spec.format, spec.format) not in allowed:
        raise ValueError(f"{spec.name}: format {spec.format!r} is not possible for {spec.media_class} "
                         f"(possible: {', '.join(allowed)})")


def extension(spec: Spec) -> str:
    """File extension of the sub-definition's files (`.jpg`, `.mp4`)."""
    if spec.format in video.PREVIEW_FORMATS:
        return f".{spec.format}"
    return images.image_format(spec.format).extension


def classify(path: Path, mime: str | None = None) -> str | None:
    """Media class of a document, from its MIME type, name or first bytes; None if unknown."""
    if mime:
        major = mime.split("/", 1)[0].lower()
        if major in ("image", "video", "audio"):
            return major
        if mime.lower() in ("application/pdf", "application/postscript"):
            return "document"
    suffix = path.suffix.lower()
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in DOCUMENT_EXTENSIONS:
        return "document"
    if suffix in AUDIO_EXTENSIONS:
        return "audio"
    if suffix in _image_extensions():
        return "image"
    return _sniff(path)


def _image_extensions() -> frozenset[str]:
    from PIL import Image

    Image.init()
    return frozenset(e for e, f in Image.registered_extensions().items() if f in Image.OPEN and f != "PDF")


def _sniff(path: Path) -> str | None:
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except OSError:
        return None
    if head.startswith(b"%PDF"):
        return "document"
    if head[4:8] == b"ftyp":
        return "image" if head[8:12] in (b"heic", b"heix", b"avif", b"mif1") else "video"
    if head.startswith((b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"II*\x00", b"MM\x00*", b"BM")) or head[8:12] == b"WEBP":
        return "image"
    if head.startswith(b"\x1aE\xdf\xa3") or head[8:11] == b"AVI":
        return "video"
    return None


def applicable(specs: Sequence[Spec], media_class: str | None) -> list[Spec]:
    return [s for s in specs if s.media_class == media_class]


async def make_subdefs(
    source: Path, media_class: str, jobs: Sequence[tuple[Spec, Path]], *, timeout: float = DEFAULT_TIMEOUT
) -> list[tuple[Spec, Made]]:
    """Write each (spec, destination); MediaError for a document that cannot be made into them."""
    if not jobs:
        return []
    source = source.absolute()
    if not source.is_file():
        raise MediaError(f"{source}: document file is missing")
    stills = [(s, Target(d.absolute(), s.size, s.format, s.quality)) for s, d in jobs if s.format not in video.PREVIEW_FORMATS]
    movies = [(s, Target(d.absolute(), s.size, s.format, s.quality)) for s, d in jobs if s.format in video.PREVIEW_FORMATS]
    targets = [t for _, t in stills]
    if movies and media_class != "video":
        raise MediaError(f"{source.name}: a {movies[0][1].format} sub-definition needs a video")
    made: list[Made]
    if media_class == "image":
        made = await anyio.to_thread.run_sync(images.make_images, source, targets)
    elif media_class == "video":
        made = await video.make_frame_images(source, targets, timeout=timeout)
        made += [await video.make_preview(source, t, timeout=timeout) for _, t in movies]
    elif media_class == "document":
        if source.suffix.lower() != ".pdf" and _sniff(source) != "document":
            raise MediaError(f"{source.name}: only PDF documents get sub-definitions")
        made = await pdf.make_page_images(source, targets, timeout=timeout)
    else:
        raise MediaError(f"{source.name}: no sub-definitions for media class {media_class!r}")
    return list(zip([s for s, _ in stills] + [s for s, _ in movies], made, strict=True))


def as_specs(declared: Mapping[str, SubdefSettings] | None) -> list[Spec]:
    """Specs from a databox's `subdefs` mapping (name -> SubdefSettings); the defaults if empty."""
    if not declared:
        return list(DEFAULT_SPECS)
    return [Spec.of(name, s) for name, s in declared.items()]
