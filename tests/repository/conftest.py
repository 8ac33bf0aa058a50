from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from repository import DataboxSettings, open_databox  # noqa: E402
from tests.pgserver import PASSWORD, pg_server  # noqa: E402,F401  (fixture: a real PostgreSQL)

BACKENDS = ("sqlite", "postgresql")


@pytest.fixture
def anyio_backend():
    return "asyncio"


def postgres_box(request: pytest.FixtureRequest, storage: Path, **kw) -> DataboxSettings:
    """A databox on a database of its own on the session's PostgreSQL (dropped after the test)."""
    from schedulerd.settings import Secret

    server = request.getfixturevalue("pg_server")
    name = server.database(template="template0")
    request.addfinalizer(lambda: server.drop(name))
    return DataboxSettings(url=server.url(name), password=Secret(PASSWORD), storage=storage, **kw)


def make_box(backend: str, request: pytest.FixtureRequest, tmp_path: Path, name: str = "main", **kw) -> DataboxSettings:
    """Databox settings on `backend` ("sqlite" | "postgresql"), storage under tmp_path."""
    if backend == "postgresql":
        return postgres_box(request, tmp_path / f"{name}-storage", **kw)
    return DataboxSettings(tmp_path / f"{name}.sqlite", tmp_path / f"{name}-storage", **kw)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """Each databox test runs on SQLite and on a real PostgreSQL (tests/pgserver.py)."""
    return request.param


@pytest.fixture
def box(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> DataboxSettings:
    if backend == "postgresql":
        return postgres_box(request, tmp_path / "storage")
    return DataboxSettings(tmp_path / "main.sqlite", tmp_path / "storage")


@pytest.fixture
def db(box: DataboxSettings):
    d = open_databox(box)
    yield d
    d.close()


@pytest.fixture
def src(tmp_path: Path):
    """Write a source file and return its path."""
    folder = tmp_path / "sources"
    folder.mkdir()

    def make(name: str, data: bytes = b"") -> Path:
        p = folder / name
        p.write_bytes(data or name.encode() * 7)
        return p

    return make
