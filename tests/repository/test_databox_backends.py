"""The same databox on SQLite and PostgreSQL: search finds the same records, databox:copy moves
one between them unchanged (the real bin/console, a real PostgreSQL from tests/pgserver.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from repository import open_databox
from repository.fulltext import Index, index_path_for, search_databox
from tests.pgserver import PASSWORD
from tests.repository.conftest import make_box
from tests.repository.dbx import CONSOLE, add

QUERIES = [
    "sunset", "Sunset", "IMG_0001.jpg", "img_0001", "img*", "0001", "evasion", "évasion", "archive", "rep*",
    "annual sea", "harbour night", "title", "Title: harbour", "ocelot", "ocel*", "grass ocelot", "café", "cafe",
    "port", "sea*", "nothing-here", "report-2024.pdf", "2024", "x*", "Mañana", "manana",
]


def fill(db) -> None:
    for c in ("incoming", "archive", "trash"):
        db.create_collection(c)
    a = add(db, "incoming", "IMG_0001.jpg", fields={"Title": "Sunset over the sea", "Keywords": "beach, évasion"})
    add(db, "archive", "report-2024.pdf", fields={"Title": "Annual report", "Place": "Café du Port"})
    h = add(db, "incoming", "harbour.tif", fields={"Title": "Harbour at night", "Note": "Mañana x-ray"})
    t = add(db, "trash", "IMG_0002.jpg", fields={"Title": "seagull"})
    s = add(db, "archive", "story", type="story", fields={"Title": "Harbour stories"})
    db.add_to_story(s, h)
    db.set_document_text(t, "an ocelot in the grass")
    db.set_field(a, "Keywords", "beach, évasion, port")
    db.set_status(h, "1x1")


def sqlite_ids(settings, query: str) -> list[int]:
    index = Index(settings.path, index_path_for(settings.path))
    index.open()
    try:
        index.run_pass(full=True)
    finally:
        index.close()
    return sorted(h.record_id for h in search_databox(settings, index_path_for(settings.path), query, limit=100))


def test_search_finds_the_same_records_on_both(tmp_path, request) -> None:
    lite, pg = make_box("sqlite", request, tmp_path, "lite"), make_box("postgresql", request, tmp_path, "pg")
    for s in (lite, pg):
        with open_databox(s) as db:
            fill(db)
    for q in QUERIES:
        on_pg = sorted(h.record_id for h in search_databox(pg, None, q, limit=100))
        assert on_pg == sqlite_ids(lite, q), q
    assert sorted(h.record_id for h in search_databox(pg, None, "harbour", limit=100)) == [3, 5]
    with pytest.raises(ValueError, match="only for a SQLite databox"):
        search_databox(pg, None, "a OR b", raw=True)


def test_search_follows_writes_on_postgresql(tmp_path, request) -> None:
    pg = make_box("postgresql", request, tmp_path, "pg")
    with open_databox(pg) as db:
        fill(db)
        find = lambda q: sorted(h.record_id for h in search_databox(pg, None, q, limit=100))  # noqa: E731
        assert find("ocelot") == [4]
        db.set_document_text(4, None)
        db.set_field(1, "Title", "Sunrise")
        assert find("ocelot") == [] and find("sunset") == [] and find("sunrise") == [1]
        with db.transaction() as c:  # set-based SQL that keeps `updated` honest is followed too
            c.execute("UPDATE records SET collection_id = 3, updated = ? WHERE id = 1", ("9999-01-01T00:00:00+00:00",))
        assert find("trash") == [1, 4]
        db.delete_record(4)
        assert find("seagull") == []


def dump(settings) -> dict[str, list[tuple]]:
    """Every row of every databox table, the same way on both back-ends."""
    tables = {"collections": "id", "records": "id", "fields": "record_id, name", "subdefs": "record_id, name",
              "document_text": "record_id", "story_children": "story_id, record_id"}
    with open_databox(settings, create=False) as db:
        return {t: [tuple(r) for r in db._query(f"SELECT * FROM {t} ORDER BY {k}")] for t, k in tables.items()}


def console(config: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(CONSOLE), "--config", str(config), *args], capture_output=True, text=True,
                          timeout=120, env=env)


def test_databox_copy_round_trip_sqlite_postgresql_sqlite(tmp_path, request) -> None:
    import os

    first, back = make_box("sqlite", request, tmp_path, "first"), make_box("sqlite", request, tmp_path, "back")
    pg = make_box("postgresql", request, tmp_path, "pg")
    with open_databox(first) as db:
        fill(db)
        rec = db.get_record(1)
        db.set_subdef(1, "thumbnail", first.storage / "subdefs/1/thumbnail.jpg", 240, 160, 1234,
                      doc_version=rec.doc_version)
        db.mark_subdef_error(2, "cannot render")
        db.delete_record(4)  # a gap in the ids: they are kept, not renumbered
    config = tmp_path / "schedulerd.toml"
    config.write_text(
        f'[scheduler]\nsocket = "{tmp_path}/s.sock"\n'
        f'[databoxes.first]\npath = "{first.path}"\nstorage = "{first.storage}"\n'
        f'[databoxes.pg]\nurl = "{pg.url}"\npassword = "env:DBX_PASSWORD"\nstorage = "{pg.storage}"\n'
        f'[databoxes.back]\npath = "{back.path}"\nstorage = "{back.storage}"\n')
    env = {**os.environ, "DBX_PASSWORD": PASSWORD}
    made = console(config, "databox:create", "--databox", "pg", "--json", env=env)
    assert made.returncode == 0 and json.loads(made.stdout)["created"] is True, made.stderr
    assert PASSWORD not in made.stdout + made.stderr
    to_pg = console(config, "databox:copy", "first", "pg", "--json", env=env)
    assert to_pg.returncode == 0, to_pg.stderr
    assert json.loads(to_pg.stdout)["rows"]["records"] == 4
    assert dump(pg) == dump(first)
    assert (pg.storage / open_databox(pg).get_record(1).document).is_file()  # documents came along
    found = console(config, "record:search", "--databox", "pg", "harbour", "--json", env=env)
    assert found.returncode == 0 and sorted(h["id"] for h in json.loads(found.stdout)) == [3, 5], found.stderr
    again = console(config, "databox:copy", "first", "pg", env=env)
    assert again.returncode == 2 and "is not empty (3 collections, 4 records)" in again.stderr
    back_again = console(config, "databox:copy", "pg", "back", env=env)
    assert back_again.returncode == 0, back_again.stderr
    assert dump(back) == dump(first)
    with open_databox(pg) as db:  # new ids continue after the copied ones
        assert db.create_record("incoming", first.path).id == 6
    bad = console(config, "databox:copy", "first", "nowhere", env=env)
    assert bad.returncode == 2 and "TO: unknown databox 'nowhere'" in bad.stderr
