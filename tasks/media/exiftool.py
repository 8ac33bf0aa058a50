"""An async client for one long-lived `exiftool -stay_open True -@ -` child.

Starting exiftool (Perl plus its module tree) costs far more than writing a few
tags, so a batch talks to one supervised child instead of one process per file:

- requests are serialised by a lock and framed by number: the arguments end with
  `-echo4 {status=${status}}{readyN}` and `-execute{N}`, so stdout ends with
  `{readyN}` and stderr (captured, never left to fill its pipe) with the status;
- every request has a timeout; on timeout or cancellation the child's whole
  process group is killed, and the next request starts a new child (a child that
  died by itself is restarted the same way), so one bad file never wedges a batch;
- values pass intact: multi-line ones through `-TAG<=FILE`, edge blanks preserved;
- `aclose()` ends the child cleanly with `-stay_open False`, killing it only if it
  does not exit in time; a parent-death signal kills it if the daemon itself is
  killed (exiftool would otherwise poll its closed stdin forever).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import subprocess
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from anyio.abc import ByteReceiveStream, Process

from schedulerd.durable import fsync_dir
from schedulerd.plugin import TaskLog
from schedulerd.process import die_with_parent, spawn

from .errors import ToolError, ToolTimeout
from .files import fsync_file
from .tools import find_tool, kill_group, tail

TAG_RE = re.compile(r"^[A-Za-z][\w-]*(:[A-Za-z][\w-]*)*$")
TEMP_SUFFIX = "_exiftool_tmp"  # exiftool writes FILE_exiftool_tmp, then renames it over FILE
_STREAM_ERRORS = (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError)


class ExifToolError(ToolError):
    """exiftool refused a request or died while doing it."""


@dataclass(frozen=True)
class ExifResult:
    stdout: str
    stderr: str
    status: int  # exiftool's exit status for this command: 0 ok, 1 error, 2 -if failed


@dataclass(frozen=True)
class WriteResult:
    updated: bool  # False when the file already held these values
    warnings: tuple[str, ...]


class _Died(Exception):
    pass


def _alive(process: Process) -> bool:
    """Running, as far as the kernel knows: a child killed between requests may not be reaped
    yet (returncode still None), but /proc already shows it as a zombie."""
    if process.returncode is not None:
        return False
    try:
        state = Path(f"/proc/{process.pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0]
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc (not Linux): trust returncode
    except (OSError, IndexError):
        return True
    return state not in (b"Z", b"X")


def encode_arg(arg: str) -> bytes:
    """One argument as one line of the `-@` stream.

    exiftool strips a line's leading blanks and treats `#` lines as comments, and its
    `#[CSTR]` escape form mangles `$` and `@` (12.x), so arguments that cannot be a
    plain line are refused here; multi-line values go through files (`tag_assignments`).
    """
    if any(c in arg for c in "\n\r\0") or arg[:1].isspace() or arg.startswith("#"):
        raise ValueError(f"exiftool argument {arg[:40]!r} cannot be passed on one line")
    return arg.encode("utf-8", "surrogateescape") + b"\n"


def check_tag(tag: str) -> str:
    """A tag name like `XMP-dc:Title`; ValueError otherwise (no option can slip in as a tag)."""
    if not TAG_RE.match(tag):
        raise ValueError(f"{tag!r} is not an exiftool tag name like XMP-dc:Title")
    return tag


def tag_assignments(tags: Mapping[str, str | Sequence[str] | None], spill: Callable[[str], Path]) -> list[str]:
    """`-TAG=value` arguments; None or an empty list deletes the tag, a list gives several values.

    A value with line breaks is written to a file by `spill` and passed as `-TAG<=FILE`;
    a value starting with a blank gets one extra blank, the one exiftool's line parser eats.
    """
    args: list[str] = []
    if any(t.upper().startswith("IPTC:") for t in tags):
        args += ["-charset", "iptc=UTF8", "-IPTC:CodedCharacterSet=UTF8"]
    for tag, value in tags.items():
        check_tag(tag)
        values = [value] if isinstance(value, str) else list(value or ())
        if not values or values == [""]:
            args.append(f"-{tag}=")
            continue
        for v in values:
            if "\0" in v:
                raise ValueError(f"{tag}: a value cannot contain NUL characters")
            if "\n" in v or "\r" in v:
                args.append(f"-{tag}<={spill(v)}")
            else:
                args.append(f"-{tag}={' ' if v[:1].isspace() else ''}{v}")
    return args


class _Buffer:
    """Bytes read from one pipe, cut at the framing marker of the current request."""

    def __init__(self) -> None:
        self.data = bytearray()

    async def read_until(self, stream: ByteReceiveStream, marker: re.Pattern[bytes]) -> tuple[bytes, tuple[bytes, ...]]:
        """The bytes before `marker` and the marker's groups (copied: the buffer then shrinks)."""
        start = 0
        while True:
            m = marker.search(self.data, start)
            if m:
                out, groups = bytes(self.data[: m.start()]), tuple(bytes(g) for g in m.groups())
                del self.data[: m.end()]
                return out, groups
            start = max(0, len(self.data) - 64)
            try:
                self.data += await stream.receive()
            except _STREAM_ERRORS:
                raise _Died from None


class ExifTool:
    """One supervised exiftool child; use as `async with ExifTool() as et:`."""

    def __init__(
        self,
        executable: str = "exiftool",
        *,
        timeout: float = 30.0,
        start_timeout: float = 20.0,
        close_timeout: float = 5.0,
        log: TaskLog | None = None,
    ):
        self.executable = executable
        self.timeout = timeout
        self.start_timeout = start_timeout
        self.close_timeout = close_timeout
        self.log = log or logging.getLogger("schedulerd.exiftool")
        self.version: str | None = None
        self.starts = 0  # 1 after the first start; more means restarts
        self._process: Process | None = None
        self._lock = anyio.Lock()
        self._seq = 0
        self._out = _Buffer()
        self._err = _Buffer()

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None and self._process.returncode is None else None

    async def __aenter__(self) -> ExifTool:
        async with self._lock:
            await self._ensure_started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    # --- the child ----------------------------------------------------------------

    async def _ensure_started(self) -> None:
        if self._process is not None and _alive(self._process):
            return
        if self._process is not None:
            with anyio.move_on_after(1):
                await self._process.wait()
            self.log.warning("exiftool (pid %s) exited with status %s; restarting it",
                             self._process.pid, self._process.returncode)
            await self._discard()
        path = find_tool(self.executable)
        try:
            self._process = await spawn(
                die_with_parent([path, "-stay_open", "True", "-@", "-"]), start_new_session=True, stdin=subprocess.PIPE
            )
        except OSError as e:
            raise ExifToolError(f"exiftool could not start: {e.strerror or e}") from None
        self.starts += 1
        self._out, self._err = _Buffer(), _Buffer()
        result = await self._request(["-ver"], self.start_timeout)
        self.version = result.stdout.strip()
        self.log.info("exiftool %s started (pid %s)", self.version, self._process.pid)

    async def _discard(self) -> None:
        """Kill what is left of the child and forget it."""
        process, self._process = self._process, None
        if process is None:
            return
        kill_group(process)
        with anyio.CancelScope(shield=True):
            await process.aclose()

    async def _request(self, args: Sequence[str], timeout: float) -> ExifResult:
        process = self._process
        assert process is not None and process.stdin and process.stdout and process.stderr
        self._seq += 1
        n = self._seq
        payload = b"".join(encode_arg(a) for a in args)
        payload += b"-echo4\n{status=${status}}{ready%d}\n-execute%d\n" % (n, n)
        out_marker = re.compile(rb"(?:^|\n)\{ready%d\}\n" % n)
        err_marker = re.compile(rb"\{status=(-?\d+)\}\{ready%d\}\n" % n)
        results: dict[str, tuple[bytes, tuple[bytes, ...]]] = {}
        died = False

        async def read(key: str, buffer: _Buffer, stream: ByteReceiveStream, marker: re.Pattern[bytes]) -> None:
            nonlocal died
            try:
                results[key] = await buffer.read_until(stream, marker)
            except _Died:
                died = True
                tg.cancel_scope.cancel()

        try:
            with anyio.fail_after(timeout):
                try:
                    await process.stdin.send(payload)
                except _STREAM_ERRORS:
                    died = True
                if not died:
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(read, "out", self._out, process.stdout, out_marker)
                        tg.start_soon(read, "err", self._err, process.stderr, err_marker)
        except TimeoutError:
            await self._discard()
            raise ToolTimeout(f"exiftool gave no answer within {timeout:g}s and was killed "
                              "(a new one starts on the next request)") from None
        except BaseException:  # cancelled mid-request: the child's answer would be out of step
            await self._discard()
            raise
        if died:
            with anyio.move_on_after(1, shield=True):
                await process.wait()
            rc, stderr = process.returncode, bytes(self._err.data).decode("utf-8", "replace")
            await self._discard()
            raise ExifToolError(f"exiftool exited (status {rc}) during a request"
                                + (f": {tail(stderr)}" if stderr.strip() else ""))
        out = results["out"][0].decode("utf-8", "replace")
        err, (status,) = results["err"]
        return ExifResult(out, err.decode("utf-8", "replace"), int(status))

    # --- requests -------------------------------------------------------------------

    async def execute(self, *args: str, timeout: float | None = None) -> ExifResult:
        """Run one exiftool command (its arguments; the framing is added here)."""
        async with self._lock:
            await self._ensure_started()
            return await self._request(args, self.timeout if timeout is None else timeout)

    async def read_tags(self, path: Path, tags: Sequence[str] = ()) -> dict[str, Any]:
        """Tags of `path` keyed `Group1:Tag` (`XMP-dc:Title`, `IPTC:Keywords`)."""
        return await self._read_json(path, "-G1", tags)

    async def read_values(self, path: Path, tags: Sequence[str]) -> dict[str, list[str]]:
        """Each of `tags` found in `path` -> its values, as text: several for a list-type tag
        (`IPTC:Keywords`). A tag is named by its family 0 or family 1 group, as the databox
        structure names it: `EXIF:DateTimeOriginal` (stored in ExifIFD), `XMP-dc:Title`."""
        data = await self._read_json(path, "-G0:1", tags)
        wanted = [(t.rpartition(":")[0].lower(), t.rpartition(":")[2].lower(), t) for t in tags]
        out: dict[str, list[str]] = {}
        for key, value in data.items():
            *groups, name = key.lower().split(":")
            for group, tag_name, tag in wanted:
                if tag_name == name and group in groups:
                    values = value if isinstance(value, list) else [value]
                    out.setdefault(tag, []).extend(str(v) for v in values)
        return out

    async def _read_json(self, path: Path, group_option: str, tags: Sequence[str]) -> dict[str, Any]:
        result = await self.execute("-json", group_option, "-a", *[f"-{check_tag(t)}" for t in tags],
                                    str(path.absolute()))
        if result.status != 0 or not result.stdout.strip():
            raise ExifToolError(f"{path.name}: exiftool could not read it: {tail(result.stderr) or 'no output'}")
        try:
            data = json.loads(result.stdout)[0]
        except (ValueError, IndexError, TypeError):
            raise ExifToolError(f"{path.name}: exiftool gave unreadable JSON") from None
        if not isinstance(data, dict):
            raise ExifToolError(f"{path.name}: exiftool gave {type(data).__name__}, not an object of tags")
        data.pop("SourceFile", None)
        return data

    async def write_tags(self, path: Path, tags: Mapping[str, str | Sequence[str] | None],
                         options: Sequence[str] = ()) -> WriteResult:
        """Set `tags` in `path` in place, atomically (exiftool's temp + rename), then sync it.

        `options` are extra exiftool options placed before the assignments (`-sep`, `;`).

        Raises ExifToolError if exiftool reports an error or leaves its temporary behind:
        the original is then untouched.
        """
        path = path.absolute()
        temp = path.with_name(path.name + TEMP_SUFFIX)
        warnings: list[str] = []
        if temp.exists():  # left by a killed write; exiftool would refuse to write while it exists
            temp.unlink()
            warnings.append(f"removed {temp.name} left by an interrupted write")
        with tempfile.TemporaryDirectory(prefix="schedulerd-exiftool-") as spill_dir:
            spilled = itertools.count()

            def spill(value: str) -> Path:
                file = Path(spill_dir) / f"value{next(spilled)}.txt"
                file.write_bytes(value.encode("utf-8"))
                return file

            args = ["-overwrite_original", "-m", *options, *tag_assignments(tags, spill), str(path)]
            result = await self.execute(*args)
        lines = [ln.strip() for ln in result.stderr.splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("Error")]
        warnings += [ln for ln in lines if ln.startswith("Warning")]
        if temp.exists():
            temp.unlink()
            raise ExifToolError(f"{path.name}: exiftool left a half-written {temp.name} (removed); the file is unchanged")
        if errors or result.status != 0:
            raise ExifToolError(f"{path.name}: {'; '.join(errors) or f'exiftool status {result.status}'}")
        updated = bool(re.search(r"\b1 image files? updated", result.stdout))
        if updated:
            fsync_file(path)
            fsync_dir(path.parent)
        return WriteResult(updated, tuple(warnings))

    # --- ending ---------------------------------------------------------------------

    async def aclose(self) -> None:
        """Ask the child to finish (`-stay_open False`); kill it if it does not in time."""
        with anyio.CancelScope(shield=True):
            async with self._lock:
                process = self._process
                if process is None:
                    return
                with anyio.move_on_after(self.close_timeout):
                    try:
                        assert process.stdin is not None
                        await process.stdin.send(b"-stay_open\nFalse\n")
                        await process.stdin.aclose()
                    except _STREAM_ERRORS:
                        pass
                    await process.wait()
                if process.returncode is None:
                    self.log.warning("exiftool (pid %s) did not exit within %gs; killed", process.pid, self.close_timeout)
                await self._discard()
