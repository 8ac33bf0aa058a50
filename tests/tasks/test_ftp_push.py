"""`ftp_push` (drop box) and `ftp` jobs (old name `ftp_export`) (via `export:ftp`) against real servers."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from schedulerd.context import TaskContext  # noqa: E402
from schedulerd.settings import build  # noqa: E402
from tasks.ftp_push import ExportPayload, FtpExport, FtpPush, PushSettings  # noqa: E402
from tasks.transfer import TransferError  # noqa: E402
from tests.transfer.conftest import anyio_backend  # noqa: E402,F401  (fixture; the servers' come from conftest.py)
from tests.transfer.servers import FtpServer, SshServer, task_table  # noqa: E402

pytestmark = pytest.mark.anyio


def push_task(server: FtpServer | SshServer, local: Path, **over: Any) -> FtpPush:
    data = task_table(server, local, "/dropped", **over)
    return FtpPush(build(PushSettings, data, "tasks.dropbox"))


async def test_drop_box_to_vsftpd(vsftpd: FtpServer, tmp_path: Path) -> None:
    local = tmp_path / "outbox"
    (local / "sub").mkdir(parents=True)
    (local / "a.jpg").write_bytes(b"a" * 5000)
    (local / "sub" / "b.jpg").write_bytes(b"b" * 7000)
    (local / "notes.txt").write_bytes(b"not matched")
    (local / ".hidden.jpg").write_bytes(b"being written")
    task = push_task(vsftpd, local, recursive=True, masks=["*.jpg"], parallel=2)
    ctx = TaskContext.for_test("dropbox", task.settings, tmp_path=tmp_path)
    summary = await task.run_once(ctx)
    assert summary is not None and summary.startswith("sent 2 files")
    remote = vsftpd.pub / "dropped"
    assert (remote / "a.jpg").read_bytes() == b"a" * 5000 and (remote / "sub" / "b.jpg").read_bytes() == b"b" * 7000
    assert sorted(p.name for p in remote.iterdir()) == ["a.jpg", "sub"]  # no temp names left
    assert sorted(p.name for p in local.iterdir()) == [".hidden.jpg", "notes.txt", "sub"]  # sent ones removed
    assert list((local / "sub").iterdir()) == []
    assert (ctx.done, ctx.total) == (2, 2)


async def test_drop_box_waits_for_files_being_written(sshd: SshServer, tmp_path: Path) -> None:
    local = tmp_path / "outbox"
    local.mkdir()
    (local / "done.bin").write_bytes(b"d")
    writing = local / "writing.bin"
    writing.write_bytes(b"w")
    task = push_task(sshd, local, stable=0.1)
    ctx = TaskContext.for_test("dropbox", task.settings, tmp_path=tmp_path)
    real_sleep = ctx.sleep

    async def sleep(seconds: float) -> bool:
        with open(writing, "ab") as f:
            f.write(b"more")
        return await real_sleep(seconds)

    ctx.sleep = sleep  # type: ignore[method-assign]
    assert (await task.run_once(ctx)).startswith("sent 1 file")  # type: ignore[union-attr]
    assert sorted(p.name for p in sshd.root.iterdir()) == ["done.bin"]
    assert writing.exists()


def write_config(tmp_path: Path, server: FtpServer) -> Path:
    cfg = tmp_path / "etc" / "schedulerd.toml"
    cfg.parent.mkdir(parents=True)
    cfg.write_text(f"""
[scheduler]
state_dir = "{tmp_path}/state"
socket = "{tmp_path}/run/sock"
pidfile = "{tmp_path}/run/pid"
log_dir = "{tmp_path}/log"

[databoxes.main]
path = "{tmp_path}/db/main.sqlite"
storage = "{tmp_path}/db/storage"

[ftp_destinations.client]
host = "{server.host}"
port = {server.port}
user = "{server.user}"
password = "env:CLIENT_FTP_PASSWORD"
timeout = "5s"
retries = 0
""")
    return cfg


async def test_export_ftp_command_queues_a_job_that_sends_files_and_records(
        pyftpd, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    from repository import open_databox
    from schedulerd.cli import main
    from schedulerd.config import load
    from schedulerd.jobstore import open_job_store

    with pyftpd() as server:
        monkeypatch.setenv("CLIENT_FTP_PASSWORD", server.password)
        cfg = write_config(tmp_path, server)
        config = load(cfg)
        src = tmp_path / "photo.jpg"
        src.write_bytes(b"\xff\xd8 jpeg" * 100)
        with open_databox(config.databoxes["main"]) as db:
            db.create_collection("photos")
            rid = db.create_record("photos", src, original_name="client photo.jpg").id
        other = tmp_path / "contract.pdf"
        other.write_bytes(b"%PDF" * 50)
        assert main(["--config", str(cfg), "export:ftp", "client", "--record", str(rid), "--file", str(other),
                     "--remote-dir", "/out/2026", "--log-file", "transfer.log"]) == 0
        job_id = int(capsys.readouterr().out.strip())
        store = open_job_store(config.scheduler.state_dir)
        try:
            job = store.get(job_id)
        finally:
            store.close()
        assert job.type == "ftp" and job.title == "ftp export to client: 2 files"
        ctx = TaskContext.for_test(f"job-{job_id}", None, config=config, tmp_path=tmp_path / "job")
        summary = await FtpExport().run(ctx, job.payload)
        assert summary == f"sent 2 files ({len(src.read_bytes()) + 200} bytes) to client:/out/2026"
        out = server.root / "out" / "2026"
        assert sorted(p.name for p in out.iterdir()) == ["client photo.jpg", "contract.pdf", "transfer.log"]
        assert (out / "client photo.jpg").read_bytes() == src.read_bytes()
        log_lines = (out / "transfer.log").read_text().splitlines()
        assert [line.split("\t")[2] for line in log_lines] == ["contract.pdf", "client photo.jpg"]  # files, then records
        assert (ctx.done, ctx.total) == (2, 2)


async def test_export_retry_does_not_send_again(pyftpd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    from types import MappingProxyType, SimpleNamespace

    from tests.transfer.servers import settings_for

    files = []
    for name in ("a.txt", "b.txt", "c.txt"):
        files.append(tmp_path / name)
        files[-1].write_bytes(name.encode() * 100)
    with pyftpd() as server:
        (server.root / "out" / ".b.txt.part").mkdir(parents=True)  # STOR of b fails: 550
        config = SimpleNamespace(ftp_destinations=MappingProxyType({"client": settings_for(server)}),
                                 databoxes=MappingProxyType({}))
        payload = {"destination": "client", "files": [str(f) for f in files], "remote_dir": "/out"}
        job = FtpExport()
        job.check_payload(payload, config)
        ctx = TaskContext.for_test("job-7", None, config=config, tmp_path=tmp_path / "job")
        with pytest.raises(TransferError, match="1 of 3 files not sent to client; b.txt"):
            await job.run(ctx, payload)
        assert sorted(p.name for p in (server.root / "out").iterdir()) == [".b.txt.part", "a.txt", "c.txt"]
        assert job.state_path(ctx).exists()
        (server.root / "out" / ".b.txt.part").rmdir()
        stamp = os.stat(server.root / "out" / "a.txt").st_mtime_ns
        os.utime(server.root / "out" / "a.txt", ns=(stamp - 10**9, stamp - 10**9))
        assert (await job.run(ctx, payload)).startswith("sent 3 files")  # type: ignore[union-attr]
        assert os.stat(server.root / "out" / "a.txt").st_mtime_ns == stamp - 10**9  # not sent again
        assert (server.root / "out" / "b.txt").read_bytes() == b"b.txt" * 100
        assert not job.state_path(ctx).exists()


def test_check_payload_names_the_problem(tmp_path: Path) -> None:
    from types import MappingProxyType, SimpleNamespace

    f = tmp_path / "x.txt"
    f.write_text("x")
    config = SimpleNamespace(ftp_destinations=MappingProxyType({"client": object()}), databoxes=MappingProxyType({}))
    job = FtpExport()
    cases = [
        ({"destination": "nope", "files": [str(f)]}, "destination: unknown ftp destination 'nope' (known: client)"),
        ({"destination": "client"}, "give at least one file or record"),
        ({"destination": "client", "files": [str(tmp_path / "missing")]}, "files[0]: no such file"),
        ({"destination": "client", "files": [str(f)], "colour": 1}, "colour: unknown setting"),
        ({"destination": "client", "records": [3]}, "databox: say which databox"),
        ({"destination": "client", "files": [str(f)], "remote_dir": "a\r\nDELE x"}, "remote_dir"),
        ({"destination": "client", "files": [str(f)], "log_file": "../x"}, "log_file"),
    ]
    for payload, message in cases:
        with pytest.raises(ValueError) as e:
            job.check_payload(payload, config)
        assert message in str(e.value), (payload, str(e.value))
    job.check_payload({"destination": "client", "files": [str(f)]}, config)


def test_export_ftp_command_errors(tmp_path: Path, pyftpd, capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from schedulerd.cli import main

    with pyftpd() as server:
        monkeypatch.setenv("CLIENT_FTP_PASSWORD", server.password)
        cfg = write_config(tmp_path, server)
        assert main(["--config", str(cfg), "export:ftp", "client"]) == 2
        assert "--record ID or --file PATH" in capsys.readouterr().err
        assert main(["--config", str(cfg), "export:ftp", "elsewhere", "--file", str(cfg)]) == 2
        assert "unknown ftp destination 'elsewhere' (known: client)" in capsys.readouterr().err
        assert main(["--config", str(cfg), "export:ftp", "client", "--file", str(tmp_path / "nope")]) == 2
        assert "no such file" in capsys.readouterr().err
        from repository import open_databox
        from schedulerd.config import load

        open_databox(load(cfg).databoxes["main"]).close()
        assert main(["--config", str(cfg), "export:ftp", "client", "--record", "99"]) == 2
        assert "no record 99" in capsys.readouterr().err


def test_payload_dataclass_is_strict() -> None:
    p = build(ExportPayload, {"destination": "d", "files": ["/a"], "records": [1, 2]}, "")
    assert p.records == (1, 2) and p.remote_dir == "/"


async def test_drop_box_to_a_server_allowing_fewer_sessions_than_parallel(  # type: ignore[no-untyped-def]
        pyftpd, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    local = tmp_path / "outbox"
    local.mkdir()
    for i in range(8):
        (local / f"f{i}.jpg").write_bytes(b"x" * (1000 + i))
    with pyftpd("--max-per-ip", "2") as server:
        task = push_task(server, local, parallel=4)
        with caplog.at_level(logging.WARNING):
            summary = await task.run_once(TaskContext.for_test("dropbox", task.settings, tmp_path=tmp_path))
        assert summary is not None and summary.startswith("sent 8 files"), summary
        remote = server.root / "dropped"
        assert sorted(p.name for p in remote.iterdir()) == [f"f{i}.jpg" for i in range(8)]
        assert all((remote / f"f{i}.jpg").stat().st_size == 1000 + i for i in range(8))
        assert list(local.iterdir()) == []  # every file sent, none lost by a session that never opened
    assert "cannot open one more session" in caplog.text


async def test_an_export_jobs_state_is_read_and_written_off_the_event_loop(pyftpd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The job's state file on a slow disk (a FIFO whose writer comes 3 s later): the attempt waits
    for it in a worker thread while the loop goes on, and what it says (a.txt sent) is kept."""
    import json
    from types import MappingProxyType, SimpleNamespace

    from tests.tasks.loopwatch import fifo_served_later, longest_stall
    from tests.transfer.servers import settings_for

    files = [tmp_path / "a.txt", tmp_path / "b.txt", tmp_path / "c.txt"]
    for f in files:
        f.write_bytes(f.name.encode() * 100)
    with pyftpd() as server:
        (server.root / "out").mkdir()
        config = SimpleNamespace(ftp_destinations=MappingProxyType({"client": settings_for(server)}),
                                 databoxes=MappingProxyType({}))
        payload = {"destination": "client", "files": [str(f) for f in files[:2]], "remote_dir": "/out"}
        job = FtpExport()
        ctx = TaskContext.for_test("job-8", None, config=config, tmp_path=tmp_path / "job")
        warm = TaskContext.for_test("job-7", None, config=config, tmp_path=tmp_path / "job")
        await job.run(warm, {**payload, "files": [str(files[2])]})  # (the modules an attempt imports: imported)
        before = {f"file:{files[0]}": {"status": "sent", "name": "a.txt", "remote": "/out/a.txt", "bytes": 500, "at": 1.0}}
        writer = fifo_served_later(job.state_path(ctx), json.dumps(before).encode(), 3.0)
        summary, stall = await longest_stall(lambda: job.run(ctx, payload))
        writer.join(5)
        assert stall < 1.5, f"the event loop stood still {stall:.1f}s"
        assert summary is not None and summary.startswith("sent 2 files"), summary
        assert sorted(p.name for p in (server.root / "out").iterdir()) == ["b.txt", "c.txt"]  # a.txt: sent before
        assert not job.state_path(ctx).exists()
