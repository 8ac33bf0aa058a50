"""SFTP against OpenSSH sshd on a high port with a throwaway host key."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from tasks.transfer import AuthError, HostKeyError, NotFound, connect
from tasks.transfer.errors import LocalError
from tasks.transfer.fetch import part_path
from tasks.transfer.send import send
from tests.transfer.servers import SshServer, fetch, settings_for

pytestmark = pytest.mark.anyio


async def test_sftp_roundtrip(sshd: SshServer, tmp_path: Path, log: logging.Logger) -> None:
    payload = os.urandom(3_000_000 + 12345)  # many blocks, a short last one
    src = tmp_path / "big.bin"
    src.write_bytes(payload)
    remote = str(sshd.root)
    (sshd.root / "in").mkdir()
    (sshd.root / "in" / "a.txt").write_bytes(b"hello")
    os.utime(sshd.root / "in" / "a.txt", (1_650_000_000, 1_650_000_000))
    sent: list[int] = []
    async with await connect(settings_for(sshd), log) as c:
        final = await send(c, src, f"{remote}/out/x/y", log=log, on_bytes=sent.append)
        assert (sshd.root / "out/x/y/big.bin").read_bytes() == payload and sum(sent) == len(payload)
        entries = {e.name: e for e in await c.list(f"{remote}/out/x/y")}
        assert set(entries) == {"big.bin"} and entries["big.bin"].size == len(payload)
        got = await fetch(c, entries["big.bin"], tmp_path / "local" / "big.bin", log=log)
        assert got is not None and hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(payload).digest()
        (a,) = await c.list(f"{remote}/in")
        assert (a.name, a.type, a.size, a.mtime, a.precise) == ("a.txt", "file", 5, 1_650_000_000, True)
        small = await fetch(c, a, tmp_path / "local" / "a.txt", log=log)
        assert small is not None and os.stat(small).st_mtime == 1_650_000_000
        await c.rename(final, f"{remote}/in/a.txt")  # replaces
        assert (sshd.root / "in/a.txt").stat().st_size == len(payload)
        await c.delete(f"{remote}/in/a.txt")
        with pytest.raises(NotFound):
            await c.delete(f"{remote}/in/a.txt")
        assert await c.stat(f"{remote}/in/a.txt") is None


async def test_sftp_upload_of_many_pieces_is_exact_and_a_failing_source_stops_it(sshd: SshServer, tmp_path: Path,
                                                                                 log: logging.Logger) -> None:
    """Pieces written at once at their offsets give the file byte for byte; a source that fails
    midway ends the upload with its own error (not a group of them)."""
    payload = os.urandom(1_000_003)  # 4 KB blocks, 2 requests: about 120 pieces of 8 KB
    chunks = [payload[i:i + 3001] for i in range(0, len(payload), 3001)]
    sent: list[int] = []
    s = settings_for(sshd, block_size="4KB", sftp_requests=4)
    async with await connect(s, log) as c:
        feed = iter(chunks)

        async def source() -> bytes:
            return next(feed, b"")

        n = await c.put(source, f"{sshd.root}/many.bin", on_bytes=sent.append)
        assert n == len(payload) == sum(sent) and (sshd.root / "many.bin").read_bytes() == payload
        given = iter(range(40))

        async def failing() -> bytes:
            if next(given, None) is None:
                raise LocalError("cannot read the source: disk error")
            return b"y" * 3001

        with pytest.raises(LocalError, match="disk error"):
            await c.put(failing, f"{sshd.root}/broken.bin")
        assert not c.broken and await c.stat(f"{sshd.root}/many.bin") is not None


async def test_sftp_resume_reads_only_the_rest(sshd: SshServer, tmp_path: Path, log: logging.Logger) -> None:
    payload = os.urandom(2_000_000)
    (sshd.root / "r.bin").write_bytes(payload)
    target = tmp_path / "r.bin"
    received: list[int] = []
    async with await connect(settings_for(sshd), log) as c:
        (entry,) = await c.list(str(sshd.root))
        part_path(target, entry).write_bytes(payload[:777_777])  # what an interrupted pass left
        await fetch(c, entry, target, log=log, on_bytes=received.append)
    assert target.read_bytes() == payload and sum(received) == len(payload) - 777_777


async def test_unknown_host_key_is_refused(sshd: SshServer, log: logging.Logger) -> None:
    with pytest.raises(HostKeyError, match="host key"):
        await connect(settings_for(sshd, known_hosts=str(sshd.other_known_hosts), retries=2), log)
    empty = sshd.known_hosts.with_name("empty_known_hosts")
    empty.write_text("")
    with pytest.raises(HostKeyError):
        await connect(settings_for(sshd, known_hosts=str(empty)), log)


async def test_known_hosts_off_warns(sshd: SshServer, log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, log.name):
        async with await connect(settings_for(sshd, known_hosts="off"), log) as c:
            await c.list(str(sshd.root))
    assert any("NOT checked" in r.getMessage() for r in caplog.records)


async def test_wrong_key_or_password_is_an_auth_error(sshd: SshServer, log: logging.Logger, all_logs) -> None:  # type: ignore[no-untyped-def]
    other_key = sshd.key_file.with_name("other_ed25519")
    with pytest.raises(AuthError, match="refused"):
        await connect(settings_for(sshd, key_file=str(other_key)), log)
    with pytest.raises(AuthError) as e:
        await connect(settings_for(sshd, key_file=None, password="Ssh-Secret-77"), log)
    assert "Ssh-Secret-77" not in str(e.value) and "Ssh-Secret-77" not in all_logs.text


async def test_sftp_through_socks5(sshd: SshServer, danted, log: logging.Logger) -> None:  # type: ignore[no-untyped-def]
    (sshd.root / "s.txt").write_bytes(b"s")
    async with await connect(settings_for(sshd, proxy=danted.url()), log) as c:
        assert [e.name for e in await c.list(str(sshd.root))] == ["s.txt"]
    assert f"{sshd.host}.{sshd.port}" in danted.log.read_text()
