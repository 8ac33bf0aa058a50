"""The transfer fast paths against real servers: MDTM piggybacked on EPSV/PASV, FTPS data
TLS on the event loop, small files via memory and the batch committer, pipelined SFTP
push renames, and asyncssh packet coalescing degrading on another asyncssh version.
"""

from __future__ import annotations

import contextlib
import logging
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aioftp
import anyio
import asyncssh
import pytest
from OpenSSL import SSL

from schedulerd.context import TaskContext
from schedulerd.settings import build
from tasks.ftp_pull import FtpPull, PullSettings
from tasks.ftp_push import FtpPush, PushSettings
from tasks.transfer import ConnectError, IntegrityError, NotFound, RemoteError, TransferError, connect, fetch as fetch_mod
from tasks.transfer import ftp as ftp_mod
from tasks.transfer.fetch import fetch
from tasks.transfer.send import send
from tasks.transfer.sftp import SftpClient, coalesce_sends
from tests.transfer import servers
from tests.transfer.servers import FtpServer, SshServer, settings_for

pytestmark = pytest.mark.anyio

OLD = 1_600_000_000  # LIST shows only the day for such times: MDTM gives the exact second

# pyftpdlib with notes on what it received: whether an MDTM arrived in the same read as the
# next command (still in asynchat's input buffer when MDTM runs), MDTM 550 for some names,
# EPSV refused. Runs tests/transfer/pyftpd_server.py with its handler subclassed.
QUIRKS = r"""
import os, sys
sys.path.insert(0, sys.argv.pop(1))
import pyftpd_server as base

notes = open(os.environ["QUIRK_NOTES"], "a", buffering=1)
mdtm_550 = os.environ.get("QUIRK_MDTM_550", "")
epsv_ok = int(os.environ.get("QUIRK_EPSV_OK", "-1"))  # EPSVs answered before refusing them
plain = base.make_handler


def make_handler(opts):
    class Quirky(plain(opts)):
        def ftp_MDTM(self, path):
            name = os.path.basename(path)
            nxt = self.ac_in_buffer.split(b"\r\n", 1)[0].decode(errors="replace")
            notes.write(f"MDTM {name} +{nxt}\n")
            if mdtm_550 and mdtm_550 in name:
                self.respond("550 Could not get file modification time.")
                return None
            return super().ftp_MDTM(path)

        def ftp_EPSV(self, line):
            global epsv_ok
            nxt = self.ac_in_buffer.split(b"\r\n", 1)[0].decode(errors="replace")
            notes.write(f"EPSV +{nxt.split(' ', 1)[0]}\n" if nxt else "EPSV\n")  # +RETR: same packet
            if epsv_ok == 0:
                self.respond("502 EPSV not implemented.")
                return None
            epsv_ok -= 1
            return super().ftp_EPSV(line)

        def ftp_PASV(self, line):
            notes.write("PASV\n")
            return super().ftp_PASV(line)

        def ftp_RETR(self, path):
            notes.write(f"RETR {os.path.basename(path)}\n")
            return super().ftp_RETR(path)

    return Quirky


base.make_handler = make_handler
base.main()
"""


@contextlib.contextmanager
def quirky(folder: Path, *, mdtm_550: str = "", epsv_ok: int = -1) -> Iterator[tuple[FtpServer, Path]]:
    """A pyftpdlib server (no MLSD: LIST times, refined by MDTM) and the file of its notes."""
    notes = folder / "notes.txt"
    folder.mkdir(parents=True, exist_ok=True)
    notes.touch()
    env = {"QUIRK_NOTES": str(notes), "QUIRK_MDTM_550": mdtm_550, "QUIRK_EPSV_OK": str(epsv_ok)}
    with servers.pyftpd(folder, "--no-mlsd", subclass=QUIRKS, env=env) as server:
        yield server, notes


def noted(notes: Path) -> list[str]:
    return notes.read_text().splitlines()


def put_files(server: FtpServer, names: list[str]) -> dict[str, tuple[bytes, int]]:
    """Files with distinct contents and exact times that LIST cannot tell apart."""
    made = {}
    for i, name in enumerate(names):
        data, mtime = f"{name}:{i}".encode() * (i + 1), OLD + 3600 * i + 7 * i + 1
        server.put(name, data, mtime=mtime)
        made[name] = (data, mtime)
    return made


# --- 1. MDTM in the same packet as EPSV/PASV ----------------------------------------


async def test_mdtm_piggyback_replies_matched_with_550s_and_a_vanished_file(
        tmp_path: Path, log: logging.Logger) -> None:
    with quirky(tmp_path / "srv", mdtm_550="nomdtm") as (server, notes):
        made = put_files(server, ["a.txt", "b-nomdtm.txt", "c.txt", "d-gone.txt", "e.txt"])
        async with await connect(settings_for(server), log) as c:
            entries = {e.name: e for e in await c.list("/")}
            assert not any(e.precise for e in entries.values())  # LIST: MDTM will be asked
            (server.root / "d-gone.txt").unlink()  # vanished after the listing: MDTM 550 and RETR 550
            got: dict[str, Path | None] = {}
            for name in sorted(entries):
                try:
                    got[name] = await fetch(c, entries[name], tmp_path / "in" / name, log=log)
                except NotFound:
                    got[name] = None
                assert not c.broken, name  # replies stayed in step: the session goes on
    assert got["d-gone.txt"] is None
    for name in ("a.txt", "c.txt", "e.txt"):
        p = got[name]
        assert p is not None and p.read_bytes() == made[name][0]
        assert os.stat(p).st_mtime == made[name][1], name  # its own MDTM reply, not a neighbour's
    nomdtm = got["b-nomdtm.txt"]
    assert nomdtm is not None and nomdtm.read_bytes() == made["b-nomdtm.txt"][0]
    assert os.stat(nomdtm).st_mtime == entries["b-nomdtm.txt"].mtime  # MDTM refused: the listing's day
    lines = noted(notes)
    for name in entries:  # each MDTM went in one packet with the EPSV of its download
        assert f"MDTM {name} +EPSV" in lines, lines
    assert [ln for ln in lines if ln.startswith("RETR")] == [f"RETR {n}" for n in sorted(entries)]


async def test_mdtm_piggyback_when_epsv_is_refused_falls_back_to_pasv(tmp_path: Path, log: logging.Logger) -> None:
    with quirky(tmp_path / "srv", mdtm_550="nomdtm", epsv_ok=1) as (server, notes):
        made = put_files(server, ["a.txt", "b.txt", "c-nomdtm.txt", "d.txt"])
        async with await connect(settings_for(server), log) as c:
            entries = sorted(await c.list("/"), key=lambda e: e.name)
            # the LIST's EPSV worked, so RETR went in the next EPSV's packet; that EPSV is
            # refused, and this server answers the orphaned RETR with 150: the session is lost
            with pytest.raises(ConnectError, match="EPSV refused .* after it had worked .* session abandoned"):
                await fetch(c, entries[0], tmp_path / "in" / entries[0].name, log=log)
            assert c.broken
        assert not (tmp_path / "in" / "a.txt").exists()
        async with await connect(settings_for(server), log) as c:  # a new session: EPSV refused, PASV
            for e in entries:
                p = await fetch(c, e, tmp_path / "in" / e.name, log=log)
                assert p is not None and p.read_bytes() == made[e.name][0]
                expected = e.mtime if "nomdtm" in e.name else made[e.name][1]
                assert os.stat(p).st_mtime == expected, e.name
            assert not c.broken
    lines = noted(notes)
    first = lines.index("MDTM a.txt +EPSV")  # after the LIST's EPSV: MDTM, EPSV and RETR in one packet
    assert lines[first:first + 3] == ["MDTM a.txt +EPSV", "EPSV +RETR", "RETR a.txt"]
    # the new session saw no 229: nothing goes with the EPSV; refused, then PASV from there on
    assert lines[first + 3:] == ["MDTM a.txt +EPSV", "EPSV", "PASV", "RETR a.txt"] + [
        x for n in ("b.txt", "c-nomdtm.txt", "d.txt") for x in (f"MDTM {n} +PASV", "PASV", f"RETR {n}")]


# --- 2. FTPS data connections: each resumes the newest session -------------------------


class Sink:
    """A download destination in memory."""

    def __init__(self) -> None:
        self.data = bytearray()

    def write(self, b: Any) -> int:
        self.data += b
        return len(b)


async def test_ftps_data_connections_resume_sessions_and_survive_refusals(
        vsftpd_tls: FtpServer, certs, tmp_path: Path, log: logging.Logger) -> None:  # type: ignore[no-untyped-def]
    small = {f"s{i}.bin": os.urandom(1000 * (i + 1)) for i in range(4)}
    big = os.urandom(700_000)
    for name, data in small.items():
        (tmp_path / name).write_bytes(data)
    (tmp_path / "big.bin").write_bytes(big)
    vsftpd_tls.put("in/keep.txt", b"kept", mtime=OLD)
    async with await connect(settings_for(vsftpd_tls, protocol="ftps", ca_file=str(certs.ca_file)), log) as c:
        assert c._tls is not None  # type: ignore[attr-defined]
        for name in [*small, "big.bin"]:
            await send(c, tmp_path / name, "/pub/up", log=log)
        with pytest.raises(NotFound, match="RETR: 550"):  # a 550 mid-session
            await c.download("/pub/up/missing.bin", Sink())
        assert not c.broken
        with pytest.raises(RemoteError, match="STOR: 553"):  # refused upload (no such folder)
            with open(tmp_path / "s0.bin", "rb") as f:
                await c.upload(f, "/pub/no/such/dir/x.bin")
        assert not c.broken
        spy = Sink()
        assert await c.download("/pub/up/s1.bin", spy, size=len(small["s1.bin"])) == len(small["s1.bin"])
        assert bytes(spy.data) == small["s1.bin"]
        listed = {e.name: e for e in await c.list("/pub/up")}
        for name, data in [*small.items(), ("big.bin", big)]:  # memory path and disk path
            got = await fetch(c, listed[name], tmp_path / "down" / name, log=log)
            assert got is not None and got.read_bytes() == data
        (keep,) = await c.list("/pub/in")
        got = await fetch(c, keep, tmp_path / "down" / "keep.txt", log=log)  # MDTM piggybacked on FTPS
        assert got is not None and os.stat(got).st_mtime == OLD
        assert not c.broken
    protocol = vsftpd_tls.log.read_text()
    assert "session reuse required" not in protocol
    assert protocol.count("OK UPLOAD") == 5 and protocol.count("OK DOWNLOAD") == 7


async def test_ftps_local_tls_error_on_a_data_connection_is_clear_and_resets_the_session(
        vsftpd_tls: FtpServer, certs, tmp_path: Path, log: logging.Logger) -> None:  # type: ignore[no-untyped-def]
    vsftpd_tls.put("f.bin", b"f" * 5000)
    s = settings_for(vsftpd_tls, protocol="ftps", ca_file=str(certs.ca_file))
    c = await connect(s, log)
    try:
        bad = SSL.Context(SSL.TLS_CLIENT_METHOD)
        bad.set_min_proto_version(SSL.TLS1_3_VERSION)
        bad.set_max_proto_version(SSL.TLS1_2_VERSION)  # the next handshake fails locally
        c._tls.ctx = bad  # type: ignore[attr-defined]
        c._tls.resume_into = lambda conn: None  # type: ignore[attr-defined]  # (its sessions fit their own context only)
        started = time.monotonic()
        # which side notices first is a race: our local handshake failure, or vsftpd ending the
        # session over it (its plain-text "500 OOPS" then breaks the TLS control connection)
        with pytest.raises(ConnectError,
                           match=r"RETR: (data connection failed: .*(PROTOCOL|protocol)|connection to .* lost)"):
            await c.download("/pub/f.bin", Sink(), size=5000)
        assert time.monotonic() - started < 3  # no wait for a timeout
        assert c.broken  # out of step with the server: reset, not reused
    finally:
        with anyio.fail_after(6):
            await c.aclose()
    async with await connect(s, log) as again:  # a new session works
        spy = Sink()
        await again.download("/pub/f.bin", spy, size=5000)
        assert bytes(spy.data) == b"f" * 5000


# --- 3. small files via memory -----------------------------------------------------------


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.rglob(".*")) if folder.exists() else []


@pytest.mark.parametrize("kind", ["ftp", "ftps", "sftp"])
async def test_small_file_grown_beyond_its_listed_size_is_refused(
        kind: str, request: pytest.FixtureRequest, certs, tmp_path: Path, log: logging.Logger) -> None:  # type: ignore[no-untyped-def]
    if kind == "sftp":
        server: Any = request.getfixturevalue("sshd")
        remote, settings = server.root, settings_for(server)
        path = server.root / "grow.jpg"
        path.write_bytes(b"g" * 3000)
    else:
        server = request.getfixturevalue("vsftpd" if kind == "ftp" else "vsftpd_tls")
        remote = "/pub"
        settings = settings_for(server, **({"protocol": "ftps", "ca_file": str(certs.ca_file)} if kind == "ftps" else {}))
        path = server.put("grow.jpg", b"g" * 3000)
    local = tmp_path / "in"
    async with await connect(settings, log) as c:
        (entry,) = [e for e in await c.list(str(remote)) if e.name == "grow.jpg"]
        with open(path, "ab") as f:  # the agency goes on writing after the listing
            f.write(b"more" * 1000)
        with pytest.raises(IntegrityError, match="more than the 3000 bytes listed"):
            await fetch(c, entry, local / "grow.jpg", log=log)
    assert not local.exists() or list(local.iterdir()) == []  # nothing half-written, no temp
    assert path.stat().st_size == 7000


def pull_task(server: FtpServer, local: Path, **over: Any) -> FtpPull:
    data: dict[str, Any] = {"host": server.host, "port": server.port, "user": server.user, "timeout": 5,
                            "retries": 0, "local_dir": str(local), "stable": 0, "password": server.password,
                            "remote_dir": server.remote}
    data.update(over)
    return FtpPull(build(PullSettings, data, "tasks.agency"))


async def test_pull_refuses_a_file_larger_than_listed_and_goes_on(pyftpd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    listing = tmp_path / "list.txt"  # the listing the agency's server gives: sizes at listing time
    listing.write_bytes(b"-rw-r--r--   1 u g  100 Jan 01  2025 a-grown.jpg\r\n"
                        b"-rw-r--r--   1 u g   50 Jan 01  2025 b-ok.jpg\r\n")
    with pyftpd("--no-mlsd", "--listing", str(listing)) as server:
        server.put("a-grown.jpg", b"G" * 300)
        server.put("b-ok.jpg", b"k" * 50)
        local = tmp_path / "in"
        task = pull_task(server, local)
        ctx = TaskContext.for_test("agency", task.settings, tmp_path=tmp_path)
        with pytest.raises(TransferError, match="pulled 1 file.*1 failed; first error: .*more than the 100 bytes"):
            await task.run_once(ctx)
        assert sorted(p.name for p in local.iterdir()) == ["b-ok.jpg"]  # no temp, no half file
        assert (local / "b-ok.jpg").read_bytes() == b"k" * 50
        assert sorted(p.name for p in server.root.iterdir()) == ["a-grown.jpg"]  # refused one kept remotely


@contextlib.contextmanager
def file_size_limit(limit: int) -> Iterator[None]:
    """Writes beyond `limit` bytes fail (EFBIG) like a full disk, as in test_ftp_pull."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)


async def test_disk_full_when_the_committer_writes_small_files(pyftpd, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    sizes = {"a.bin": 100_000, "b.bin": 300_000, "c.bin": 50_000, "d.bin": 400_000, "e.bin": 10_000}
    assert max(sizes.values()) <= fetch_mod.SMALL_FILE  # all go through memory
    with pyftpd() as server:
        for name, n in sizes.items():
            server.put(name, name[:1].encode() * n)
        local = tmp_path / "in"
        task = pull_task(server, local, parallel=2)
        ctx = TaskContext.for_test("agency", task.settings, tmp_path=tmp_path)
        with file_size_limit(200_000), pytest.raises(TransferError, match="cannot write"):
            await task.run_once(ctx)
        visible = {p.name for p in local.iterdir() if not p.name.startswith(".")}
        remote = {p.name for p in server.root.iterdir()}
        assert {"b.bin", "d.bin"} <= remote  # not stored: never deleted remotely
        assert not visible & {"b.bin", "d.bin"}
        assert visible | remote == set(sizes) and not visible & remote  # deleted remotely only once stored
        for name in visible:
            assert (local / name).stat().st_size == sizes[name]
        assert hidden(local) == []  # no temp file left behind
        await task.run_once(ctx)  # room again: everything arrives, once
        assert {p.name: p.stat().st_size for p in local.iterdir()} == sizes
        assert list(server.root.iterdir()) == []


# --- 4. the background batch sync -------------------------------------------------------------


async def test_files_visible_only_once_synced_and_deleted_remotely_only_after(
        pyftpd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    if fetch_mod._syncfs is None:
        pytest.skip("no syncfs in this C library")
    sizes = {f"f{i:02}.jpg": 2000 + i for i in range(30)}
    sizes["zbig.tif"] = 700_000  # the disk path (written as it arrives) in the same batches
    local = tmp_path / "in"
    snapshots: list[tuple[set[str], dict[str, int], set[str]]] = []
    real = fetch_mod._syncfs
    with pyftpd() as server:

        def spy(fd: int) -> int:  # in the committer's thread: what is visible where, as the sync starts
            visible = {p.name for p in local.iterdir() if not p.name.startswith(".")}
            parts = {p.name: p.stat().st_size for p in local.iterdir() if p.name.startswith(".")}
            snapshots.append((visible, parts, {p.name for p in server.root.iterdir()}))
            return real(fd)

        monkeypatch.setattr(fetch_mod, "_syncfs", spy)
        for name, n in sizes.items():
            server.put(name, os.urandom(n))
        task = pull_task(server, local, parallel=3)
        ctx = TaskContext.for_test("agency", task.settings, tmp_path=tmp_path)
        assert (await task.run_once(ctx)).startswith("pulled 31 files")  # type: ignore[union-attr]
        assert list(server.root.iterdir()) == []
    assert {p.name: p.stat().st_size for p in local.iterdir()} == sizes
    assert 1 <= len(snapshots) < len(sizes)  # batched: fewer syncs than files
    for name, n in sizes.items():
        covering = [k for k, (_, parts, _) in enumerate(snapshots)
                    if any(p.startswith(f".{name}.") and size == n for p, size in parts.items())]
        assert covering, f"{name} was named without a sync covering its complete data"
        for visible, _, remote in snapshots[:covering[0] + 1]:
            assert name not in visible, f"{name} visible before its sync"
            assert name in remote, f"{name} deleted remotely before its sync"


async def test_small_files_written_on_the_loop_until_one_write_is_slow(
        pyftpd, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    writers: list[int] = []
    real = fetch_mod._write_part

    def spy(d: Any) -> bool:
        writers.append(threading.get_ident())
        return real(d)

    monkeypatch.setattr(fetch_mod, "_write_part", spy)
    loop_thread = threading.get_ident()
    with pyftpd() as server:
        for i in range(5):
            server.put(f"a{i}.jpg", os.urandom(3000))
        task = pull_task(server, tmp_path / "in")
        ctx = TaskContext.for_test("agency", task.settings, tmp_path=tmp_path)
        await task.run_once(ctx)
        assert writers == [loop_thread] * 5  # a fast disk: written where they arrived
        writers.clear()
        monkeypatch.setattr(fetch_mod, "INLINE_WRITE_LIMIT", -1.0)  # every write now counts as too slow
        for i in range(5):
            server.put(f"b{i}.jpg", os.urandom(3000))
        await task.run_once(ctx)
        assert writers[0] == loop_thread and len(writers) == 5
        assert loop_thread not in writers[1:]  # the mean passed the limit: the rest went to the thread
    assert sorted(p.name for p in (tmp_path / "in").iterdir()) == sorted(
        [f"a{i}.jpg" for i in range(5)] + [f"b{i}.jpg" for i in range(5)])


# --- 5. SFTP push: pipelined renames, coalescing ---------------------------------------------


async def test_sftp_push_failed_pipelined_rename_is_that_files_error(
        sshd: SshServer, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    local = tmp_path / "outbox"
    local.mkdir()
    names = ["a.bin", "b.bin", "c.bin", "z.bin"]
    for n in names:
        (local / n).write_bytes(n.encode() * 1000)
    for n in ("a.bin", "z.bin"):  # a folder in the way: their renames fail (the first and the last)
        (sshd.root / n).mkdir()
        (sshd.root / n / "keep").write_bytes(b"k")
    data = {"host": sshd.host, "port": sshd.port, "user": sshd.user, "timeout": 5, "retries": 0, "stable": 0,
            "protocol": "sftp", "key_file": str(sshd.key_file), "known_hosts": str(sshd.known_hosts),
            "local_dir": str(local), "remote_dir": str(sshd.root), "parallel": 1}
    task = FtpPush(build(PushSettings, data, "tasks.dropbox"))
    ctx = TaskContext.for_test("dropbox", task.settings, tmp_path=tmp_path)
    with caplog.at_level(logging.INFO, "schedulerd.task.dropbox"), \
            pytest.raises(TransferError, match=r"sent 2 files .*2 failed; first error: rename .*\.a\.bin\.part"):
        await task.run_once(ctx)
    assert (ctx.done, ctx.total) == (4, 4)
    assert sorted(p.name for p in local.iterdir()) == ["a.bin", "z.bin"]  # kept for the next pass
    for n in ("b.bin", "c.bin"):
        assert (sshd.root / n).read_bytes() == n.encode() * 1000
    assert (sshd.root / "a.bin").is_dir() and (sshd.root / "z.bin").is_dir()
    sent = [r.getMessage() for r in caplog.records if r.getMessage().startswith("sent ")]
    assert len(sent) == 2 and not any("a.bin" in m or "z.bin" in m for m in sent)
    failed = [r.getMessage() for r in caplog.records if r.getMessage().startswith("cannot send")]
    assert len(failed) == 2 and "a.bin" in failed[0] and "z.bin" in failed[1]


@pytest.mark.parametrize("missing", ["_send", "_transport"])
async def test_coalescing_degrades_to_plain_sends_without_asyncssh_internals(
        sshd: SshServer, tmp_path: Path, log: logging.Logger, monkeypatch: pytest.MonkeyPatch, missing: str) -> None:
    settings = settings_for(sshd)
    conn = await asyncssh.connect(sshd.host, sshd.port, username=sshd.user, client_keys=[str(sshd.key_file)],
                                  known_hosts=str(sshd.known_hosts), agent_path=None, config=None)
    try:
        with monkeypatch.context() as m:  # another asyncssh: the private attribute is not there
            owner = asyncssh.connection.SSHConnection if missing == "_send" else conn
            m.delattr(owner, missing)
            assert coalesce_sends(conn) is False
        assert "_send" not in vars(conn)  # asyncssh's own send left in place
        client = SftpClient(settings, log, conn, await conn.start_sftp_client())
        payload = os.urandom(1_500_000)  # many packets each way
        (tmp_path / "up.bin").write_bytes(payload)
        await send(client, tmp_path / "up.bin", str(sshd.root), log=log)
        (entry,) = [e for e in await client.list(str(sshd.root)) if e.name == "up.bin"]
        got = await fetch(client, entry, tmp_path / "down.bin", log=log)
        assert got is not None and got.read_bytes() == payload
        await client.aclose()
    finally:
        conn.abort()
    async with await connect(settings, log) as c:  # with the internals there, coalescing is on
        assert "_send" in vars(c._conn)  # type: ignore[attr-defined]


# --- 6. plain FTP uploads: sendfile to another host, read+send to this one -------------------


@pytest.mark.parametrize("remote", [True, False], ids=["another-host", "this-host"])
async def test_plain_upload_uses_sendfile_only_for_another_host(vsftpd: FtpServer, tmp_path: Path, log: logging.Logger,
                                                                monkeypatch: pytest.MonkeyPatch, remote: bool) -> None:
    calls = []
    real = os.sendfile

    def counted(*args: Any) -> int:
        try:
            n: int = real(*args)
        except BlockingIOError:
            calls.append(-1)  # the socket was full: waited for room
            raise
        calls.append(n)
        return n

    monkeypatch.setattr(ftp_mod.os, "sendfile", counted)
    seen: list[bool] = []
    real_local = ftp_mod._on_this_host

    def on_this_host(sock: socket.socket) -> bool:
        seen.append(real_local(sock))
        return not remote and seen[-1]

    monkeypatch.setattr(ftp_mod, "_on_this_host", on_this_host)
    payload = os.urandom(8 * 1024 * 1024)
    src = tmp_path / "big.bin"
    src.write_bytes(payload)
    progress: list[int] = []
    async with await connect(settings_for(vsftpd), log) as c:
        final = await send(c, src, f"{vsftpd.remote}/up", log=log, on_bytes=progress.append)
    assert (vsftpd.pub / "up/big.bin").read_bytes() == payload and final.endswith("/up/big.bin")
    assert seen == [True]  # the test server listens on loopback
    assert len(payload) == sum(progress)
    if remote:
        assert sum(n for n in calls if n > 0) == len(payload)
        assert calls[-1] == 0  # read to EOF, not to the size seen at open
    else:
        assert not calls and max(progress) <= ftp_mod.LOOPBACK_CHUNK


async def test_sendfile_waits_for_room_in_a_slow_readers_socket(tmp_path: Path) -> None:
    """A reader slower than the disk: the socket fills, `_sendfile` waits for room and goes on."""
    payload = os.urandom(6 * 1024 * 1024)
    src = tmp_path / "f.bin"
    src.write_bytes(payload)
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
    ours.setblocking(False)
    got = bytearray()

    def read_slowly() -> None:
        while chunk := peer.recv(256 * 1024):
            got.extend(chunk)
            time.sleep(0.002)

    reader = threading.Thread(target=read_slowly)
    reader.start()
    waits = []
    real_writable = anyio.wait_writable

    async def counted(sock: socket.socket) -> None:
        waits.append(1)
        await real_writable(sock)

    try:
        with open(src, "rb") as f, pytest.MonkeyPatch.context() as mp:
            mp.setattr(anyio, "wait_writable", counted)
            sent = await ftp_mod._sendfile(ours, f.fileno(), 0, 1 << 20, 10.0, None)
    finally:
        ours.close()
        reader.join(10)
        peer.close()
    assert sent == len(payload) and bytes(got) == payload
    assert waits  # the socket was full at least once


async def test_sendfile_errors_tell_the_data_connection_from_the_local_file(tmp_path: Path) -> None:
    src = tmp_path / "f.bin"
    src.write_bytes(os.urandom(8 * 1024 * 1024))
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    with ours, open(src, "rb") as f:
        peer.close()  # the server went away before or during the upload
        with pytest.raises(ftp_mod._NetFailure) as caught:
            await ftp_mod._sendfile(ours, f.fileno(), 0, 1 << 20, 5.0, None)
        assert isinstance(caught.value.__cause__, OSError)
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    with ours, peer:
        fd = os.open(src, os.O_WRONLY)  # a descriptor sendfile cannot read: the local side's error
        try:
            with pytest.raises(OSError) as local:
                await ftp_mod._sendfile(ours, fd, 0, 1 << 20, 5.0, None)
            assert not isinstance(local.value, ftp_mod._NetFailure)
        finally:
            os.close(fd)
    with open(os.devnull, "rb") as dev:
        assert ftp_mod._regular_fd(dev) is None  # not a regular file: the read/send path


# --- plain data connections: connect without a wait on loopback, one epoll registration per download


def _pair() -> tuple[socket.socket, socket.socket]:
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    return ours, peer


async def test_receive_socket_reads_a_slow_sender_to_the_end_and_moves_its_timer_on() -> None:
    """Pauses shorter than the timeout, a transfer longer than it: all bytes, no timeout."""
    payload = os.urandom(300 * 1024)
    ours, peer = _pair()

    def send_slowly() -> None:
        with peer:
            for i in range(0, len(payload), 50 * 1024):
                peer.sendall(payload[i:i + 50 * 1024])
                time.sleep(0.15)

    sender = threading.Thread(target=send_slowly)
    sender.start()
    got = bytearray()
    counted: list[int] = []
    try:
        with ours:
            n = await ftp_mod._receive_socket(ours, got.extend, 64 * 1024, 0.5, counted.append)
    finally:
        sender.join(10)
    assert n == len(payload) and bytes(got) == payload and sum(counted) == len(payload)


@pytest.mark.parametrize("extra", [0, 1, 5000])
async def test_small_file_received_in_place_exact_or_refused_at_its_first_extra_byte(extra: int) -> None:
    """A real socket read straight into the InMemory buffer: the exact size arrives whole
    (several reads, slow sender), one byte more is refused at once, mid-transfer."""
    from tasks.transfer.base import InMemory

    size = 200 * 1024
    payload = os.urandom(size + extra)
    ours, peer = _pair()

    def send_in_pieces() -> None:
        with peer, contextlib.suppress(OSError):  # refused: we may close before it is done
            for i in range(0, len(payload), 30 * 1024):
                peer.sendall(payload[i:i + 30 * 1024])
                time.sleep(0.01)

    sender = threading.Thread(target=send_in_pieces)
    sender.start()
    sink = InMemory("/drop/x.jpg", size)
    try:
        with ours:
            if extra:
                with pytest.raises(IntegrityError, match="x.jpg: more than the 204800 bytes listed"):
                    await ftp_mod._receive_socket(ours, sink, 64 * 1024, 5.0, None)
            else:
                assert await ftp_mod._receive_socket(ours, sink, 64 * 1024, 5.0, None) == size
                assert bytes(sink.value()) == payload
    finally:
        sender.join(10)
    other = InMemory("/drop/y.jpg", 3)  # the other protocols hand chunks to `write`
    assert other.write(b"ab") == 2 and other.write(b"c") == 1 and bytes(other.value()) == b"abc"
    with pytest.raises(IntegrityError, match="more than the 3 bytes"):
        other.write(b"d")
    assert bytes(other.value()) == b"abc"  # nothing past its size was kept


async def test_receive_socket_gives_up_on_a_silent_sender_and_tells_local_errors_apart() -> None:
    import asyncio

    ours, peer = _pair()
    with ours, peer:
        started = time.monotonic()
        with pytest.raises(ftp_mod._NetFailure) as caught:
            await ftp_mod._receive_socket(ours, bytearray().extend, 1024, 0.3, None)
        assert isinstance(caught.value.__cause__, TimeoutError) and time.monotonic() - started < 2
        assert not asyncio.get_running_loop().remove_reader(ours.fileno())  # unregistered

    class DiskFull(OSError):
        pass

    def keep(chunk: memoryview) -> None:
        raise DiskFull(28, "No space left on device")

    ours, peer = _pair()
    with ours, peer:
        peer.sendall(b"x" * 10)
        with pytest.raises(DiskFull):  # the local side's error, unwrapped
            await ftp_mod._receive_socket(ours, keep, 1024, 5.0, None)


async def test_data_connect_skips_the_wait_on_loopback_and_reports_refusals_and_timeouts() -> None:
    import asyncio

    from tasks.transfer import proxy

    loop = asyncio.get_running_loop()
    waited = []
    real = loop.sock_connect

    async def counted(sock: socket.socket, addr: Any) -> None:
        waited.append(addr)
        await real(sock, addr)

    with socket.create_server(("127.0.0.1", 0)) as server, pytest.MonkeyPatch.context() as mp:
        mp.setattr(loop, "sock_connect", counted)
        sock = await proxy.open_socket("127.0.0.1", server.getsockname()[1], proxy=None, proxy_password=None, timeout=5)
        with sock:
            assert sock.getpeername() == server.getsockname() and sock.gettimeout() == 0.0
        assert not waited  # the handshake was over when connect returned: EISCONN on asking again
        port = server.getsockname()[1]
    with pytest.raises(ConnectError, match=f"cannot connect to 127.0.0.1:{port}: Connection refused"):
        await proxy.open_socket("127.0.0.1", port, proxy=None, proxy_password=None, timeout=5)
    # a listener whose queue is full drops SYNs: the connection stays in progress and is waited for
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        queued = []
        try:
            for _ in range(8):  # fill the accept queue; later SYNs are dropped
                s = socket.socket()
                s.setblocking(False)
                s.connect_ex(full.getsockname())
                queued.append(s)
            started = time.monotonic()
            with pytest.raises(ConnectError, match="timed out connecting to 127.0.0.1"):
                await proxy.open_socket("127.0.0.1", full.getsockname()[1], proxy=None, proxy_password=None, timeout=0.5)
            assert 0.4 < time.monotonic() - started < 3
        finally:
            for s in queued:
                s.close()


async def test_receive_socket_reports_a_reset_data_connection_as_lost() -> None:
    with socket.create_server(("127.0.0.1", 0)) as server:
        ours = socket.create_connection(server.getsockname())
        peer, _ = server.accept()
    ours.setblocking(False)
    with ours:
        async def reset_later() -> None:
            peer.sendall(b"y" * 1000)
            await anyio.sleep(0.05)  # once the reader waits in epoll
            peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")  # close = RST
            peer.close()

        got = bytearray()
        async with anyio.create_task_group() as tg:
            tg.start_soon(reset_later)
            with pytest.raises(ftp_mod._NetFailure) as caught:
                await ftp_mod._receive_socket(ours, got.extend, 1024, 5.0, None)
        assert isinstance(caught.value.__cause__, ConnectionResetError) and bytes(got) == b"y" * 1000


async def test_receive_all_moves_its_timer_on_while_bytes_come_and_gives_up_on_silence() -> None:
    """The TLS reader's timer moves on at most every 1 % of `timeout`: a transfer longer than
    `timeout` with steady bytes completes, a pause of `timeout` fails (within that 1 %)."""
    calls = []

    async def steady(buf: bytearray) -> int:
        calls.append(1)
        if len(calls) > 12:
            return 0
        await anyio.sleep(0.05)
        buf[:100] = b"s" * 100
        return 100

    got = bytearray()
    started = time.monotonic()
    assert await ftp_mod._receive_all(steady, got.extend, 1024, 0.3, None) == 1200
    assert time.monotonic() - started > 0.5 and bytes(got) == b"s" * 1200  # longer than the timeout

    async def stalls(buf: bytearray) -> int:
        if not calls:
            calls.append(1)
            buf[:10] = b"x" * 10
            return 10
        await anyio.sleep(30)
        return 0

    calls.clear()
    started = time.monotonic()
    with pytest.raises(ftp_mod._NetFailure) as caught:
        await ftp_mod._receive_all(stalls, bytearray().extend, 1024, 0.3, None)
    assert isinstance(caught.value.__cause__, TimeoutError) and 0.25 < time.monotonic() - started < 2


async def test_control_lines_cut_across_packets_taken_at_once_when_there_and_a_close_ends_them() -> None:
    """The plain control stream on a real socket: a reply split anywhere arrives whole,
    lines already received are taken without a wait (`next_line`), a last line without
    its end is still read, then the close reads as None (the caller's "connection lost")."""
    import asyncio

    ours, peer = _pair()
    _, protocol = await asyncio.get_running_loop().create_connection(ftp_mod._Lines, sock=ours)
    stream = ftp_mod.ControlStream(protocol)
    assert stream.next_line() is None
    with peer:
        peer.sendall(b"211-Feat")
        await anyio.sleep(0.05)
        assert stream.next_line() is None  # half a line is not a line
        peer.sendall(b"ures:\r\n MDTM\r\n211 End\r\n150 ")
        assert await stream.readline() == b"211-Features:\r"
        assert [stream.next_line(), stream.next_line(), stream.next_line()] == [b" MDTM\r", b"211 End\r", None]
        await stream.write(b"RETR x\r\n")
        assert peer.recv(100) == b"RETR x\r\n"
        peer.sendall(b"Opening\r\n226 Done")
    assert await stream.readline() == b"150 Opening\r"
    assert await stream.readline() == b"226 Done"  # cut short by the close: kept
    assert await stream.readline() is None
    with pytest.raises(ConnectionResetError):
        await stream.write(b"QUIT\r\n")
    stream.close()


def test_reply_masks_match_as_aioftps() -> None:
    cases = [("2xx", "226", True), ("2xx", "150", False), ("33x", "331", True), ("33x", "350", False),
             (("230", "33x"), "332", True), (("230", "202"), "200", False), ("1x0", "150", True), ("1x0", "151", False),
             ("xxx", "999", True)]
    for masks, code, expected in cases:
        assert ftp_mod._matches(code, masks) is expected, (masks, code)
        assert any(aioftp.Code(code).matches(m) for m in ((masks,) if isinstance(masks, str) else masks)) is expected
