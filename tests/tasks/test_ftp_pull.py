"""`ftp_pull` against real servers (vsftpd, pyftpdlib, sshd), through TaskContext.for_test."""

from __future__ import annotations

import json
import logging
import os
import resource
import signal
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.settings import build  # noqa: E402
from tasks.ftp_pull import FtpPull, PullSettings  # noqa: E402
from tasks.transfer import AuthError, TransferError  # noqa: E402
from tests.transfer.conftest import anyio_backend  # noqa: E402,F401  (fixture; the servers' come from conftest.py)
from tests.transfer.servers import FtpServer, SshServer, task_table  # noqa: E402

pytestmark = pytest.mark.anyio


def pull_task(server: FtpServer | SshServer, local: Path, **over: Any) -> FtpPull:
    data = task_table(server, local, **over)
    return FtpPull(build(PullSettings, data, "tasks.agency"))


def context(task: FtpPull, tmp_path: Path, name: str = "agency") -> TaskContext:
    ctx = TaskContext.for_test(name, task.settings, tmp_path=tmp_path)
    ctx.seen_progress = []  # type: ignore[attr-defined]
    ctx._on_progress = lambda done, total: ctx.seen_progress.append((done, total))  # type: ignore[attr-defined]
    return ctx


async def test_pull_from_vsftpd_deletes_remote_and_keeps_mtime(vsftpd: FtpServer, tmp_path: Path) -> None:
    local = tmp_path / "hotfolder"
    for i in range(5):
        vsftpd.put(f"photo{i}.jpg", bytes([i]) * (1000 * (i + 1)), mtime=1_700_000_000 + i)
    vsftpd.put(".uploading.jpg", b"partial")
    task = pull_task(vsftpd, local, parallel=3, stable=0.2)
    ctx = context(task, tmp_path)
    summary = await task.run_once(ctx)
    assert summary is not None and summary.startswith("pulled 5 files")
    assert sorted(p.name for p in local.iterdir()) == [f"photo{i}.jpg" for i in range(5)]
    for i in range(5):
        p = local / f"photo{i}.jpg"
        assert p.read_bytes() == bytes([i]) * (1000 * (i + 1))
        assert os.stat(p).st_mtime == 1_700_000_000 + i  # exact, via MDTM (vsftpd has no MLSD)
    assert sorted(p.name for p in vsftpd.pub.iterdir()) == [".uploading.jpg"]  # pulled ones deleted remotely
    assert ctx.seen_progress[0] == (0, 5) and ctx.seen_progress[-1] == (5, 5)  # type: ignore[attr-defined]
    assert ctx.events == [("ftp.pulled", {"local_dir": str(local), "files": 5})]  # type: ignore[attr-defined]
    assert await task.run_once(ctx) == "nothing new in /pub (0 files listed)"


async def test_files_still_changing_wait_for_the_next_pass(pyftpd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pyftpd() as server:
        server.put("done.tif", b"d" * 100)
        growing = server.put("growing.tif", b"g" * 100)
        task = pull_task(server, tmp_path / "in", stable=0.2)
        ctx = context(task, tmp_path)
        waits: list[float] = []
        real_sleep = ctx.sleep

        async def sleep(seconds: float) -> bool:  # the agency's upload goes on during the wait
            waits.append(seconds)
            with open(growing, "ab") as f:
                f.write(b"more")
            return await real_sleep(seconds)

        ctx.sleep = sleep  # type: ignore[method-assign]
        summary = await task.run_once(ctx)
        assert waits and 0.15 < waits[0] <= 0.2
        assert "pulled 1 file" in summary and "1 still changing" in summary  # type: ignore[operator]
        assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["done.tif"]
        assert growing.exists()
        ctx.sleep = real_sleep  # type: ignore[method-assign]
        await task.run_once(ctx)
        assert (tmp_path / "in" / "growing.tif").read_bytes() == b"g" * 100 + b"more"


async def test_ledger_when_remote_files_are_kept(pyftpd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pyftpd() as server:
        server.put("a.txt", b"one", mtime=1_700_000_000)
        server.put("sub/b.txt", b"two")
        server.put("sub/skip.doc", b"no")
        task = pull_task(server, tmp_path / "in", delete_remote=False, recursive=True, masks=["*.TXT"])
        ctx = context(task, tmp_path)
        assert (await task.run_once(ctx)).startswith("pulled 2 files")  # type: ignore[union-attr]
        assert (tmp_path / "in/a.txt").read_bytes() == b"one" and (tmp_path / "in/sub/b.txt").read_bytes() == b"two"
        assert not (tmp_path / "in/sub/skip.doc").exists()
        ledger = json.loads(task.ledger_path(ctx).read_text())
        assert set(ledger["files"]) == {"a.txt", "sub/b.txt"}
        (tmp_path / "in/a.txt").unlink()  # the archive took it: it must not come back
        assert (await task.run_once(ctx)).startswith("nothing new")  # type: ignore[union-attr]
        assert not (tmp_path / "in/a.txt").exists()
        server.put("a.txt", b"one, edited", mtime=1_700_000_500)  # a new version is pulled again
        server.put("sub/b.txt", b"TWO", mtime=1_700_000_600)
        assert (await task.run_once(ctx)).startswith("pulled 2 files")  # type: ignore[union-attr]
        assert (tmp_path / "in/a.txt").read_bytes() == b"one, edited"
        assert (tmp_path / "in/sub/b (1).txt").read_bytes() == b"TWO"  # on_exists = "rename"
        (server.root / "sub/b.txt").unlink()
        await task.run_once(ctx)
        assert set(json.loads(task.ledger_path(ctx).read_text())["files"]) == {"a.txt"}  # forgotten when gone


@pytest.mark.parametrize("on_exists", ["skip", "overwrite"])
async def test_on_exists(pyftpd, tmp_path: Path, on_exists: str) -> None:  # type: ignore[no-untyped-def]
    local = tmp_path / "in"
    local.mkdir()
    (local / "f.txt").write_bytes(b"local")
    with pyftpd() as server:
        server.put("f.txt", b"remote")
        task = pull_task(server, local, on_exists=on_exists)
        summary = await task.run_once(context(task, tmp_path))
        if on_exists == "skip":
            assert "1 skipped" in summary and (local / "f.txt").read_bytes() == b"local"  # type: ignore[operator]
            assert (server.root / "f.txt").exists()  # not deleted: it was not pulled
        else:
            assert (local / "f.txt").read_bytes() == b"remote" and not (server.root / "f.txt").exists()


async def test_wrong_password_fails_the_pass_without_showing_it(pyftpd, tmp_path: Path, all_logs) -> None:  # type: ignore[no-untyped-def]
    with pyftpd(password="good-one") as server:
        server.put("x", b"x")
        task = pull_task(server, tmp_path / "in", password="Bad-Pull-Pass-1", retries=2)
        with pytest.raises(AuthError) as e:
            await task.run_once(context(task, tmp_path))
    assert "Bad-Pull-Pass-1" not in str(e.value) and "Bad-Pull-Pass-1" not in all_logs.text
    assert "retry" not in all_logs.text  # a refused login is not retried


async def test_server_killed_mid_download_then_resumed(pyftpd, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:  # type: ignore[no-untyped-def]
    payload = os.urandom(900_000)
    local = tmp_path / "in"
    with pyftpd("--die-after", "250000") as server:
        server.put("big.bin", payload, mtime=1_700_000_000)
        server.put("small.txt", b"s", mtime=1_700_000_000)
        root = server.root
        task = pull_task(server, local)
        ctx = context(task, tmp_path)
        with pytest.raises(TransferError):
            await task.run_once(ctx)
    assert not (local / "big.bin").exists()  # never a half file under its name
    assert (root / "big.bin").exists()  # nor deleted on the server
    with pyftpd(port=server.port) as again:
        assert again.root != root
        for name in ("big.bin", "small.txt"):
            if (root / name).exists():
                again.put(name, (root / name).read_bytes(), mtime=1_700_000_000)
        with caplog.at_level(logging.INFO, "schedulerd.task.agency"):
            await task.run_once(ctx)
        assert "resuming" in caplog.text
    assert (local / "big.bin").read_bytes() == payload
    assert sorted(p.name for p in local.iterdir()) == ["big.bin", "small.txt"]


async def test_full_local_disk_deletes_nothing_remotely(pyftpd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with pyftpd() as server:
        server.put("huge.bin", b"h" * 600_000)
        task = pull_task(server, tmp_path / "in")
        ctx = context(task, tmp_path)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, hard))  # writes beyond fail like a full disk
        try:
            with pytest.raises(TransferError, match="cannot write"):
                await task.run_once(ctx)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
            signal.signal(signal.SIGXFSZ, old)
        assert (server.root / "huge.bin").stat().st_size == 600_000
        assert not (tmp_path / "in" / "huge.bin").exists()
        await task.run_once(ctx)  # room again: resumes and completes
        assert (tmp_path / "in" / "huge.bin").stat().st_size == 600_000
        assert not (server.root / "huge.bin").exists()


async def test_hostile_names_never_escape(pyftpd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listing = tmp_path / "list.txt"
    listing.write_bytes(b"-rw-r--r--   1 u g  2 Jan 01  2025 ok.txt\r\n"
                        b"-rw-r--r--   1 u g  2 Jan 01  2025 ../escape.txt\r\n"
                        b"-rw-r--r--   1 u g  2 Jan 01  2025 ..\r\n"
                        b"-rw-r--r--   1 u g  2 Jan 01  2025 /tmp/abs.txt\r\n"
                        b"\x00\x01 binary garbage\r\n")
    with pyftpd("--no-mlsd", "--listing", str(listing)) as server:
        server.put("ok.txt", b"ok")
        local = tmp_path / "deep" / "in"
        task = pull_task(server, local)
        assert (await task.run_once(context(task, tmp_path))).startswith("pulled 1 file")  # type: ignore[union-attr]
    assert [p.name for p in local.iterdir()] == ["ok.txt"]
    assert not (tmp_path / "deep" / "escape.txt").exists() and not Path("/tmp/abs.txt").exists()


async def test_sftp_pull_in_parallel(sshd: SshServer, tmp_path: Path) -> None:
    for i in range(12):
        (sshd.root / f"f{i:02}.bin").write_bytes(os.urandom(50_000 + i))
    expected = {p.name: p.read_bytes() for p in sshd.root.iterdir()}
    task = pull_task(sshd, tmp_path / "in", parallel=4)
    summary = await task.run_once(context(task, tmp_path))
    assert summary.startswith("pulled 12 files")  # type: ignore[union-attr]
    assert {p.name: p.read_bytes() for p in (tmp_path / "in").iterdir()} == expected
    assert list(sshd.root.iterdir()) == []


async def test_ftps_pull_vsftpd(vsftpd_tls: FtpServer, certs, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    for i in range(4):
        vsftpd_tls.put(f"d/{i}.txt", str(i).encode())
    task = pull_task(vsftpd_tls, tmp_path / "in", protocol="ftps", ca_file=str(certs.ca_file), recursive=True,
                     parallel=2, remote_dir="/pub")
    assert (await task.run_once(context(task, tmp_path))).startswith("pulled 4 files")  # type: ignore[union-attr]
    assert sorted(p.name for p in (tmp_path / "in" / "d").iterdir()) == ["0.txt", "1.txt", "2.txt", "3.txt"]


def test_settings_are_flat_and_checked(tmp_path: Path) -> None:
    from schedulerd.settings import ConfigError

    s = build(PullSettings, {"host": "h", "local_dir": "in", "password": "p"}, "tasks.x", tmp_path)
    assert s.local_dir == tmp_path / "in" and s.stable == 25.0 and s.delete_remote and s.port == 21
    assert FtpPull.default_period == 900.0
    with pytest.raises(ConfigError, match="local_dir: missing"):
        build(PullSettings, {"host": "h"}, "tasks.x")
    with pytest.raises(ConfigError, match="masks"):
        build(PullSettings, {"host": "h", "local_dir": "/x", "masks": ["a/b"]}, "tasks.x")


def test_plan_resumes_current_temps_drops_stale_ones_and_refuses_escapes(tmp_path: Path,
                                                                        caplog: pytest.LogCaptureFixture) -> None:
    from tasks.ftp_pull import plan
    from tasks.transfer import RemoteEntry
    from tasks.transfer.fetch import part_path

    local, outside = tmp_path / "in", tmp_path / "elsewhere"
    (local / "sub").mkdir(parents=True)
    outside.mkdir()
    (local / "esc").symlink_to(outside)
    todo = {rel: RemoteEntry(name=rel.rsplit("/", 1)[-1], path=f"/drop/{rel}", type="file", size=10, mtime=1.7e9)
            for rel in ("a.txt", "sub/b.txt", "esc/c.txt")}
    current = part_path(local / "a.txt", todo["a.txt"])
    current.write_bytes(b"half")
    changed = RemoteEntry(name="b.txt", path="/drop/sub/b.txt", type="file", size=9, mtime=1.6e9)
    stale = part_path(local / "sub" / "b.txt", changed)  # the remote file changed since it was started
    stale.write_bytes(b"old")
    unrelated = part_path(local / "sub" / "other.txt", changed)
    unrelated.write_bytes(b"not ours to judge")
    with caplog.at_level(logging.WARNING):
        p = plan(local, todo, logging.getLogger("test"))
    assert set(p.places) == {"a.txt", "sub/b.txt"}
    assert p.places["sub/b.txt"] == (local / "sub" / "b.txt", part_path(local / "sub" / "b.txt", todo["sub/b.txt"]))
    assert p.resumable == {"a.txt"} and p.places["a.txt"][1] == current and current.read_bytes() == b"half"
    assert not stale.exists() and unrelated.exists()
    assert "refusing 'esc/c.txt'" in caplog.text and not list(outside.iterdir())


async def test_a_server_allowing_fewer_sessions_than_parallel_is_still_emptied(  # type: ignore[no-untyped-def]
        pyftpd, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    local = tmp_path / "in"
    with pyftpd("--max-per-ip", "2") as server:
        for i in range(8):
            server.put(f"f{i}.txt", f"file {i}".encode())
        task = pull_task(server, local, parallel=4)
        with caplog.at_level(logging.WARNING):
            summary = await task.run_once(context(task, tmp_path))
        assert summary is not None and summary.startswith("pulled 8 files"), summary
        assert sorted(p.name for p in local.iterdir()) == [f"f{i}.txt" for i in range(8)]
        assert not [p for p in server.root.iterdir() if p.is_file()]  # all deleted once safe
    assert "cannot open one more session" in caplog.text and "going on with fewer than parallel = 4" in caplog.text
    assert server.password not in caplog.text


async def test_the_ledger_is_read_and_written_off_the_event_loop(vsftpd: FtpServer, tmp_path: Path) -> None:
    """A ledger on a slow disk (a FIFO whose writer comes 3 s later): the pass waits for it in a
    worker thread while the loop goes on, then pulls as usual and writes the ledger back."""
    from tests.tasks.loopwatch import fifo_served_later, longest_stall

    task = pull_task(vsftpd, tmp_path / "in", stable=0, delete_remote=False)
    ctx = context(task, tmp_path)
    assert (await task.run_once(ctx) or "").startswith("nothing new")  # (the modules a pass imports: imported)
    task.ledger_path(ctx).unlink()
    vsftpd.put("new.jpg", b"n" * 100, mtime=1_700_000_000)
    vsftpd.put("old.jpg", b"o" * 100, mtime=1_700_000_000)
    ledger = {"version": 1, "files": {"old.jpg": [100, 1_700_000_000.0]}}
    writer = fifo_served_later(task.ledger_path(ctx), json.dumps(ledger).encode(), 3.0)
    summary, stall = await longest_stall(lambda: task.run_once(ctx))
    writer.join(5)
    assert stall < 1.5, f"the event loop stood still {stall:.1f}s"
    assert summary is not None and summary.startswith("pulled 1 file"), summary
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == ["new.jpg"]
    assert set(json.loads(task.ledger_path(ctx).read_text())["files"]) == {"new.jpg", "old.jpg"}
