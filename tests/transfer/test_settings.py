"""ConnectionSettings: validated once, secrets never shown."""

from __future__ import annotations

from pathlib import Path

import pytest

from schedulerd.settings import ConfigError, Secret, build, public_view
from tasks.transfer.settings import ConnectionSettings, parse_proxy


def make(**data: object) -> ConnectionSettings:
    return build(ConnectionSettings, {"host": "ftp.example.org", **data}, "ftp_destinations.client")


def test_default_ports_follow_the_protocol() -> None:
    assert make().port == 21
    assert make(protocol="ftps").port == 21
    assert make(protocol="ftps-implicit").port == 990
    assert make(protocol="sftp", known_hosts="off").port == 22
    assert make(port=2121).port == 2121
    s = make()
    assert s.passive is True and s.verify is True and s.server_timezone == "UTC"


@pytest.mark.parametrize(
    ("data", "where", "words"),
    [
        ({"protocl": "ftp"}, "ftp_destinations.client.protocl", "unknown setting"),
        ({"protocol": "scp"}, "ftp_destinations.client.protocol", "'ftp' or 'ftps'"),
        ({"port": 70000}, "ftp_destinations.client.port", "1 to 65535"),
        ({"protocol": "sftp"}, "ftp_destinations.client.known_hosts", "known_hosts: required"),
        ({"server_timezone": "Mars/Olympus"}, "ftp_destinations.client.server_timezone", "unknown time zone"),
        ({"proxy": "http://p:3128"}, "ftp_destinations.client.proxy", "scheme must be socks5"),
        ({"proxy": "socks5://p:1080", "passive": False}, "ftp_destinations.client.passive", "active mode cannot"),
        ({"password": "a", "password_file": "/etc/hostname"}, "ftp_destinations.client.password_file", "not both"),
        ({"ca_file": "/nonexistent/ca.pem"}, "ftp_destinations.client.ca_file", "ca_file: no such file"),
        ({"key_file": "/etc/hostname"}, "ftp_destinations.client.key_file", "sftp"),
        ({"timeout": "soon"}, "ftp_destinations.client.timeout", "duration"),
        ({"host": "a b"}, "ftp_destinations.client.host", "not a host name"),
        ({"proxy_user": "bob"}, "ftp_destinations.client.proxy_user", "set only with proxy"),
        ({"proxy": "socks5://ann@p", "proxy_user": "bob"}, "ftp_destinations.client.proxy_user", "another user"),
    ],
)
def test_bad_settings_name_the_key(data: dict[str, object], where: str, words: str) -> None:
    with pytest.raises(ConfigError) as e:
        make(**data)
    assert e.value.path == where
    assert words in str(e.value)


def test_proxy_password_in_url_is_refused_without_echo() -> None:
    with pytest.raises(ConfigError) as e:
        make(proxy="socks5://bob:hunter2@proxy:1080")
    assert "proxy_password" in str(e.value)
    assert "hunter2" not in str(e.value)


def test_proxy_parsing() -> None:
    p = parse_proxy("socks5://bob@proxy.lan")
    assert (p.scheme, p.host, p.port, p.user) == ("socks5", "proxy.lan", 1080, "bob")
    assert parse_proxy("ftp://gw:2100").scheme == "ftp"
    assert parse_proxy("socks4a://gw").scheme == "socks4"


def test_proxy_user_is_the_user_the_proxy_is_given() -> None:
    """`proxy_user` is what the SOCKS exchange sends (proxy.open_socket reads proxy_spec.user)."""
    assert make(proxy="socks5://p:1080", proxy_user="bob", proxy_password="x").proxy_spec.user == "bob"
    assert make(proxy="socks5://bob@p:1080", proxy_user="bob").proxy_spec.user == "bob"
    assert make(proxy="socks5://p:1080").proxy_spec.user is None


def test_password_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FTP_PW", "from-env")
    assert make(password="env:FTP_PW").secret_password() == "from-env"
    f = tmp_path / "pw"
    f.write_text("from-file\n")
    s = make(password_file=str(f))
    assert s.secret_password() == "from-file"
    f.write_text("rotated\n")  # read at connect time, so rotation needs no reload
    assert s.secret_password() == "rotated"
    with pytest.raises(ConfigError) as e:
        make(password="env:NOT_SET_ANYWHERE_42")
    assert "NOT_SET_ANYWHERE_42" in str(e.value)


def test_secrets_never_shown() -> None:
    s = make(password="pa55word", proxy="socks5://u@p:1080", proxy_password="pr0xy")
    assert isinstance(s.password, Secret)
    for text in (repr(s), str(s), str(public_view(s)), s.describe()):
        assert "pa55word" not in text and "pr0xy" not in text
    assert set(s.secrets()) == {"pa55word", "pr0xy"}


def test_known_hosts_path_or_off(tmp_path: Path) -> None:
    kh = tmp_path / "known_hosts"
    kh.write_text("")
    assert make(protocol="sftp", known_hosts=str(kh)).known_hosts == kh
    assert make(protocol="sftp", known_hosts="off").known_hosts == "off"
    with pytest.raises(ConfigError, match="known_hosts: no such file"):
        make(protocol="sftp", known_hosts=str(tmp_path / "missing"))
