"""Big downloads written with O_DIRECT (bigwrite): every byte in place, resumes, disk errors, real servers."""

from __future__ import annotations

import errno
import logging
import os
import random
import resource
import signal
from pathlib import Path

import pytest

from tasks.transfer import TransferError, bigwrite, connect
from tasks.transfer.fetch import fetch
from tests.transfer.servers import FtpServer, SshServer, settings_for

pytestmark = pytest.mark.anyio

SMALL_BUFFER = 64 * 1024  # several buffers per test file, each handed to the writer thread


@pytest.fixture
def small_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files from 256 KB on take the big-file path, through 64 KB buffers."""
    monkeypatch.setattr(bigwrite, "BUFFER", SMALL_BUFFER)
    monkeypatch.setattr(bigwrite, "BIG", 256 * 1024)


def direct_writer(path: Path, offset: int = 0) -> bigwrite.DirectWriter:
    w = bigwrite.DirectWriter.open(path, offset)
    if w is None:
        pytest.skip(f"O_DIRECT refused on {path.parent}")
    return w


def write_in_odd_pieces(w: bigwrite.DirectWriter, data: bytes, seed: int = 1) -> None:
    rng = random.Random(seed)
    at = 0
    while at < len(data):
        n = rng.choice([1, 7, 4095, 4097, 16384, 70000])
        assert w.write(memoryview(data)[at:at + n]) == len(data[at:at + n])
        at += n


def test_every_byte_lands_in_place(tmp_path: Path, small_buffers: None) -> None:
    payload = os.urandom(3 * SMALL_BUFFER + 12345)  # full buffers, then an unaligned tail
    path = tmp_path / "f.part"
    path.touch()
    w = direct_writer(path)
    write_in_odd_pieces(w, payload)
    w.close()
    assert path.read_bytes() == payload
    assert w.direct_writes == 3 + 1  # the full buffers, then the aligned part of the last one


def test_a_resume_starts_at_the_block_boundary_below(tmp_path: Path, small_buffers: None) -> None:
    payload = os.urandom(5 * SMALL_BUFFER + 3)
    path = tmp_path / "f.part"
    path.write_bytes(payload[:10_000])  # an earlier pass stopped mid-block
    w = direct_writer(path, 10_000)
    assert w.start == 8192 and path.stat().st_size == 8192
    write_in_odd_pieces(w, payload[w.start:], seed=2)
    w.close()
    assert path.read_bytes() == payload


def test_a_disk_error_is_raised_not_lost(tmp_path: Path, small_buffers: None) -> None:
    path = tmp_path / "f.part"
    path.touch()
    w = direct_writer(path)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    old = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (3 * SMALL_BUFFER, hard))  # beyond: fails like a full disk
    try:
        with pytest.raises(OSError) as raised:
            write_in_odd_pieces(w, os.urandom(8 * SMALL_BUFFER))
            w.close()
        with pytest.raises(OSError):  # raised once more by close, if write raised it first
            w.close()
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, old)
    assert raised.value.errno == errno.EFBIG
    assert path.stat().st_size <= 3 * SMALL_BUFFER


async def pull_big(server: FtpServer | SshServer, remote_dir: str, local: Path, size: int, tmp_path: Path,
                   log: logging.Logger, **overrides: object) -> None:
    payload = os.urandom(size)
    (local / "src.bin").write_bytes(payload)
    os.utime(local / "src.bin", (1_700_000_000, 1_700_000_000))
    async with await connect(settings_for(server, **overrides), log) as c:
        (entry,) = [e for e in await c.list(remote_dir) if e.name == "src.bin"]
        got = await fetch(c, entry, tmp_path / "got" / "src.bin", log=log)
    assert got is not None and got.read_bytes() == payload
    assert os.stat(got).st_mtime == 1_700_000_000


async def test_plain_ftp_big_file(vsftpd: FtpServer, tmp_path: Path, log: logging.Logger, small_buffers: None) -> None:
    await pull_big(vsftpd, vsftpd.remote, vsftpd.pub, 1_000_003, tmp_path, log)


async def test_ftps_big_file(vsftpd_tls: FtpServer, certs, tmp_path: Path, log: logging.Logger,  # type: ignore[no-untyped-def]
                             small_buffers: None) -> None:
    await pull_big(vsftpd_tls, vsftpd_tls.remote, vsftpd_tls.pub, 1_000_003, tmp_path, log,
                   protocol="ftps", ca_file=str(certs.ca_file))


async def test_sftp_big_file(sshd: SshServer, tmp_path: Path, log: logging.Logger, small_buffers: None) -> None:
    await pull_big(sshd, str(sshd.root), sshd.root, 1_000_003, tmp_path, log)


async def test_resumed_after_the_server_died(pyftpd, tmp_path: Path, log: logging.Logger,  # type: ignore[no-untyped-def]
                                             small_buffers: None) -> None:
    payload = os.urandom(1_000_000)
    target = tmp_path / "local" / "big.bin"
    with pyftpd("--die-after", "300001") as server:
        server.put("big.bin", payload, mtime=1_700_000_000)
        async with await connect(settings_for(server), log) as c:
            (entry,) = await c.list("/")
            with pytest.raises(TransferError):
                await fetch(c, entry, target, log=log)
        kept = (server.root / "big.bin").read_bytes()
    (part,) = target.parent.iterdir()
    have = part.stat().st_size
    assert 0 < have < len(payload) and part.read_bytes() == payload[:have]  # what arrived was kept
    with pyftpd() as server:
        server.put("big.bin", kept, mtime=1_700_000_000)
        async with await connect(settings_for(server), log) as c:
            (entry,) = await c.list("/")
            assert await fetch(c, entry, target, log=log) == target
        resumed_at = have - have % bigwrite.ALIGN  # the block boundary below: O_DIRECT writes whole blocks
        assert f"bytes={len(payload) - resumed_at} " in server.log.read_text()
    assert target.read_bytes() == payload
    assert list(target.parent.iterdir()) == [target]
