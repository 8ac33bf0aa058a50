"""Temp name + size check + rename against a server with quirks: renames it refuses, a
server that never replaces, a size check that finds a short upload."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from schedulerd.context import TaskContext
from schedulerd.settings import build
from tasks.ftp_push import BATCH_FILES, FtpPush, PushSettings
from tasks.transfer import NotFound, RemoteError, TransferError, connect
from tasks.transfer.send import send
from tests.transfer import servers
from tests.transfer.servers import FtpServer, settings_for

pytestmark = pytest.mark.anyio

# pyftpdlib noting what it received; RNTO refused for names with "refuse", and onto an
# existing file for names with "noreplace" (as servers that never replace do); SIZE
# answers 1 for names with "short" (as after a data connection cut short); STOR of a name with
# "drop" closes the session (as a server that goes away mid-batch). With QUIRK_SIZE_WORDS, SIZE
# answers in words (`213 File size: N`, as some servers do); with QUIRK_DROP_AFTER_RENAMES=N,
# the session that makes the server's Nth rename closes after its reply, ignoring the commands
# already sent after it (as a server that goes away amid pipelined renames)
QUIRKS = r"""
import os, sys
sys.path.insert(0, sys.argv.pop(1))
import pyftpd_server as base

notes = open(os.environ["QUIRK_NOTES"], "a", buffering=1)
plain = base.make_handler
renamed = [0]  # by the server (every session)


def make_handler(opts):
    class Quirky(plain(opts)):
        def _note(self, cmd, path):
            notes.write(f"{cmd} {os.path.basename(path)}\n")

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
            done = super().ftp_RNTO(path)
            renamed[0] += 1
            if renamed[0] == int(os.environ.get("QUIRK_DROP_AFTER_RENAMES", 0)):
                notes.write("DROP\n")
                self.dropped = True
                self.close_when_done()  # after this reply
            return done

        def pre_process_command(self, line, cmd, arg):
            if not getattr(self, "dropped", False):  # commands read with the last rename's: ignored
                return super().pre_process_command(line, cmd, arg)
            return None

        def ftp_SIZE(self, path):
            self._note("SIZE", path)
            words = "File size: " if os.environ.get("QUIRK_SIZE_WORDS") else ""
            if "short" in os.path.basename(path):  # as after a data connection cut short
                self.respond(f"213 {words}1")
                return None
            if words and os.path.isfile(path):
                self.respond(f"213 {words}{os.path.getsize(path)}")
                return None
            return super().ftp_SIZE(path)

        def ftp_STOR(self, path, mode="w"):
            self._note("STOR", path)
            if "drop" in os.path.basename(path):
                self.close()
                return None
            return super().ftp_STOR(path, mode)

        def ftp_DELE(self, path):
            notes.write(f"DELE {os.path.basename(path)}\n")
            return super().ftp_DELE(path)

    return Quirky


base.make_handler = make_handler
base.main()
"""


@contextlib.contextmanager
def quirky(folder: Path, **env: str) -> Iterator[tuple[FtpServer, Path]]:
    """The quirky server; `env`: QUIRK_* switches (see QUIRKS)."""
    notes = folder / "notes.txt"
    folder.mkdir(parents=True, exist_ok=True)
    notes.touch()
    with servers.pyftpd(folder, subclass=QUIRKS, env={"QUIRK_NOTES": str(notes), **env}) as server:
        yield server, notes


@pytest.fixture
def log() -> logging.Logger:
    return logging.getLogger("schedulerd.test.rename")


def local_files(folder: Path, names: list[str]) -> dict[str, bytes]:
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for i, name in enumerate(names):
        made[name] = f"{name}:{i}".encode() * (100 * (i + 1))
        (folder / name).write_bytes(made[name])
    return made


async def test_a_refused_rename_keeps_the_temp_and_names_the_refusal(tmp_path: Path, log: logging.Logger) -> None:
    made = local_files(tmp_path / "out", ["a.bin", "c-refuse.bin", "d.bin"])
    with quirky(tmp_path / "srv") as (server, notes):
        async with await connect(settings_for(server), log) as c:
            results: dict[str, BaseException | str] = {}
            for name in made:
                try:
                    results[name] = await send(c, tmp_path / "out" / name, "/up", log=log)
                except RemoteError as e:
                    results[name] = e
                assert not c.broken, name  # replies stayed in step
    assert results["a.bin"] == "/up/a.bin" and results["d.bin"] == "/up/d.bin"
    assert isinstance(results["c-refuse.bin"], RemoteError) and "RNTO: 550" in str(results["c-refuse.bin"])
    assert not isinstance(results["c-refuse.bin"], NotFound)
    up = server.root / "up"
    for name in ("a.bin", "d.bin"):
        assert (up / name).read_bytes() == made[name], name
    assert not (up / "c-refuse.bin").exists()
    assert (up / ".c-refuse.bin.part").read_bytes() == made["c-refuse.bin"]  # refused: kept under its temp name


async def test_server_that_never_replaces_gets_delete_then_rename(tmp_path: Path, log: logging.Logger) -> None:
    made = local_files(tmp_path / "out", ["x-noreplace.bin"])
    with quirky(tmp_path / "srv") as (server, notes):
        (server.root / "up").mkdir()
        (server.root / "up" / "x-noreplace.bin").write_bytes(b"old version")
        async with await connect(settings_for(server), log) as c:
            assert await send(c, tmp_path / "out" / "x-noreplace.bin", "/up", log=log) == "/up/x-noreplace.bin"
            assert not c.broken
    assert (server.root / "up" / "x-noreplace.bin").read_bytes() == made["x-noreplace.bin"]
    lines = notes.read_text().splitlines()
    assert lines.index("DELE x-noreplace.bin") > lines.index("RNTO x-noreplace.bin")


def push_task(server: FtpServer, outbox: Path, tmp_path: Path) -> tuple[FtpPush, TaskContext]:
    """An ftp_push task `dropbox` from `outbox` to the server's /up (no retries, files taken at once)."""
    task = FtpPush(build(PushSettings, servers.task_table(server, outbox, "up"), "tasks.dropbox"))
    return task, TaskContext.for_test("dropbox", task.settings, tmp_path=tmp_path)


@pytest.mark.parametrize("worded", [False, True], ids=["213 N", "213 File size: N"])
async def test_push_renames_only_files_whose_remote_size_matches(tmp_path: Path, worded: bool) -> None:
    outbox = tmp_path / "outbox"
    made = local_files(outbox, ["a.bin", "b-short.bin", "c.bin"])
    with quirky(tmp_path / "srv", **({"QUIRK_SIZE_WORDS": "1"} if worded else {})) as (server, notes):
        task, ctx = push_task(server, outbox, tmp_path)
        with pytest.raises(TransferError, match=r"sent 2 files.*1 failed.*\.b-short\.bin\.part: remote size 1, local size"):
            await task.run_once(ctx)
    up = server.root / "up"
    assert sorted(p.name for p in up.iterdir()) == ["a.bin", "c.bin"]  # the short one: temp deleted
    for name in ("a.bin", "c.bin"):
        assert (up / name).read_bytes() == made[name]
    assert sorted(p.name for p in outbox.iterdir()) == ["b-short.bin"]  # kept locally for the next pass
    lines = notes.read_text().splitlines()
    assert "DELE .b-short.bin.part" in lines  # the short temp deleted
    assert not any(ln.startswith(("RNFR .b-short", "RNTO b-short")) for ln in lines)  # never renamed


async def test_a_batch_checks_every_size_before_renaming_and_never_renames_a_short_upload(tmp_path: Path) -> None:
    """More files than one batch (BATCH_FILES) over one session: short uploads first, last and in
    the middle of a batch, a refused rename beside them; the replies of the pipelined checks and
    renames stay in step, only the whole files are renamed, each batch's sizes asked before its renames."""
    outbox = tmp_path / "outbox"
    kinds = {0: "short", 17: "short", 18: "refuse", BATCH_FILES - 1: "short", BATCH_FILES + 3: "short"}
    names = [f"{i:02}-{kinds.get(i, 'ok')}.bin" for i in range(BATCH_FILES + 8)]
    made = local_files(outbox, names)
    with quirky(tmp_path / "srv") as (server, notes):
        task, ctx = push_task(server, outbox, tmp_path)
        with pytest.raises(TransferError, match=rf"sent {len(names) - 5} files.*5 failed"):
            await task.run_once(ctx)
    whole = [n for n in names if "ok" in n]
    up = server.root / "up"
    assert sorted(p.name for p in up.iterdir()) == sorted([*whole, ".18-refuse.bin.part"])
    for name in whole:
        assert (up / name).read_bytes() == made[name], name
    assert sorted(p.name for p in outbox.iterdir()) == sorted(n for n in names if "ok" not in n)  # kept for the next pass
    lines = notes.read_text().splitlines()
    for name in (n for n in names if "short" in n):
        assert f"DELE .{name}.part" in lines
        assert not any(ln.endswith(name) or ln.endswith(f".{name}.part") for ln in lines if ln.startswith(("RNFR", "RNTO")))
    first_batch = names[:BATCH_FILES]
    last_size = max(lines.index(f"SIZE .{n}.part") for n in first_batch)
    assert last_size < min(lines.index(f"RNFR .{n}.part") for n in first_batch if "ok" in n)


async def test_a_session_lost_mid_batch_fails_that_file_and_sends_the_others_on_a_new_one(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    names = [f"{i:02}-{'drop' if i == 4 else 'ok'}.bin" for i in range(10)]
    made = local_files(outbox, names)
    with quirky(tmp_path / "srv") as (server, notes):
        task, ctx = push_task(server, outbox, tmp_path)
        with pytest.raises(TransferError, match=r"sent 9 files.*1 failed"):
            await task.run_once(ctx)
    up = server.root / "up"
    whole = [n for n in names if "ok" in n]
    assert sorted(p.name for p in up.iterdir() if not p.name.startswith(".")) == whole
    for name in whole:
        assert (up / name).read_bytes() == made[name], name
    assert [p.name for p in outbox.iterdir()] == ["04-drop.bin"]  # kept for the next pass
    assert not any("drop" in ln for ln in notes.read_text().splitlines() if ln.startswith(("RNFR", "RNTO")))


async def test_a_session_lost_amid_the_renames_keeps_the_renamed_files_sent_and_retries_only_the_others(
        tmp_path: Path) -> None:
    """The server renames 3 of a batch's 6 pipelined pairs, answers them and goes away: those 3 are
    sent (removed locally, never sent again), the other 3 fail and go up on the next pass."""
    outbox = tmp_path / "outbox"
    names = [f"{i:02}.bin" for i in range(6)]
    made = local_files(outbox, names)
    with quirky(tmp_path / "srv", QUIRK_DROP_AFTER_RENAMES="3") as (server, notes):
        task, ctx = push_task(server, outbox, tmp_path)
        with pytest.raises(TransferError, match=r"sent 3 files.*3 failed.*lost"):
            await task.run_once(ctx)
        assert sorted(p.name for p in outbox.iterdir()) == names[3:]  # the renamed ones recorded as sent
        assert await task.run_once(ctx)  # the second pass sends the rest
    up = server.root / "up"
    assert sorted(p.name for p in up.iterdir()) == names
    for name in names:
        assert (up / name).read_bytes() == made[name], name
    assert not list(outbox.iterdir())
    lines = notes.read_text().splitlines()
    assert lines.count("DROP") == 1
    for name in names:
        assert lines.count(f"RNTO {name}") == 1, name  # each file renamed into the drop box once
        assert lines.count(f"STOR .{name}.part") == (1 if name in names[:3] else 2), name
