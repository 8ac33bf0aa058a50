"""FTPS TLS details: host name matching."""

from __future__ import annotations

import datetime
import ipaddress
import logging

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tasks.transfer import ConnectError, connect, tls
from tests.transfer.servers import FtpServer, settings_for

pytestmark = pytest.mark.anyio


def cert_naming(*names: x509.GeneralName, cn: str = "ignored.example") -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
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
