"""`ftp_push` (a local drop box sent to a server) and the `ftp` job type (old name `ftp_export`).

Every file goes up under a hidden temp name, its remote size is checked, then
it is renamed (see `transfer.send`): a reader on the other side never sees a
half file. `ftp` jobs (from `export:ftp`) keep each element's outcome
under the job's state folder, so a retry never sends again what was sent.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, ClassVar

import anyio

from schedulerd.durable import write_atomic
from schedulerd.plugin import Context, JobType, TaskType
from schedulerd.settings import ConfigError, build, duration, int_range
from tasks.ftp_common import Progress, check_remote_dir
from tasks.transfer import RemoteClient, TransferError, close, connect, extra_session
from tasks.transfer.names import join, printable, unsafe_reason
from tasks.transfer.send import Outcome, Outgoing, send, send_batch
from tasks.transfer.settings import ConnectionSettings

# --- the drop-box task ------------------------------------------------------------

BATCH_FILES = 32  # files uploaded before their sizes are checked and they are renamed together
BATCH_BYTES = 8 * 1024 * 1024  # ... or fewer, once they make this many bytes


@dataclasses.dataclass(frozen=True, kw_only=True)
class PushSettings(ConnectionSettings):
    """The connection fields (flattened) plus the local folder to send."""

    local_dir: Path
    remote_dir: str = "/"
    recursive: bool = False
    masks: tuple[str, ...] = ()
    stable: Annotated[float, duration] = 5.0  # a file still being written locally waits
    parallel: Annotated[int, int_range(1, 32)] = 1

    def check(self) -> None:
        super().check()
        check_remote_dir(self.remote_dir)


def scan(s: PushSettings) -> dict[str, tuple[Path, int, int]]:
    """Regular, non-hidden files of `local_dir`: rel -> (path, size, mtime_ns)."""
    import fnmatch

    found: dict[str, tuple[Path, int, int]] = {}
    masks = [m.lower() for m in s.masks]
    todo = [("", s.local_dir)]
    while todo:
        rel_dir, folder = todo.pop()
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            continue
        for d in entries:
            if d.name.startswith("."):
                continue
            rel = f"{rel_dir}/{d.name}" if rel_dir else d.name
            if d.is_dir(follow_symlinks=False):
                if s.recursive:
                    todo.append((rel, Path(d.path)))
                continue
            if not d.is_file(follow_symlinks=False) or (masks and not any(fnmatch.fnmatchcase(d.name.lower(), m) for m in masks)):
                continue
            st = d.stat(follow_symlinks=False)
            found[rel] = (Path(d.path), st.st_size, st.st_mtime_ns)
    return found


class FtpPush(TaskType):
    """Send every stable file of `local_dir` to `remote_dir`; remove it locally once verified."""

    type_name: ClassVar[str] = "ftp_push"
    Settings: ClassVar[type] = PushSettings
    default_period: ClassVar[float] = 60.0

    settings: PushSettings

    async def _stable_files(self, ctx: Context) -> dict[str, tuple[Path, int, int]] | None:
        """The files unchanged over `stable` whose names can be used remotely; None: `local_dir` is empty."""
        s = self.settings
        first = await anyio.to_thread.run_sync(scan, s)
        if not first:
            return None
        todo = first
        if s.stable > 0:
            deadline = time.monotonic() + s.stable
            while (left := deadline - time.monotonic()) > 0:
                await ctx.sleep(left)
            again = await anyio.to_thread.run_sync(scan, s)
            todo = {rel: v for rel, v in first.items() if again.get(rel) == v}
        for rel in sorted(rel for rel in todo if unsafe_reason(rel.rsplit("/", 1)[-1])):
            ctx.log.warning("not sending %s: its name cannot be used remotely", printable(rel))
            del todo[rel]
        return todo

    async def run_once(self, ctx: Context) -> str | None:
        s = self.settings
        todo = await self._stable_files(ctx)
        if todo is None:
            return f"nothing to send in {s.local_dir}"
        if not todo:
            return "nothing stable to send yet"
        progress = Progress(ctx, len(todo), sum(v[1] for v in todo.values()))
        errors: list[str] = []
        work = collections.deque(sorted(todo.items()))
        fatal: list[TransferError] = []

        def take() -> list[tuple[str, tuple[Path, int, int]]]:
            """The next files to send together: up to BATCH_FILES, fewer once they make BATCH_BYTES."""
            batch: list[tuple[str, tuple[Path, int, int]]] = []
            size = 0
            while work and len(batch) < BATCH_FILES and size < BATCH_BYTES:
                batch.append(work.popleft())
                size += batch[-1][1][1]
            return batch

        async def settle(batch: list[tuple[str, tuple[Path, int, int]]], outcomes: list[Outcome]) -> None:
            """The sent files removed locally (one worker-thread call for the batch), the failed ones
            kept for the next pass, those not tried (the session broke) back in `work`."""
            sent = [v for (_, v), outcome in zip(batch, outcomes, strict=True) if isinstance(outcome, str)]
            removed = iter(await anyio.to_thread.run_sync(_remove_unchanged, sent) if sent else [])
            for item, outcome in zip(batch, outcomes, strict=True):
                path = item[1][0]
                if outcome is None:
                    work.appendleft(item)
                elif isinstance(outcome, TransferError):
                    ctx.log.warning("cannot send %s: %s", path, outcome)
                    errors.append(str(outcome))
                    progress.file_done(failed=True)
                else:
                    if next(removed) is False:
                        ctx.log.warning("%s changed while it was sent: kept, sent again next pass", path)
                    ctx.log.info("sent %s -> %s", path, outcome)
                    progress.file_done()

        async def worker(first: bool) -> None:
            client: RemoteClient | None = None
            try:
                if not first:  # logged in before it takes a file: one it could not send would be lost
                    client = await extra_session(s, ctx.log, s.parallel)
                    if client is None:
                        return
                while work and not fatal:
                    if client is None or client.broken:
                        await close(client)
                        client = None
                        try:
                            client = await connect(s, ctx.log)
                        except TransferError as e:
                            fatal.append(e)
                            break
                    if not (batch := take()):  # the others took the last files meanwhile
                        break
                    outgoing = [Outgoing(path, join(s.remote_dir, rel.rsplit("/", 1)[0]) if "/" in rel else s.remote_dir,
                                         path.name) for rel, (path, _, _) in batch]
                    await settle(batch, await send_batch(client, outgoing, log=ctx.log, on_bytes=progress.on_bytes))
            finally:
                await close(client)

        async with anyio.create_task_group() as tg:
            for i in range(min(s.parallel, len(todo))):
                tg.start_soon(worker, i == 0)
        progress.clear()
        summary = progress.summary("sent")
        if fatal:
            raise fatal[0]
        if errors:
            raise TransferError(f"{summary}; first error: {errors[0]}")
        return summary


def _remove_unchanged(sent: list[tuple[Path, int, int]]) -> list[bool | None]:
    """Remove each sent file (path, size, mtime_ns) unless it changed since it was scanned:
    True removed, False changed, None gone (blocking: run in a worker thread)."""
    removed: list[bool | None] = []
    for path, size, mtime_ns in sent:
        try:
            st = path.stat()
        except FileNotFoundError:
            removed.append(None)
            continue
        unchanged = (st.st_size, st.st_mtime_ns) == (size, mtime_ns)
        if unchanged:
            path.unlink(missing_ok=True)
        removed.append(unchanged)
    return removed


# --- the export job ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ExportPayload:
    destination: str
    files: tuple[str, ...] = ()
    records: tuple[int, ...] = ()
    databox: str | None = None
    remote_dir: str = "/"
    log_file: str | None = None  # a transfer log of this name is written beside the files

    def check(self) -> None:
        if not self.files and not self.records:
            raise ValueError("files: give at least one file or record")
        check_remote_dir(self.remote_dir)
        if self.log_file is not None and unsafe_reason(self.log_file):
            raise ValueError(f"log_file: not a usable file name: {self.log_file!r}")
        for i, f in enumerate(self.files):
            if not f or "\0" in f:
                raise ValueError(f"files[{i}]: not a path")
        for i, r in enumerate(self.records):
            if r <= 0:
                raise ValueError(f"records[{i}]: a record id is a positive integer")


@dataclasses.dataclass(frozen=True)
class Element:
    key: str  # stable across attempts: "file:/path" or "record:databox:id"
    path: Path
    name: str  # the remote file name


def _parse(payload: Mapping[str, Any]) -> ExportPayload:
    try:
        return build(ExportPayload, payload, "")
    except ConfigError as e:
        raise ValueError(str(e)) from None


def _databox_name(p: ExportPayload, config: Any) -> str | None:
    if not p.records:
        return None
    boxes: dict[str, object] = dict(getattr(config, "databoxes", {}) or {})
    if p.databox is not None:
        if p.databox not in boxes:
            raise ValueError(f"databox: unknown databox {p.databox!r} (known: {', '.join(sorted(boxes)) or 'none'})")
        return p.databox
    if len(boxes) != 1:
        raise ValueError(f"databox: say which databox holds the records (known: {', '.join(sorted(boxes)) or 'none'})")
    return next(iter(boxes))


def resolve(p: ExportPayload, config: Any) -> list[Element]:
    """Files and record documents to send, each with a unique remote name (blocking: run in a thread)."""
    found: list[tuple[str, Path, str]] = []
    for i, f in enumerate(p.files):
        path = Path(f)
        if not path.is_file():
            raise ValueError(f"files[{i}]: no such file {f}")
        found.append((f"file:{path}", path, path.name))
    box = _databox_name(p, config)
    if box is not None:
        from repository import DataboxError, open_databox

        try:
            with open_databox(config.databoxes[box], create=False) as db:
                for i, rid in enumerate(p.records):
                    r = db.get_record(rid)
                    if r.document_path is None:
                        raise ValueError(f"records[{i}]: record {rid} has no document")
                    found.append((f"record:{box}:{rid}", r.document_path, r.original_name or r.document_path.name))
        except DataboxError as e:
            raise ValueError(f"records: {e}") from None
    used: set[str] = set()
    out: list[Element] = []
    for key, path, name in found:
        if unsafe_reason(name):
            name = "file" + path.suffix
        base, candidate, i = Path(name), name, 0
        while candidate in used:  # two files of the same name: "a (1).jpg"
            i += 1
            candidate = f"{base.stem} ({i}){base.suffix}"
        used.add(candidate)
        out.append(Element(key, path, candidate))
    return out


class FtpExport(JobType):
    """Send files and/or record documents to an `[ftp_destinations.NAME]` server."""

    type_name: ClassVar[str] = "ftp"  # the Worker Manager's queue name; `ftp_export` is its old name
    default_queue: ClassVar[str] = "ftp"

    def check_payload(self, payload: Mapping[str, Any], config: Any) -> None:
        p = _parse(payload)
        dests = dict(getattr(config, "ftp_destinations", {}) or {})
        if p.destination not in dests:
            raise ValueError(f"destination: unknown ftp destination {p.destination!r} "
                             f"(known: {', '.join(sorted(dests)) or 'none, see [ftp_destinations]'})")
        resolve(p, config)

    def title(self, payload: Mapping[str, Any]) -> str:
        n = len(payload.get("files") or ()) + len(payload.get("records") or ())
        return f"ftp export to {payload.get('destination')}: {n} file{'s' if n != 1 else ''}"

    def state_path(self, ctx: Context) -> Path:
        return ctx.state_dir / f"{ctx.name}.ftp_export.json"

    async def run(self, ctx: Context, payload: Mapping[str, Any]) -> str | None:
        p = _parse(payload)
        dest = ctx.config.ftp_destinations[p.destination]
        elements = await anyio.to_thread.run_sync(resolve, p, ctx.config)
        state_file = self.state_path(ctx)
        outcomes = await anyio.to_thread.run_sync(_read_outcomes, state_file)
        sent_before = [e for e in elements if outcomes.get(e.key, {}).get("status") == "sent"]
        todo = [e for e in elements if e not in sent_before]
        if sent_before:
            ctx.log.info("%d of %d files were sent by an earlier attempt: not sent again", len(sent_before), len(elements))
        size = await anyio.to_thread.run_sync(lambda: sum(_size(e.path) for e in todo))
        progress = Progress(ctx, len(elements), size)
        progress.files_done = len(sent_before)
        client: RemoteClient | None = None

        def save() -> None:  # blocking: run in a worker thread
            state_file.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(state_file, json.dumps(outcomes, indent=1, sort_keys=True).encode())

        try:
            for e in todo:
                if client is None or client.broken:
                    await close(client)
                    client = None
                    client = await connect(dest, ctx.log)
                try:
                    final = await send(client, e.path, p.remote_dir, e.name, log=ctx.log, on_bytes=progress.on_bytes)
                except TransferError as err:
                    outcomes[e.key] = {"status": "failed", "name": e.name, "error": str(err), "at": time.time()}
                    ctx.log.warning("%s: failed: %s", e.name, err)
                    progress.file_done(failed=True)
                else:
                    outcomes[e.key] = {"status": "sent", "name": e.name, "remote": final, "bytes": _size(e.path),
                                       "at": time.time()}
                    ctx.log.info("%s: sent to %s", e.name, final)
                    progress.file_done()
                await anyio.to_thread.run_sync(save)
            failed = [e for e in elements if outcomes.get(e.key, {}).get("status") != "sent"]
            if p.log_file and not failed:
                client = await self._send_log(ctx, client, dest, p, elements, outcomes)
        finally:
            await close(client)
            progress.clear()
        if failed:
            first = outcomes.get(failed[0].key, {}).get("error", "not sent")
            raise TransferError(f"{len(failed)} of {len(elements)} files not sent to {p.destination}; "
                                f"{failed[0].name}: {first}")
        total = sum(o.get("bytes", 0) for o in outcomes.values() if o.get("status") == "sent")
        await anyio.to_thread.run_sync(functools.partial(state_file.unlink, missing_ok=True))
        return (f"sent {len(elements)} file{'s' if len(elements) != 1 else ''} "
                f"({total} bytes) to {p.destination}:{p.remote_dir}")

    async def _send_log(self, ctx: Context, client: RemoteClient | None, dest: ConnectionSettings, p: ExportPayload,
                        elements: list[Element], outcomes: dict[str, dict[str, Any]]) -> RemoteClient:
        """The transfer log beside the files: one line per file (time, size, name)."""
        lines = []
        for e in elements:
            o = outcomes[e.key]
            stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(o.get("at", 0)))
            lines.append(f"{stamp}\t{o.get('bytes', 0)}\t{e.name}\n")
        local = ctx.state_dir / f"{ctx.name}.{p.log_file}"
        await anyio.to_thread.run_sync(_write_file, local, "".join(lines).encode())
        try:
            if client is None or client.broken:
                await close(client)
                client = await connect(dest, ctx.log)
            await send(client, local, p.remote_dir, p.log_file, log=ctx.log)
        finally:
            local.unlink(missing_ok=True)
        ctx.log.info("transfer log written to %s", join(p.remote_dir, p.log_file or ""))
        return client


def _read_outcomes(state_file: Path) -> dict[str, dict[str, Any]]:
    """What an earlier attempt of an export job saved, by element key (blocking: run in a worker thread)."""
    try:
        outcomes: dict[str, dict[str, Any]] = json.loads(state_file.read_text())
    except FileNotFoundError:
        return {}
    return outcomes


def _write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, data)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


class FtpExportOldName(FtpExport):
    """`ftp_export`, the old name of the `ftp` job type: jobs queued under it still run (same queue)."""

    type_name: ClassVar[str] = "ftp_export"
