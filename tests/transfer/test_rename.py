"""Renames and size checks pipelined with the next upload's EPSV (`FtpClient.rename_later`,
`size_later`): each reply goes to its own command, also when the piggybacked RNFR or RNTO is
refused or a size does not match, and the session stays usable.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedulerd.context import TaskContext
from schedulerd.settings import build
from tasks.ftp_push import FtpPush, PushSettings
from tasks.transfer import ConnectError, NotFound, RemoteError, TransferError, connect
from tasks.transfer.send import finish_later, stage
from tests.transfer import servers
from tests.transfer.servers import FtpServer, settings_for

pytestmark = pytest.mark.anyio

# pyftpdlib noting what it received: for RNFR/RNTO, the next command already in its input
# buffer (the same packet); RNTO refused for names with "refuse", and onto an existing
# file for names with "noreplace" (as servers that never replace do)
QUIRKS = r"""
import os, sys
sys.path.insert(0, sys.argv.pop(1))
import pyftpd_server as base

notes = open(os.environ["QUIRK_NOTES"], "a", buffering=1)
plain = base.make_handler


def make_handler(opts):
    class Quirky(plain(opts)):
        def _note(self, cmd, path):
            nxt = self.ac_in_buffer.split(b"\r\n", 1)[0].decode(errors="replace").split(" ", 1)[0]
            notes.write(f"{cmd} {os.path.basename(path)} +{nxt}\n")

        def ftp_RNFR(self, path):
            self._note("RNFR", path)
            return super().ftp_RNFR(path)

        def ftp_RNTO(self, path):
            self._note("RNTO", path)
            name = os.path.basename(path)
            if "refuse" in name or ("noreplace" in name and os.path.exists(path)):
                self._rnfr = None
                self.respond("550 Rename refused.")
                return None
            return super().ftp_RNTO(path)

        def ftp_SIZE(self, path):
            self._note("SIZE", path)
            if "short" in os.path.basename(path):  # as after a data connection cut short
                self.respond("213 1")
                return None
            return super().ftp_SIZE(path)

        def ftp_DELE(self, path):
            notes.write(f"DELE {os.path.basename(path)}\n")
            return super().ftp_DELE(path)

    return Quirky


base.make_handler = make_handler
base.main()
"""


@contextlib.contextmanager
def quirky(folder: Path) -> Iterator[tuple[FtpServer, Path]]:
    notes = folder / "notes.txt"
    folder.mkdir(parents=True, exist_ok=True)
    notes.touch()
    with servers.pyftpd(folder, subclass=QUIRKS, env={"QUIRK_NOTES": str(notes)}) as server:
        yield server, notes


@pytest.fixture
def log() -> logging.Logger:
    return logging.getLogger("schedulerd.test.pipelining")


def local_files(folder: Path, names: list[str]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for i, name in enumerate(names):
        made[name] = f"{name}:{i}".encode() * (100 * (i + 1))
        (folder / name).write_bytes(made[name])
    return made


async def test_refused_piggybacked_rnfr_and_rnto_go_to_their_own_rename(
        tmp_path: Path, log: logging.Logger) -> None:
    made = local_files(tmp_path / "out", ["a.bin", "b-gone.bin", "c-refuse.bin", "d.bin", "e.bin"])
    with quirky(tmp_path / "srv") as (server, notes):
        async with await connect(settings_for(server), log) as c:
            assert c.pipelined_renames
            results: dict[str, BaseException | str] = {}
            pending = None
            for name in made:
                staged = await stage(c, tmp_path / "out" / name, "/up")  # carries the previous rename
                if pending is not None:
                    prev, later = pending
                    try:
                        results[prev] = await later()
                    except (RemoteError, ConnectError) as e:
                        results[prev] = e
                    assert not c.broken, prev  # replies stayed in step
                if name == "b-gone.bin":  # vanishes before its rename goes out: RNFR 550, RNTO 503
                    (server.root / "up" / ".b-gone.bin.part").unlink()
                pending = (name, finish_later(c, staged, log=log))
            prev, later = pending
            results[prev] = await later()  # nothing left to carry it: a plain RNFR/RNTO
            assert not c.broken
    assert results["a.bin"] == "/up/a.bin" and results["d.bin"] == "/up/d.bin" and results["e.bin"] == "/up/e.bin"
    assert isinstance(results["b-gone.bin"], NotFound) and "RNFR: 550" in str(results["b-gone.bin"])
    assert isinstance(results["c-refuse.bin"], RemoteError) and "RNTO: 550" in str(results["c-refuse.bin"])
    assert not isinstance(results["c-refuse.bin"], NotFound)
    up = server.root / "up"
    for name in ("a.bin", "d.bin", "e.bin"):
        assert (up / name).read_bytes() == made[name], name  # each its own content, complete
    assert not (up / "b-gone.bin").exists() and not (up / "c-refuse.bin").exists()
    assert (up / ".c-refuse.bin.part").read_bytes() == made["c-refuse.bin"]  # refused: kept under its temp name
    lines = notes.read_text().splitlines()
    for name in ("a.bin", "b-gone.bin", "c-refuse.bin", "d.bin"):  # in the packet of the next upload's EPSV
        assert f"RNFR .{name}.part +RNTO" in lines, lines
        assert f"RNTO {name} +EPSV" in lines, lines
    assert not any(ln.startswith("RNTO e.bin +EPSV") for ln in lines)  # the last one went alone


async def test_server_that_never_replaces_gets_delete_then_rename(tmp_path: Path, log: logging.Logger) -> None:
    made = local_files(tmp_path / "out", ["x-noreplace.bin", "y.bin"])
    with quirky(tmp_path / "srv") as (server, notes):
        (server.root / "up").mkdir()
        (server.root / "up" / "x-noreplace.bin").write_bytes(b"old version")
        async with await connect(settings_for(server), log) as c:
            later = finish_later(c, await stage(c, tmp_path / "out" / "x-noreplace.bin", "/up"), log=log)
            staged_y = await stage(c, tmp_path / "out" / "y.bin", "/up")  # carries x's rename: RNTO 550
            assert await later() == "/up/x-noreplace.bin"  # then DELE + RNFR/RNTO, plainly
            assert await finish_later(c, staged_y, log=log)() == "/up/y.bin"
            assert not c.broken
    assert (server.root / "up" / "x-noreplace.bin").read_bytes() == made["x-noreplace.bin"]
    assert (server.root / "up" / "y.bin").read_bytes() == made["y.bin"]
    lines = notes.read_text().splitlines()
    i = lines.index("RNTO x-noreplace.bin +EPSV")
    assert "DELE x-noreplace.bin" in lines[i:]


async def test_rename_not_carried_when_the_session_is_lost(tmp_path: Path, log: logging.Logger) -> None:
    local_files(tmp_path / "out", ["a.bin"])
    with quirky(tmp_path / "srv") as (server, _):
        c = await connect(settings_for(server), log)
        try:
            later = finish_later(c, await stage(c, tmp_path / "out" / "a.bin", "/up"), log=log)
            server.kill()
            with pytest.raises(ConnectError):
                await c.list("/up")  # the EPSV packet (carrying the rename) finds no server
            assert c.broken
            with pytest.raises(ConnectError):  # never reported as renamed
                await later()
        finally:
            await c.aclose()
    assert not (server.root / "up" / "a.bin").exists()


async def test_push_checks_each_size_with_the_next_upload_and_renames_only_matching_files(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    made = local_files(outbox, ["a.bin", "b-short.bin", "c.bin", "d.bin"])
    with quirky(tmp_path / "srv") as (server, notes):
        data = {"host": server.host, "port": server.port, "user": server.user, "password": server.password,
                "timeout": 5, "retries": 0, "local_dir": str(outbox), "remote_dir": "/up", "stable": 0}
        task = FtpPush(build(PushSettings, data, "tasks.dropbox"))
        ctx = TaskContext.for_test("dropbox", task.settings, tmp_path=tmp_path)
        with pytest.raises(TransferError, match=r"sent 3 files.*1 failed.*b-short.bin: remote size 1, local size"):
            await task.run_once(ctx)
    up = server.root / "up"
    assert sorted(p.name for p in up.iterdir()) == ["a.bin", "c.bin", "d.bin"]  # the short one: temp deleted
    for name in ("a.bin", "c.bin", "d.bin"):
        assert (up / name).read_bytes() == made[name]
    assert sorted(p.name for p in outbox.iterdir()) == ["b-short.bin"]  # kept locally for the next pass
    lines = notes.read_text().splitlines()
    sizes = [ln for ln in lines if ln.startswith("SIZE ")]
    assert [ln.split(" ")[1] for ln in sizes] == [".a.bin.part", ".b-short.bin.part", ".c.bin.part", ".d.bin.part"]
    assert all(not ln.endswith(" +") for ln in sizes[:3]), sizes  # each in the packet of the next upload
    assert sizes[3].endswith(" +")  # the last one went alone
    assert lines.index("DELE .b-short.bin.part") < lines.index("RNTO d.bin +")  # refused at once, in order
    assert not any(ln.startswith(("RNFR .b-short", "RNTO b-short")) for ln in lines)  # never renamed
