"""PDF sub-definitions: the first page rendered by poppler's pdftoppm, then Pillow.

pdftoppm renders straight at the largest size needed (`-scale-to`), so a poster
sized page costs no more than a thumbnail-sized one; the smaller targets are
cascaded from that render by the image code.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path

import anyio

from .errors import MediaError
from .images import Made, Target, make_images
from .tools import run_tool


async def make_page_images(source: Path, targets: Sequence[Target], *, timeout: float) -> list[Made]:
    """Images of page 1 of `source`; ToolError (with pdftoppm's message) for a broken PDF."""
    if not targets:
        return []
    longest = max(t.size for t in targets)
    with tempfile.TemporaryDirectory(prefix="schedulerd-pdf-") as tmp:
        prefix = Path(tmp) / "page"
        await run_tool(
            ["pdftoppm", "-f", "1", "-l", "1", "-singlefile", "-scale-to", str(longest), "-png", source, prefix],
            timeout=timeout,
        )
        page = prefix.with_suffix(".png")
        if not page.exists():
            raise MediaError(f"{source.name}: pdftoppm rendered no page")
        return await anyio.to_thread.run_sync(make_images, page, targets)
