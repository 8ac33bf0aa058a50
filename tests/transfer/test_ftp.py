"""FTP and FTPS against real servers: vsftpd (defaults, require_ssl_reuse=YES) and pyftpdlib."""

from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import pytest

from tasks.transfer import AuthError, ConnectError, NotFound, TransferError, connect, tls
from tasks.transfer.send import send
from tests.transfer.servers import FtpServer, fetch, settings_for

pytestmark = pytest.mark.anyio


async def roundtrip(server: FtpServer, tmp_path: Path, log: logging.Logger, **overrides: object) -> None:
    """Upload, list, stat, download (three times), rename, delete and mkdir on one session."""
    payload = os.urandom(700_000)
    src = tmp_path / "src.bin"
    src.write_bytes(payload)
    server.put("in/old.txt", b"hello", mtime=1_600_000_000)
    async with await connect(settings_for(server, **overrides), log) as c:
        final = await send(c, src, f"{server.remote}/out/deep", log=log)
        assert final == f"{server.remote}/out/deep/src.bin"
        assert (server.pub / "out/deep/src.bin").read_bytes() == payload
        assert not (server.pub / "out/deep/.src.bin.part").exists()
        names = {e.name: e for e in await c.list(f"{server.remote}/in")}
        assert names["old.txt"].size == 5 and names["old.txt"].type == "file"
        assert names["old.txt"].mtime == 1_600_000_000  # exact: MLSD, or LIST then MDTM
        assert (await c.stat(f"{server.remote}/out/deep/src.bin")).size == len(payload)  # type: ignore[union-attr]
        assert await c.stat(f"{server.remote}/out/none") is None
        for i in range(3):  # several data connections on one control connection
            entry = next(e for e in await c.list(f"{server.remote}/out/deep") if e.name == "src.bin")
            got = await fetch(c, entry, tmp_path / f"got{i}.bin", log=log)
            assert got is not None and got.read_bytes() == payload
        await c.rename(f"{server.remote}/out/deep/src.bin", f"{server.remote}/out/renamed.bin")
        assert (server.pub / "out/renamed.bin").exists() and not (server.pub / "out/deep/src.bin").exists()
        await c.delete(f"{server.remote}/out/renamed.bin")
        assert not (server.pub / "out/renamed.bin").exists()
        with pytest.raises(NotFound):
            await c.delete(f"{server.remote}/out/renamed.bin")
        await c.mkdir(f"{server.remote}/a/b/c")
        assert (server.pub / "a/b/c").is_dir()
    local = tmp_path / "got0.bin"
    assert os.stat(local).st_size == len(payload)


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
async def test_vsftpd_plain(vsftpd: FtpServer, tmp_path: Path, log: logging.Logger, passive: bool) -> None:
    await roundtrip(vsftpd, tmp_path, log, passive=passive)
    protocol = vsftpd.log.read_text()
    if passive:
        assert '"EPSV"' in protocol and '"PORT' not in protocol
    else:
        assert '"PORT ' in protocol and '"EPSV"' not in protocol


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
async def test_vsftpd_explicit_tls_reuses_the_session(vsftpd_tls: FtpServer, tmp_path: Path, log: logging.Logger,
                                                      certs, passive: bool) -> None:  # type: ignore[no-untyped-def]
    await roundtrip(vsftpd_tls, tmp_path, log, protocol="ftps", ca_file=str(certs.ca_file), passive=passive)
    protocol = vsftpd_tls.log.read_text()
    assert '"AUTH TLS"' in protocol and '"PROT P"' in protocol
    assert "session reuse required" not in protocol


async def test_vsftpd_refuses_data_connections_without_session_reuse(
        vsftpd_tls: FtpServer, log: logging.Logger, certs, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    """Shows the reuse above is what makes vsftpd's defaults work (and that they are in force)."""
    monkeypatch.setattr(tls.Tls, "resume_into", lambda self, conn: None)
    vsftpd_tls.put("in/a.txt", b"a")
    async with await connect(settings_for(vsftpd_tls, protocol="ftps", ca_file=str(certs.ca_file)), log) as c:
        with pytest.raises(TransferError, match="session reuse required"):
            await c.list(f"{vsftpd_tls.remote}/in")
    assert "session reuse required" in vsftpd_tls.log.read_text()


@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
async def test_vsftpd_implicit_tls(vsftpd_implicit: FtpServer, tmp_path: Path, log: logging.Logger, certs,  # type: ignore[no-untyped-def]
                                   passive: bool) -> None:
    await roundtrip(vsftpd_implicit, tmp_path, log, protocol="ftps-implicit", ca_file=str(certs.ca_file), passive=passive)


async def test_tls_certificate_is_checked(vsftpd_tls: FtpServer, log: logging.Logger, certs,  # type: ignore[no-untyped-def]
                                          caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(ConnectError, match="certificate verify failed"):
        await connect(settings_for(vsftpd_tls, protocol="ftps", ca_file=str(certs.other_ca_file)), log)
    with pytest.raises(ConnectError, match="certificate verify failed"):  # the system store does not know our CA
        await connect(settings_for(vsftpd_tls, protocol="ftps"), log)
    with caplog.at_level(logging.WARNING, log.name):
        async with await connect(settings_for(vsftpd_tls, protocol="ftps", verify=False), log) as c:
            await c.list(vsftpd_tls.remote)
    assert any("NOT verified" in r.getMessage() for r in caplog.records)


async def test_explicit_tls_hostname_checked(vsftpd_tls: FtpServer, log: logging.Logger, certs) -> None:  # type: ignore[no-untyped-def]
    s = settings_for(vsftpd_tls, protocol="ftps", ca_file=str(certs.ca_file), host="127.0.0.1")
    async with await connect(s, log) as c:  # the certificate names 127.0.0.1 too
        await c.list(vsftpd_tls.remote)


async def test_mlsd_first_then_list_fallback(pyftpd, tmp_path: Path, log: logging.Logger) -> None:  # type: ignore[no-untyped-def]
    for args in ((), ("--no-mlsd",)):
        with pyftpd(*args) as server:
            server.put("in/a.txt", b"abc", mtime=1_700_000_000)
            async with await connect(settings_for(server), log) as c:
                (entry,) = await c.list("/in")  # MDTM when LIST is coarse
                assert (entry.name, entry.size, entry.mtime) == ("a.txt", 3, 1_700_000_000)
                got = await fetch(c, entry, tmp_path / f"a{len(args)}.txt", log=log)
                assert got is not None and os.stat(got).st_mtime == 1_700_000_000


# pyftpdlib refusing MDTM (550) for names with "gone", as for a file deleted after the LIST
NO_MDTM_FOR_GONE = r"""
import os, sys
sys.path.insert(0, sys.argv.pop(1))
import pyftpd_server as base
plain = base.make_handler
def make_handler(opts):
    class Quirky(plain(opts)):
        def ftp_MDTM(self, path):
            if "gone" in os.path.basename(path):
                self.respond("550 No such file.")
                return None
            return super().ftp_MDTM(path)
    return Quirky
base.make_handler = make_handler
base.main()
"""


async def test_list_gives_each_file_its_exact_time_when_list_is_coarse(pyftpd, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                                       log: logging.Logger) -> None:
    """Without MLSD, a folder of more files than one batch of MDTMs: each file gets its own
    time to the second; one whose MDTM is refused keeps its LIST time, the others stay matched."""
    base = 1_700_000_000
    names = [f"f{i:03d}{'-gone' if i in (7, 130) else ''}.txt" for i in range(150)]
    with pyftpd("--no-mlsd", subclass=NO_MDTM_FOR_GONE) as server:
        for i, name in enumerate(names):
            server.put(f"in/{name}", b"x" * i, mtime=base + 7 * i)
        async with await connect(settings_for(server), log) as c:
            listed = {e.name: e for e in await c.list("/in")}
            assert sorted(listed) == sorted(names)
            for i, name in enumerate(names):
                e = listed[name]
                if "gone" in name:
                    assert not e.precise and e.mtime is not None and e.mtime % 60 == 0, name
                else:
                    assert (e.precise, e.mtime, e.size) == (True, base + 7 * i, i), name
            assert (await c.stat("/in/f001.txt")).size == 1  # type: ignore[union-attr]  # still in step


async def test_pyftpd_active_mode(pyftpd, tmp_path: Path, log: logging.Logger) -> None:  # type: ignore[no-untyped-def]
    with pyftpd() as server:
        server.put("f.bin", b"z" * 100_000)
        async with await connect(settings_for(server, passive=False), log) as c:
            (entry,) = await c.list("/")
            got = await fetch(c, entry, tmp_path / "f.bin", log=log)
            assert got is not None and got.read_bytes() == b"z" * 100_000


async def test_wrong_password_is_clear_and_never_shown(pyftpd, log: logging.Logger, all_logs) -> None:  # type: ignore[no-untyped-def]
    with pyftpd(password="right-Pa55") as server:
        s = settings_for(server, password="Wr0ng-Secret-99", retries=3, retry_delay=5)
        with pytest.raises(AuthError) as e:
            await connect(s, log)  # no retry on a refused login: this returns at once
        assert "refused" in str(e.value) and server.user in str(e.value)
        assert "Wr0ng-Secret-99" not in str(e.value) and "Wr0ng-Secret-99" not in repr(e.value)
        assert "Wr0ng-Secret-99" not in all_logs.text
        assert "PASS" in all_logs.text  # the protocol's debug log was captured, censored


async def test_ftp_gateway_proxy_logs_in_with_acct(pyftpd, log: logging.Logger, all_logs) -> None:  # type: ignore[no-untyped-def]
    with pyftpd("--gateway", "Gw-Pa55") as gw:
        gw.put("x.txt", b"x")
        common = dict(host="127.0.0.1", port=2121, proxy=f"ftp://{gw.host}:{gw.port}")
        async with await connect(settings_for(gw, **common, proxy_password="Gw-Pa55"), log) as c:
            assert [e.name for e in await c.list("/")] == ["x.txt"]
        with pytest.raises(AuthError, match="refused"):
            await connect(settings_for(gw, **common, proxy_password="Not-The-Gw-Pa55"), log)
    assert "Gw-Pa55" not in all_logs.text and gw.password not in all_logs.text
    assert "USER agency@127.0.0.1:2121" in all_logs.text


@pytest.mark.parametrize("scheme", ["socks5", "socks4"])
async def test_socks_proxy_carries_control_and_data(vsftpd: FtpServer, danted, tmp_path: Path,  # type: ignore[no-untyped-def]
                                                    log: logging.Logger, scheme: str) -> None:
    vsftpd.put("in/p.bin", b"p" * 50_000)
    async with await connect(settings_for(vsftpd, proxy=danted.url(scheme)), log) as c:
        (entry,) = await c.list(f"{vsftpd.remote}/in")
        got = await fetch(c, entry, tmp_path / "p.bin", log=log)
        assert got is not None and got.read_bytes() == b"p" * 50_000
    proxied = danted.log.read_text()
    assert f"{vsftpd.host}.{vsftpd.port}" in proxied  # the control connection went through dante
    assert proxied.count("pass(1): tcp/connect") >= 3  # control + list + download


async def test_ftps_through_socks5(vsftpd_tls: FtpServer, danted, log: logging.Logger, certs) -> None:  # type: ignore[no-untyped-def]
    vsftpd_tls.put("in/t.txt", b"t")
    s = settings_for(vsftpd_tls, protocol="ftps", ca_file=str(certs.ca_file), proxy=danted.url())
    async with await connect(s, log) as c:
        assert [e.name for e in await c.list(f"{vsftpd_tls.remote}/in")] == ["t.txt"]


async def test_download_resumes_after_the_server_died(pyftpd, tmp_path: Path, log: logging.Logger,  # type: ignore[no-untyped-def]
                                                      caplog: pytest.LogCaptureFixture) -> None:
    payload = os.urandom(1_000_000)
    target = tmp_path / "local" / "big.bin"
    with pyftpd("--die-after", "300000") as server:
        server.put("big.bin", payload)
        root = server.root
        async with await connect(settings_for(server), log) as c:
            (entry,) = await c.list("/")
            with pytest.raises(TransferError):
                await fetch(c, entry, target, log=log)
    assert not target.exists()  # no half file under the final name
    parts = [p for p in target.parent.iterdir()]
    assert len(parts) == 1 and parts[0].name.startswith(".big.bin.") and parts[0].name.endswith(".part")
    assert 0 < parts[0].stat().st_size < len(payload)
    done_before = parts[0].stat().st_size
    with pyftpd() as server:
        (server.root / "big.bin").write_bytes((root / "big.bin").read_bytes())
        os.utime(server.root / "big.bin", (os.stat(root / "big.bin").st_mtime,) * 2)
        received = []
        with caplog.at_level(logging.INFO, log.name):
            async with await connect(settings_for(server), log) as c:
                (entry,) = await c.list("/")
                got = await fetch(c, entry, target, log=log, on_bytes=received.append)
        assert f"REST {done_before}" in server.log.read_text() or "resuming" in caplog.text
    assert got == target and hashlib.sha256(target.read_bytes()).digest() == hashlib.sha256(payload).digest()
    assert sum(received) == len(payload) - done_before
    assert list(target.parent.iterdir()) == [target]


async def test_changed_remote_file_is_not_resumed(pyftpd, tmp_path: Path, log: logging.Logger) -> None:  # type: ignore[no-untyped-def]
    target = tmp_path / "l" / "f.bin"
    with pyftpd("--die-after", "100000") as server:
        server.put("f.bin", b"a" * 400_000, mtime=1_700_000_000)
        async with await connect(settings_for(server), log) as c:
            (entry,) = await c.list("/")
            with pytest.raises(TransferError):
                await fetch(c, entry, target, log=log)
    with pyftpd() as server:
        server.put("f.bin", b"b" * 400_000, mtime=1_700_000_100)  # same size, new time: a new file
        received: list[int] = []
        async with await connect(settings_for(server), log) as c:
            (entry,) = await c.list("/")
            await fetch(c, entry, target, log=log, on_bytes=received.append)
    assert target.read_bytes() == b"b" * 400_000 and sum(received) == 400_000


async def test_hostile_listing_from_a_server(pyftpd, tmp_path: Path, log: logging.Logger,  # type: ignore[no-untyped-def]
                                             caplog: pytest.LogCaptureFixture) -> None:
    listing = tmp_path / "mlsd.txt"
    listing.write_bytes(b"type=file;size=2;modify=20260101000000; ok.txt\r\n"
                        b"type=file;size=2;modify=20260101000000; ../../../tmp/pwned\r\n"
                        b"type=file;size=2;modify=20260101000000; /etc/passwd\r\n"
                        b"garbage without facts\r\n"
                        b"type=file;size=2;modify=20260101000000; evil\nname\r\n")
    with pyftpd("--mlsd-listing", str(listing)) as server:
        server.put("ok.txt", b"ok")
        with caplog.at_level(logging.WARNING, log.name):
            async with await connect(settings_for(server), log) as c:
                entries = await c.list("/")
    assert [e.name for e in entries] == ["ok.txt"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 4


async def test_connect_retries_then_fails_clearly(log: logging.Logger, caplog: pytest.LogCaptureFixture) -> None:
    from schedulerd.settings import build
    from tasks.transfer import ConnectionSettings
    from tests.transfer.servers import free_port

    s = build(ConnectionSettings, {"host": "127.0.0.1", "port": free_port(), "timeout": 2, "retries": 2,
                                   "retry_delay": 0.01, "password": "Pw-Not-Shown"}, "t")
    with caplog.at_level(logging.WARNING, log.name), pytest.raises(ConnectError, match="cannot connect to 127.0.0.1"):
        await connect(s, log)
    assert len([r for r in caplog.records if "retry" in r.getMessage()]) == 2
    assert "Pw-Not-Shown" not in caplog.text


@pytest.mark.parametrize("tls_on", [False, True], ids=["plain", "ftps"])
@pytest.mark.parametrize("passive", [True, False], ids=["passive", "active"])
async def test_a_missing_file_is_not_found_and_the_session_goes_on(request: pytest.FixtureRequest, certs,  # type: ignore[no-untyped-def]
                                                                   log: logging.Logger, passive: bool, tls_on: bool) -> None:
    """The refusal of RETR (550) comes while the data connection is being made (an accept, a TLS handshake)."""
    server: FtpServer = request.getfixturevalue("vsftpd_tls" if tls_on else "vsftpd")
    overrides: dict[str, object] = {"passive": passive}
    if tls_on:
        overrides.update(protocol="ftps", ca_file=str(certs.ca_file))
    server.put("in/here.txt", b"here")
    got = bytearray()

    async def keep(piece: memoryview) -> None:
        got.extend(piece)

    async with await connect(settings_for(server, **overrides), log) as c:
        with pytest.raises(NotFound):
            await c.get(f"{server.remote}/in/missing.txt", keep)
        assert not c.broken
        assert await c.get(f"{server.remote}/in/here.txt", keep) == 4 and got == b"here"
