"""Fixtures: real servers on 127.0.0.1 (see servers.py); a missing binary skips."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:  # `tests.transfer.servers` for test modules elsewhere (tests/tasks)
    sys.path.insert(0, str(ROOT))

from tests.transfer import servers  # noqa: E402


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@contextlib.contextmanager
def _or_skip() -> Iterator[None]:
    try:
        yield
    except servers.Missing as e:
        pytest.skip(str(e))


@pytest.fixture(scope="session")
def certs(tmp_path_factory: pytest.TempPathFactory) -> servers.Certs:
    return servers.make_certs(tmp_path_factory.mktemp("certs"))


@pytest.fixture
def vsftpd(tmp_path: Path) -> Iterator[servers.FtpServer]:
    with _or_skip(), servers.vsftpd(tmp_path / "vsftpd") as s:
        yield s


@pytest.fixture
def vsftpd_tls(tmp_path: Path, certs: servers.Certs) -> Iterator[servers.FtpServer]:
    with _or_skip(), servers.vsftpd(tmp_path / "vsftpd-tls", "explicit", certs) as s:
        yield s


@pytest.fixture
def vsftpd_implicit(tmp_path: Path, certs: servers.Certs) -> Iterator[servers.FtpServer]:
    with _or_skip(), servers.vsftpd(tmp_path / "vsftpd-implicit", "implicit", certs) as s:
        yield s


@pytest.fixture
def pyftpd(tmp_path: Path) -> Callable[..., contextlib.AbstractContextManager[servers.FtpServer]]:
    """A factory: `with pyftpd("--no-mlsd") as server:`."""
    counter = iter(range(1000))

    def start(*args: str, **kw: object) -> contextlib.AbstractContextManager[servers.FtpServer]:
        return servers.pyftpd(tmp_path / f"pyftpd{next(counter)}", *args, **kw)  # type: ignore[arg-type]

    return start


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[servers.SshServer]:
    with _or_skip(), servers.sshd(tmp_path / "sshd") as s:
        yield s


@pytest.fixture
def danted(tmp_path: Path) -> Iterator[servers.SocksProxy]:
    with _or_skip(), servers.danted(tmp_path / "danted") as s:
        yield s


class Captured(logging.Handler):
    """Every formatted record of every logger (including asyncssh debug)."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname} {record.getMessage()}")

    @property
    def text(self) -> str:
        return "\n".join(self.lines)


@pytest.fixture
def all_logs() -> Iterator[Captured]:
    root = logging.getLogger()
    handler = Captured()
    old = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        root.removeHandler(handler)
        root.setLevel(old)


@pytest.fixture
def log() -> logging.Logger:
    return logging.getLogger("schedulerd.test.transfer")
