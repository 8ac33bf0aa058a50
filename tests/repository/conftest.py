from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from repository import DataboxSettings, open_databox  # noqa: E402


@pytest.fixture
def anyio_backend():
    return "asyncio"


@pytest.fixture
def box(tmp_path: Path) -> DataboxSettings:
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
