"""The fields the documents of one archive pass embed, read by one exiftool child."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

from schedulerd.plugin import Context

if TYPE_CHECKING:
    from repository import FieldType, Unit
    from tasks.media.exiftool import ExifTool

    from .settings import Settings


class Embedded:
    """The fields a document embeds (`[databoxes.NAME.fields] K = { src = "IPTC:Keywords" }`),
    read from the files of one pass by one exiftool child, started at the first file and ended
    with the pass; a caption's fields win over embedded ones. Without exiftool the pass archives
    without them and says why once (again after exiftool has been back)."""

    def __init__(self, settings: Settings, ctx: Context, sources: Mapping[str, str],
                 declared: Mapping[str, FieldType], problem: Callable[[str | None], None]):
        """`problem` says once why embedded fields are not read (None: they are again)."""
        self.settings, self.ctx, self.sources, self.declared = settings, ctx, sources, declared
        self.problem = problem
        self.tags = sorted(set(sources.values()))
        self.stack = contextlib.AsyncExitStack()
        self.et: ExifTool | None = None
        self.off = not sources

    async def __aenter__(self) -> Embedded:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stack.aclose()

    async def units(self, batch: list[Unit]) -> list[Unit]:
        """The batch's units with the fields their files embed."""
        return batch if self.off else [await self._unit(u) for u in batch]

    async def _unit(self, unit: Unit) -> Unit:
        from repository import display_name, embedded_fields
        from tasks.media import MediaError

        hot = self.settings.hotfolder
        path = hot / unit.rel
        # read only the file the scan saw: not through a folder swapped for a symlink since
        if path.parent.resolve() != (hot.resolve() / unit.rel).parent or path.is_symlink():
            return unit
        et = await self._exiftool()
        if et is None:
            return unit
        try:
            read = await et.read_values(path, self.tags)
        except MediaError as e:  # unreadable by exiftool, timed out: archived without them
            self.ctx.log.warning("%s: embedded metadata not read: %s", display_name(unit.rel), e)
            return unit
        fields, problems = embedded_fields(self.sources, self.declared, read)
        for problem in problems:
            self.ctx.log.warning("%s: embedded %s (field left empty)", display_name(unit.rel), problem)
        return dataclasses.replace(unit, fields={**fields, **unit.fields}) if fields else unit

    async def _exiftool(self) -> ExifTool | None:
        from tasks.media import MediaError
        from tasks.media.exiftool import ExifTool

        if self.et is None and not self.off:
            try:
                self.et = await self.stack.enter_async_context(ExifTool(self.settings.exiftool, log=self.ctx.log))
                self.problem(None)
            except MediaError as e:  # not installed, or does not start
                self.off = True
                fields = ", ".join(f"{k} ({v})" for k, v in self.sources.items())
                self.problem(f"embedded metadata is not read into {fields}: {e}")
        return self.et
