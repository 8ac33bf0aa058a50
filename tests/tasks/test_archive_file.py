"""The `archive` job type (one file into a record) on real files and real databoxes (SQLite and PostgreSQL)."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from repository import open_databox
from schedulerd.context import TaskContext
from tasks.archive_file import ArchiveFile
from tests.repository.conftest import make_box

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_rerun_gets_the_record_of_that_name_back_even_when_its_content_has_another(
        backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:  # noqa: F811
    """Same bytes under two names: two records. Archiving either file again (an attempt run again
    after a crash) gets its own record back, whatever record of that content has the lower id."""
    box = make_box(backend, request, tmp_path)
    with open_databox(box) as db:
        db.create_collection("photos")
    drop = tmp_path / "drop"
    drop.mkdir()
    files = {name: drop / name for name in ("first.jpg", "second.jpg")}
    for path in files.values():
        path.write_bytes(b"the same bytes " * 100)
    (drop / "other.jpg").write_bytes(b"other bytes")
    job = ArchiveFile()
    ctx = TaskContext.for_test("job-1", None, config=types.SimpleNamespace(databoxes={"main": box}), tmp_path=tmp_path)

    async def archive(name: str) -> str | None:
        return await job.run(ctx, {"databox": "main", "collection": "photos", "path": str(drop / name)})

    made = {name: await archive(name) for name in ("first.jpg", "second.jpg", "other.jpg")}
    assert len(set(made.values())) == 3, made  # the same content under another name: a record of its own
    again = {name: await archive(name) for name in ("second.jpg", "first.jpg", "other.jpg", "second.jpg")}
    assert again == made
    with open_databox(box) as db:
        records = db.list_records(collection="photos")
    assert sorted(r.original_name for r in records) == ["first.jpg", "other.jpg", "second.jpg"]
    assert len(ctx.events) == 3  # type: ignore[attr-defined]  # record.created once per record
