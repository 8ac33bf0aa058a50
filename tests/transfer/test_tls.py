"""FTPS TLS details: host name matching, the key exchange group learnt from vsftpd."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import os
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tasks.transfer import ConnectError, connect, tls
from tasks.transfer.send import send
from tests.transfer.servers import FtpServer, settings_for

pytestmark = pytest.mark.anyio


def cert_naming(*names: x509.GeneralName, cn: str = "ignored.example") -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.timezone.utc)
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
               .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1)))
    if names:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(names)), critical=False)
    return builder.sign(key, hashes.SHA256())


def test_host_names_match_as_rfc_6125_says() -> None:
    cert = cert_naming(x509.DNSName("ftp.example.com"), x509.DNSName("*.media.example.com"),
                       x509.IPAddress(ipaddress.ip_address("192.0.2.7")))
    assert tls.names_host(cert, "ftp.example.com")
    assert tls.names_host(cert, "FTP.Example.COM.")  # case and a final dot do not matter
    assert tls.names_host(cert, "eu.media.example.com")  # the wildcard: one whole label
    assert not tls.names_host(cert, "a.eu.media.example.com")  # ... never two
    assert not tls.names_host(cert, "media.example.com")  # ... never none
    assert not tls.names_host(cert, "example.com")
    assert not tls.names_host(cert, "ftp.example.com.evil.org")
    assert tls.names_host(cert, "192.0.2.7")
    assert not tls.names_host(cert, "192.0.2.8")
    assert not tls.names_host(cert_naming(x509.DNSName("192.0.2.7")), "192.0.2.7")  # an IP only as an IP entry
    assert not tls.names_host(cert_naming(x509.DNSName("*.com")), "example.com")
    assert not tls.names_host(cert_naming(cn="ftp.example.com"), "ftp.example.com")  # no common-name fallback


async def test_certificate_naming_another_host_is_refused(vsftpd_tls: FtpServer, log: logging.Logger,
                                                          certs, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    s = settings_for(vsftpd_tls, protocol="ftps", ca_file=str(certs.ca_file))
    monkeypatch.setattr(tls, "names_host", lambda cert, host: False)  # as if the trusted certificate named another host
    with pytest.raises(ConnectError, match=r"TLS handshake with .* failed: certificate verify failed: "
                                           r"the certificate does not name 127\.0\.0\.1"):
        await connect(s, log)


async def test_the_key_exchange_group_vsftpd_takes_is_learnt(vsftpd_tls: FtpServer, tmp_path: Path,
                                                              log: logging.Logger, certs) -> None:  # type: ignore[no-untyped-def]
    """vsftpd sets prime256v1 only: a default ClientHello (X25519MLKEM768 and X25519 key
    shares) costs it a HelloRetryRequest on every data connection. The group is learnt
    from the first session's control connection; the next sessions offer P-256 alone."""
    server = (vsftpd_tls.host, vsftpd_tls.port)
    tls._LEARNED.pop(server, None)
    s = settings_for(vsftpd_tls, protocol="ftps", ca_file=str(certs.ca_file))
    src = tmp_path / "a.bin"
    src.write_bytes(os.urandom(50_000))
    try:
        async with await connect(s, log) as first:
            assert first._tls._curve is None  # type: ignore[attr-defined]
            await send(first, src, "/pub/one", log=log)
        assert tls._LEARNED[server] == "secp256r1"
        async with await connect(s, log) as second:
            t = second._tls  # type: ignore[attr-defined]
            assert t._curve == "secp256r1" and t.control.get_group_name() == "secp256r1"
            for i in range(3):  # data connections on the P-256-only context resume as before
                await send(second, src, f"/pub/two{i}", log=log)
        assert (vsftpd_tls.pub / "two2" / "a.bin").read_bytes() == src.read_bytes()
        assert "session reuse required" not in vsftpd_tls.log.read_text()
        with pytest.raises(ConnectError, match="certificate verify failed"):
            await connect(settings_for(vsftpd_tls, protocol="ftps", ca_file=str(certs.other_ca_file)), log)
        assert server not in tls._LEARNED  # a failed handshake: the next session offers the defaults again
    finally:
        tls._LEARNED.pop(server, None)
