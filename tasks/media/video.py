"""Video sub-definitions with ffmpeg: a still frame at 10 % and a small H.264 preview.

The frame is taken at 10 % of the duration (past black leaders and titles), then
goes through the same Pillow code as photos, so still formats, sizes and
colour handling are identical for every media class. The preview is H.264 in
MP4 with `+faststart` so browsers start playing before the download ends.
No ffmpeg means ToolNotFound ("ffmpeg not found"), a state of the host that the
task reports rather than an error of the record.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio

from .errors import MediaError, ToolError
from .files import atomic_path
from .images import Made, Target, make_images
from .tools import find_tool, run_tool

FRAME_AT = 0.10
PREVIEW_FORMATS = {"mp4": "video/mp4"}


@dataclass(frozen=True)
class VideoInfo:
    duration: float | None
    width: int
    height: int


def crf_for(quality: int) -> int:
    """Config quality 0..100 to x264 CRF: 100 -> 18 (near lossless), 0 -> 40."""
    return round(40 - 22 * max(0, min(100, quality)) / 100)


async def probe(source: Path, *, timeout: float) -> VideoInfo:
    """Duration and size of the first video stream; MediaError if there is none."""
    result = await run_tool(
        ["ffprobe", "-v", "error", "-select_streams", "v:0", "-show_entries",
         "format=duration:stream=width,height", "-of", "json", "--", source],
        timeout=timeout,
    )
    try:
        data = json.loads(result.stdout or b"{}")
    except ValueError:
        raise MediaError(f"{source.name}: ffprobe gave unreadable output") from None
    streams = data.get("streams") or []
    if not streams or not streams[0].get("width"):
        raise MediaError(f"{source.name}: no video stream")
    try:
        duration: float | None = float(data.get("format", {}).get("duration"))
    except (TypeError, ValueError):
        duration = None
    if duration is not None and not (math.isfinite(duration) and duration > 0):
        duration = None
    return VideoInfo(duration, int(streams[0]["width"]), int(streams[0]["height"]))


async def _grab_frame(source: Path, frame: Path, at: float, timeout: float) -> None:
    await run_tool(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", "-ss", f"{at:.3f}", "-i", source,
         "-map", "0:v:0", "-frames:v", "1", "-an", "-f", "image2", "-c:v", "png", frame],
        timeout=timeout,
    )


async def make_frame_images(source: Path, targets: Sequence[Target], *, timeout: float) -> list[Made]:
    """Still images (thumbnail, poster) from the frame at 10 % of the video."""
    if not targets:
        return []
    find_tool("ffmpeg")  # "ffmpeg not found" rather than ffprobe's name: one package, one message
    info = await probe(source, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="schedulerd-frame-") as tmp:
        frame = Path(tmp) / "frame.png"
        try:
            await _grab_frame(source, frame, (info.duration or 0) * FRAME_AT, timeout)
        except ToolError:
            frame.unlink(missing_ok=True)
        if not frame.exists() or frame.stat().st_size == 0:  # bad duration or seek: try the first frame
            await _grab_frame(source, frame, 0, timeout)
        return await anyio.to_thread.run_sync(make_images, frame, targets)


async def make_preview(source: Path, target: Target, *, timeout: float) -> Made:
    """A small H.264/AAC MP4, longest side at most `target.size`, never upscaled."""
    if target.format not in PREVIEW_FORMATS:
        raise ValueError(f"unknown video preview format {target.format!r} (known: {', '.join(PREVIEW_FORMATS)})")
    find_tool("ffmpeg")
    s = int(target.size)
    scale = (f"scale=w='min({s},iw)':h='min({s},ih)':force_original_aspect_ratio=decrease"
             ":force_divisible_by=2")
    await probe(source, timeout=timeout)  # a clear "no video stream" before a long transcode
    with atomic_path(target.path) as tmp:
        await run_tool(
            ["ffmpeg", "-nostdin", "-v", "error", "-y", "-i", source,
             "-map", "0:v:0", "-map", "0:a:0?", "-vf", scale,
             "-c:v", "libx264", "-preset", "veryfast", "-crf", str(crf_for(target.quality)),
             "-pix_fmt", "yuv420p", "-movflags", "+faststart",
             "-c:a", "aac", "-b:a", "128k", "-ac", "2", "-f", "mp4", tmp],
            timeout=timeout,
        )
    info = await probe(target.path, timeout=timeout)
    return Made(target.path, info.width, info.height, target.path.stat().st_size, PREVIEW_FORMATS[target.format])
